"""Build a BIGRec folder from the raw Amazon Review Data (2018) files.

For users who download the data themselves (J. Ni, J. Li, J. McAuley, EMNLP 2019):

- reviews, JSON lines ``{"reviewerID", "asin", "overall", "unixReviewTime", ...}``
  (e.g. ``Video_Games.json.gz`` or the 5-core ``Video_Games_5.json.gz``);
- metadata, JSON lines ``{"asin", "title", ...}`` (``meta_Video_Games.json.gz``).

Either file may be gzipped (detected from its first bytes). The pipeline follows the
reference's ``process.py`` step by step:

1. **Time window.** Keep reviews with ``start <= unixReviewTime < end``, where ``--start
   2015-10 --end 2018-11`` are 00:00 UTC on the first day of those months. (The reference
   uses local time and also keeps reviews stamped exactly at ``end``.)
2. **Titles** (:func:`clean_title`). HTML entities are unescaped (all of them; the reference
   only unescaped ``&quot;`` and ``&amp;``, which is why the shared data still shows
   ``&#39;``), whitespace is collapsed, surrounding spaces and double quotes stripped. An item
   is dropped when its title is missing, shorter than 2 characters, longer than 20 words or
   an HTML fragment (``<span ...``, a tag, or a ``... />`` metadata dump; the reference only
   caught ``<span id``). As in the reference, an ASIN with any bad metadata row is dropped,
   otherwise its last metadata row gives the title.
3. **k-core** (k = 5). Users and items with fewer than k reviews are removed, repeatedly,
   until every remaining user and item has at least k (the unique maximal k-core).
   Repeated reviews of one item by one user count as several interactions, as upstream.
   (The reference also widened the window by a year when fewer than 3,000 items survived;
   here you choose the window.)
4. **Item ids.** Items in order of first appearance among the kept reviews are shuffled by
   ``random.Random(seed).shuffle`` (seed 42 as upstream) and numbered 0..N-1.
5. **Samples.** Each user's reviews sorted by time (stable) give sliding-window samples of
   at most ``max_history`` (10) previous items, as
   :func:`~flower_lite.data.splits.sliding_window_samples` does.
6. **Split.** All samples sorted by target time (stable) and cut 8:1:1 at ``int(0.8 N)`` and
   ``int(0.9 N)`` (:func:`~flower_lite.data.splits.chronological_split`).
7. **Output.** ``items.tsv`` (``item_id<TAB>title``) and ``train.csv``, ``valid.csv``,
   ``test.csv`` with the columns :data:`~flower_lite.data.bigrec.COLUMNS`, written by
   ``csv.writer`` (CRLF), list fields as ``str(list)``, exactly the shared files' format
   (read them back with :func:`~flower_lite.data.bigrec.load_bigrec`).

Command line::

    python -m flower_lite.data.amazon_raw --reviews Video_Games.json.gz \\
        --meta meta_Video_Games.json.gz --start 2015-10 --end 2018-11 --out data/Video_Games
"""

from __future__ import annotations

import argparse
import ast
import calendar
import csv
import gzip
import html
import io
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from tqdm.auto import tqdm

from .bigrec import COLUMNS
from .catalog import ITEMS_FILE
from .splits import MAX_HISTORY, chronological_split

__all__ = ["Review", "read_json_lines", "clean_title", "month_start", "k_core",
           "preprocess", "main"]

MAX_TITLE_WORDS = 20
MIN_TITLE_CHARS = 2
_HTML_FRAGMENT = re.compile(r"<\s*[A-Za-z/!]|/>")


class Review(NamedTuple):
    """One kept review: reviewer id, ASIN, star rating, Unix time (seconds)."""

    user: str
    asin: str
    rating: float
    time: int


def _open_maybe_gzip(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json_lines(path: str | Path, progress: bool = False) -> Iterator[dict]:
    """Yield one dict per non-empty line of a JSON-lines file (gzipped or not).

    Lines that are not JSON are tried as Python dict literals (``ast.literal_eval``), the
    loose format of the 2014 release.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line that is neither (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw Amazon file not found: {path}")
    with _open_maybe_gzip(path) as f:
        for line_no, line in enumerate(tqdm(f, desc=path.name, unit=" lines",
                                            disable=not progress), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(f"{path}, line {line_no}: not a JSON object: "
                                     f"{line[:80]!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_no}: not a JSON object: {line[:80]!r}")
            yield record


def clean_title(raw: object) -> str | None:
    """The cleaned title, or None when the item must be dropped (module docstring, step 2).

    >>> clean_title("  Tom &amp; Jerry&#39;s  Cartoon ")
    "Tom & Jerry's Cartoon"
    >>> clean_title('<span class="a-size-medium">') is None
    True
    """
    if not isinstance(raw, str) or _HTML_FRAGMENT.search(raw):
        return None
    title = html.unescape(raw)
    if _HTML_FRAGMENT.search(title):
        return None
    title = " ".join(title.split()).strip(' "')
    if len(title) < MIN_TITLE_CHARS or len(title.split()) > MAX_TITLE_WORDS:
        return None
    return title


def month_start(month: str) -> int:
    """Unix time of 00:00 UTC on the first day of ``"YYYY-MM"``."""
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"expected a month as YYYY-MM, got {month!r}")
    return calendar.timegm((int(m.group(1)), int(m.group(2)), 1, 0, 0, 0))


def k_core(reviews: Sequence[Review], k: int = 5) -> list[Review]:
    """The reviews of the k-core: remove users and items with fewer than ``k`` reviews,
    repeatedly, until none is left to remove. Order is preserved."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    kept = list(reviews)
    while True:
        users = Counter(r.user for r in kept)
        items = Counter(r.asin for r in kept)
        bad_users = {u for u, c in users.items() if c < k}
        bad_items = {i for i, c in items.items() if c < k}
        if not bad_users and not bad_items:
            return kept
        kept = [r for r in kept if r.user not in bad_users and r.asin not in bad_items]


def _read_reviews(path: Path, start: int, end: int, progress: bool) -> list[Review]:
    out: list[Review] = []
    for line_no, r in enumerate(read_json_lines(path, progress), start=1):
        try:
            t = int(r["unixReviewTime"])
            if start <= t < end:
                out.append(Review(str(r["reviewerID"]), str(r["asin"]), float(r["overall"]), t))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}, record {line_no}: needs reviewerID, asin, overall and "
                             f"unixReviewTime ({type(e).__name__}: {e})") from None
    return out


def _read_titles(path: Path, wanted: set[str], progress: bool) -> dict[str, str]:
    """ASIN -> cleaned title for the ``wanted`` ASINs whose every metadata row is clean."""
    titles: dict[str, str] = {}
    bad: set[str] = set()
    for meta in read_json_lines(path, progress):
        asin = meta.get("asin")
        if asin not in wanted:
            continue
        title = clean_title(meta.get("title"))
        if title is None:
            bad.add(asin)
        else:
            titles[asin] = title
    return {a: t for a, t in titles.items() if a not in bad}


def preprocess(
    reviews: str | Path,
    meta: str | Path,
    out: str | Path,
    start: str = "2015-10",
    end: str = "2018-11",
    k: int = 5,
    max_history: int = MAX_HISTORY,
    seed: int = 42,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> dict[str, int]:
    """Run the whole pipeline (module docstring) and write a BIGRec folder to ``out``.

    Returns counts: ``reviews_in_window``, ``reviews_with_title``, ``interactions`` (after
    the k-core), ``users``, ``items``, ``samples``, ``train``, ``valid``, ``test``.

    Raises:
        FileNotFoundError: an input file is missing.
        ValueError: a malformed record, a bad month, or nothing left after filtering.
    """
    t0, t1 = month_start(start), month_start(end)
    if t0 >= t1:
        raise ValueError(f"the window is empty: start {start} is not before end {end}")
    stats: dict[str, int] = {}
    kept = _read_reviews(Path(reviews), t0, t1, progress)
    stats["reviews_in_window"] = len(kept)
    titles = _read_titles(Path(meta), {r.asin for r in kept}, progress)
    kept = [r for r in kept if r.asin in titles]
    stats["reviews_with_title"] = len(kept)
    kept = k_core(kept, k)
    if not kept:
        raise ValueError(f"no review is left after the time window, title cleaning and "
                         f"the {k}-core")
    stats["interactions"] = len(kept)

    items = list(dict.fromkeys(r.asin for r in kept))
    random.Random(seed).shuffle(items)
    item_id = {asin: i for i, asin in enumerate(items)}

    per_user: dict[str, list[Review]] = {}
    for r in kept:
        per_user.setdefault(r.user, []).append(r)
    rows: list[tuple[int, list]] = []  # (target time, CSV row)
    for user, rs in per_user.items():
        rs = sorted(rs, key=lambda r: r.time)
        for t in range(1, len(rs)):
            hist, nxt = rs[max(0, t - max_history):t], rs[t]
            rows.append((nxt.time, [
                user, str([r.asin for r in hist]), nxt.asin,
                str([item_id[r.asin] for r in hist]), item_id[nxt.asin],
                str([titles[r.asin] for r in hist]), titles[nxt.asin],
                str([r.rating for r in hist]), nxt.rating,
                str([r.time for r in hist]), nxt.time,
            ]))
    # chronological_split sorts by .timestamp; wrap rows to reuse it (stable sort).
    train, valid, test = chronological_split([_Timed(t, row) for t, row in rows], ratios)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["item_id\ttitle"] + [f"{i}\t{titles[a]}" for i, a in enumerate(items)]
    (out / ITEMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        with open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(s.row for s in part)
        stats[name] = len(part)
    stats.update(users=len(per_user), items=len(items), samples=len(rows))
    return stats


class _Timed(NamedTuple):
    timestamp: int
    row: list


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m flower_lite.data.amazon_raw --help``."""
    p = argparse.ArgumentParser(
        prog="python -m flower_lite.data.amazon_raw",
        description="Build a BIGRec folder (items.tsv, train/valid/test.csv) from raw Amazon "
                    "Review Data (2018) files.")
    p.add_argument("--reviews", required=True, help="reviews JSON lines (.json or .json.gz)")
    p.add_argument("--meta", required=True, help="metadata JSON lines (.json or .json.gz)")
    p.add_argument("--start", default="2015-10", help="first month kept, YYYY-MM (UTC)")
    p.add_argument("--end", default="2018-11", help="first month no longer kept, YYYY-MM")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=5, help="k of the k-core (default 5)")
    p.add_argument("--max-history", type=int, default=MAX_HISTORY)
    p.add_argument("--seed", type=int, default=42, help="seed of the item-id shuffle")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        stats = preprocess(args.reviews, args.meta, args.out, args.start, args.end, args.k,
                           args.max_history, args.seed, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
