"""Reader for the BIGRec next-item layout (the Amazon data of the paper).

A BIGRec folder holds::

    items.tsv                 item_id<TAB>title, header line, ids 0..N-1 in order
    train.csv[.gz]            one row per sample, columns COLUMNS (below)
    valid.csv[.gz]
    test.csv[.gz]

The CSV files are written by Python's ``csv.writer`` (comma, minimal quoting, CRLF line
ends). List columns hold ``str(list)``, i.e. Python list *literals* (not JSON): titles are
single-quoted, double-quoted when they contain an apostrophe, backslashes doubled. They are
parsed with ``ast.literal_eval`` (never ``eval``); a fast path first compares the field with
``str()`` of the list the catalogue predicts, which is exactly what the writer produced.
The shared train files leave ``user_id``, the ASIN, rating and timestamp columns empty
(``""``); those become -1 in :class:`~flower_lite.data.splits.Split`.

Only ``history_item_id`` and ``item_id`` are required; ``history_item_title`` and
``item_title`` are checked against ``items.tsv`` when present, ``user_id`` (the Amazon
reviewer id) becomes a user index shared by the three splits (first appearance order) and
``timestamp`` the target time.

The shared copy of the authors' data lives in ``<repo>/../shared/data/amazon/<category>``
(set ``FLOWER_LITE_DATA`` to another data folder); it is read in place, never copied.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .catalog import ITEMS_FILE, ITEMS_HEADER, _read_tsv
from .splits import SPLIT_NAMES, NextItemData, Split

__all__ = [
    "COLUMNS", "AMAZON_CATEGORIES", "DATA_ENV", "shared_data_dir", "shared_amazon_dir",
    "split_file", "read_items", "read_split", "load_bigrec", "load_amazon",
]

COLUMNS = ("user_id", "item_asins", "item_asin", "history_item_id", "item_id",
           "history_item_title", "item_title", "history_rating", "rating",
           "history_timestamp", "timestamp")
REQUIRED_COLUMNS = ("history_item_id", "item_id")
AMAZON_CATEGORIES = ("Video_Games", "CDs_and_Vinyl", "Movies_and_TV")
DATA_ENV = "FLOWER_LITE_DATA"
_DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_data_dir() -> Path | None:
    """The shared data folder: ``$FLOWER_LITE_DATA`` if set, else ``<repo>/../shared/data``;
    ``None`` when that folder does not exist."""
    env = os.environ.get(DATA_ENV)
    folder = Path(env).expanduser() if env else _DEFAULT_DATA
    return folder if folder.is_dir() else None


def shared_amazon_dir(category: str) -> Path | None:
    """``<shared data>/amazon/<category>`` (e.g. ``"Movies_and_TV"``) if it exists, else None."""
    root = shared_data_dir()
    if root is None:
        return None
    folder = root / "amazon" / category
    return folder if (folder / ITEMS_FILE).is_file() else None


def split_file(directory: str | Path, split: str) -> Path:
    """``<directory>/<split>.csv``, or ``<split>.csv.gz`` when only that exists.

    Raises:
        FileNotFoundError: neither exists (the message names both paths).
    """
    directory = Path(directory)
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"BIGRec split file not found: {directory / f'{split}.csv'} "
                            f"(nor {directory / f'{split}.csv.gz'})")


def read_items(path: str | Path) -> list[str]:
    """Titles from an ``items.tsv`` (``item_id<TAB>title``, ids 0..N-1 in order).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a bad header, a malformed row or an id out of order (file and line named).
    """
    path = Path(path)
    titles: list[str] = []
    for line_no, (item_id, title) in _read_tsv(path, ITEMS_HEADER, 1):
        if item_id != len(titles):
            raise ValueError(f"{path}, line {line_no}: item id {item_id} out of order, "
                             f"expected {len(titles)}")
        titles.append(title)
    if not titles:
        raise ValueError(f"{path}: no items")
    return titles


def _open_text(path: Path) -> io.TextIOBase:
    """Text handle for a CSV (gzip by suffix), ``newline=""`` as the csv module wants."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _literal_list(text: str, where: str, what: str) -> list:
    """Parse a Python list literal with ``ast.literal_eval``; ValueError naming ``where``."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"{where}: {what} is not a Python list literal: {text[:80]!r}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where}: {what} is not a list: {text[:80]!r}")
    return value


def _int_list(text: str, where: str) -> list[int]:
    """Parse ``history_item_id`` such as ``[5198, 3227]`` (fast path, then literal_eval)."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        inner = s[1:-1]
        try:
            return [int(x) for x in inner.split(",")] if inner.strip() else []
        except ValueError:
            pass
    value = _literal_list(text, where, "history_item_id")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ValueError(f"{where}: history_item_id holds a non-integer: {text[:80]!r}")
    return value


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row_number, {column: field})`` for each data row (row 1 = first after the
    header) after checking the header has the required columns."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}; "
                             f"got {', '.join(header)}")
        for k, row in enumerate(reader, start=1):
            if len(row) != len(header):
                raise ValueError(f"{path}, row {k} (line {reader.line_num}): "
                                 f"{len(row)} fields, expected {len(header)}")
            yield k, dict(zip(header, row))


def read_split(path: str | Path, titles: list[str],
               user_index: dict[str, int] | None = None,
               max_rows: int | None = None) -> Split:
    """One BIGRec CSV as a :class:`Split`, validated against the catalogue ``titles``.

    Args:
        path: the ``.csv`` or ``.csv.gz`` file.
        titles: the catalogue (``items.tsv``) titles, ``titles[i]`` for item i.
        user_index: reviewer id -> user index, extended in place with new ids (share one
            dict across splits); a fresh dict when None. Empty ``user_id`` gives -1.
        max_rows: read only the first ``max_rows`` rows (the earliest ones).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: an id outside 0..N-1, an empty history, a history or target title that
            is not the ``items.tsv`` title of its id, or a malformed field (file and row named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BIGRec split file not found: {path}")
    users = {} if user_index is None else user_index
    n = len(titles)
    history: list[list[int]] = []
    target: list[int] = []
    user: list[int] = []
    stamp: list[int] = []
    for k, row in _rows(path):
        if max_rows is not None and k > max_rows:
            break
        where = f"{path}, row {k}"
        hist = _int_list(row["history_item_id"], where)
        try:
            tgt = int(row["item_id"])
        except ValueError:
            raise ValueError(f"{where}: item_id {row['item_id']!r} is not an integer") from None
        if not hist:
            raise ValueError(f"{where}: empty history_item_id")
        for i in (*hist, tgt):
            if not 0 <= i < n:
                raise ValueError(f"{where}: item id {i} is outside the catalogue 0..{n - 1}")
        if "history_item_title" in row:
            _check_titles(row["history_item_title"], hist, titles, where)
        if "item_title" in row and row["item_title"] != titles[tgt]:
            raise ValueError(f"{where}: item_title {row['item_title']!r} is not the items.tsv "
                             f"title of item {tgt}, {titles[tgt]!r}")
        reviewer = row.get("user_id", "")
        user.append(users.setdefault(reviewer, len(users)) if reviewer else -1)
        ts = row.get("timestamp", "")
        try:
            stamp.append(int(ts) if ts else -1)
        except ValueError:
            raise ValueError(f"{where}: timestamp {ts!r} is not an integer") from None
        history.append(hist)
        target.append(tgt)
    return Split(history, np.array(target, dtype=np.int64), np.array(user, dtype=np.int64),
                 np.array(stamp, dtype=np.int64))


def _check_titles(field: str, hist: list[int], titles: list[str], where: str) -> None:
    """Check that ``history_item_title`` lists the ``items.tsv`` titles of ``hist``."""
    expected = [titles[i] for i in hist]
    if field == str(expected):  # the writer's own spelling: no parse needed
        return
    got = _literal_list(field, where, "history_item_title")
    if got == expected:
        return
    if len(got) != len(expected):
        raise ValueError(f"{where}: history_item_title has {len(got)} titles but "
                         f"history_item_id has {len(expected)} ids")
    for pos, (g, e, i) in enumerate(zip(got, expected, hist)):
        if g != e:
            raise ValueError(f"{where}: history title {pos} {g!r} is not the items.tsv title "
                             f"of item {i}, {e!r}")


def load_bigrec(directory: str | Path, name: str | None = None,
                max_rows: int | None = None) -> NextItemData:
    """Read a BIGRec folder (module docstring) into a :class:`NextItemData`.

    Args:
        directory: the folder with ``items.tsv`` and the three split files.
        name: a label; defaults to the folder name.
        max_rows: read at most this many rows of each split (the earliest ones).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_items` and :func:`read_split`.
    """
    directory = Path(directory)
    titles = read_items(directory / ITEMS_FILE)
    users: dict[str, int] = {}
    splits = [read_split(split_file(directory, s), titles, users, max_rows)
              for s in SPLIT_NAMES]
    return NextItemData(name or directory.name, titles, *splits)


def load_amazon(category: str, root: str | Path | None = None,
                max_rows: int | None = None) -> NextItemData:
    """One of the paper's Amazon data sets (``"Video_Games"``, ``"CDs_and_Vinyl"``,
    ``"Movies_and_TV"``) in the BIGRec layout.

    Args:
        category: the folder name of the category.
        root: a folder holding ``<category>/`` or ``amazon/<category>/`` (e.g. the output
            folder of ``python -m flower_lite.data.amazon_raw``); default: the shared data.
        max_rows: read at most this many rows of each split.

    Raises:
        FileNotFoundError: the category folder cannot be found.
    """
    if root is None:
        folder = shared_amazon_dir(category)
        if folder is None:
            raise FileNotFoundError(
                f"no shared data for {category!r}: expected "
                f"{(shared_data_dir() or _DEFAULT_DATA) / 'amazon' / category}; set "
                f"{DATA_ENV} to the data folder that holds amazon/{category}, give the category folder "
                f"itself (--data on the command line), or build it from the raw Amazon files with "
                f"`python -m flower_lite.data.amazon_raw`")
    else:
        root = Path(root)
        candidates = [root / category, root / "amazon" / category, root]
        folder = next((c for c in candidates if (c / ITEMS_FILE).is_file()), None)
        if folder is None:
            raise FileNotFoundError(f"no {ITEMS_FILE} for {category!r} under {root} "
                                    f"(tried {', '.join(str(c) for c in candidates)})")
    return load_bigrec(folder, name=category, max_rows=max_rows)
