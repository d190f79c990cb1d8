"""The catalogue: item titles and the users' time-ordered interactions (docs/method.md section 2).

Items are numbered ``0..N-1`` and item ``i`` has title ``titles[i]``. Titles may repeat
(several item ids, one string); :meth:`Catalog.title_to_items` keeps that mapping explicit.
Interactions are rows ``(user_id, item_id, timestamp)``; the popularity ``c(i)`` of
docs/method.md section 4 is the number of rows that name item ``i``.

On disk a catalogue is a folder with two tab-separated files::

    items.tsv         item_id<TAB>title              (ids 0..N-1, in order)
    interactions.tsv  user_id<TAB>item_id<TAB>timestamp
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

ITEMS_FILE = "items.tsv"
INTERACTIONS_FILE = "interactions.tsv"
ITEMS_HEADER = ("item_id", "title")
INTERACTIONS_HEADER = ("user_id", "item_id", "timestamp")
_FORBIDDEN_IN_TITLES = ("\t", "\n", "\r")


@dataclass(frozen=True, eq=False)
class Catalog:
    """Item titles plus interactions.

    Attributes:
        name: a label for the catalogue (e.g. ``"synthetic"``, ``"ml-100k"``).
        titles: ``titles[i]`` is the title of item ``i``; item ids are ``0..N-1``.
        interactions: int64 array ``[M, 3]`` of ``(user_id, item_id, timestamp)`` rows,
            sorted by ``(user_id, timestamp)`` (ties keep their given order); ``M`` may be 0.
            The constructor copies, sorts and freezes (read-only) the array.
    """

    name: str
    titles: list[str]
    interactions: np.ndarray

    def __post_init__(self) -> None:
        titles = list(self.titles)
        if not titles:
            raise ValueError(f"catalogue {self.name!r} is empty: it has no item titles")
        for i, title in enumerate(titles):
            if not isinstance(title, str):
                raise TypeError(f"title of item {i} is {type(title).__name__}, not str")
            if not title.strip():
                raise ValueError(f"title of item {i} is empty or whitespace-only: {title!r}")
            if any(ch in title for ch in _FORBIDDEN_IN_TITLES):
                raise ValueError(f"title of item {i} contains a tab or line break: {title!r}")
        inter = np.array(self.interactions, dtype=np.int64)
        if inter.size == 0:
            inter = inter.reshape(0, 3)
        if inter.ndim != 2 or inter.shape[1] != 3:
            raise ValueError(f"interactions must have shape [M, 3], got {list(inter.shape)}")
        if (inter[:, 0] < 0).any():
            raise ValueError(f"negative user id {int(inter[:, 0].min())} in interactions")
        if (inter[:, 1] < 0).any():
            raise ValueError(f"negative item id {int(inter[:, 1].min())} in interactions")
        unknown = inter[:, 1] >= len(titles)
        if unknown.any():
            raise ValueError(
                f"interaction with unknown item id {int(inter[unknown, 1][0])}: "
                f"the catalogue has items 0..{len(titles) - 1}"
            )
        order = np.lexsort((np.arange(len(inter)), inter[:, 2], inter[:, 0]))
        inter = inter[order]
        inter.flags.writeable = False
        object.__setattr__(self, "titles", titles)
        object.__setattr__(self, "interactions", inter)

    def __eq__(self, other: object) -> bool:
        """Same name, same titles and the same interaction rows."""
        if not isinstance(other, Catalog):
            return NotImplemented
        return (
            self.name == other.name
            and self.titles == other.titles
            and np.array_equal(self.interactions, other.interactions)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Catalog(name={self.name!r}, num_items={self.num_items}, "
            f"num_users={self.num_users}, num_interactions={len(self.interactions)})"
        )

    @property
    def num_items(self) -> int:
        """N, the number of item ids (duplicate titles count once per id)."""
        return len(self.titles)

    @property
    def num_users(self) -> int:
        """U = 1 + the largest user id (0 without interactions); users are ``0..U-1``."""
        return int(self.interactions[:, 0].max()) + 1 if len(self.interactions) else 0

    def counts(self) -> np.ndarray:
        """Popularity c(i): int64 ``[N]``, the number of interactions with each item."""
        return np.bincount(self.interactions[:, 1], minlength=self.num_items).astype(np.int64)

    def histories(self) -> list[list[int]]:
        """Per-user histories: ``U`` lists of item ids in time order (empty for unseen users)."""
        users = self.interactions[:, 0]
        bounds = np.searchsorted(users, np.arange(self.num_users + 1))
        items = self.interactions[:, 1].tolist()
        return [items[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]

    def title_to_items(self) -> dict[str, list[int]]:
        """Title -> sorted item ids carrying it (several ids for a duplicate title).

        Keys are in order of first appearance in ``titles``.
        """
        mapping: dict[str, list[int]] = {}
        for i, title in enumerate(self.titles):
            mapping.setdefault(title, []).append(i)
        return mapping

    def distinct_titles(self) -> list[str]:
        """The distinct title strings, in order of first appearance (one trie path each)."""
        return list(dict.fromkeys(self.titles))

    def save(self, directory: str | Path) -> None:
        """Write ``items.tsv`` and ``interactions.tsv`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        items = ["\t".join(ITEMS_HEADER)] + [f"{i}\t{t}" for i, t in enumerate(self.titles)]
        rows = ["\t".join(INTERACTIONS_HEADER)] + [
            f"{u}\t{i}\t{t}" for u, i, t in self.interactions.tolist()
        ]
        for file, lines in ((ITEMS_FILE, items), (INTERACTIONS_FILE, rows)):
            (directory / file).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None) -> Catalog:
        """Read a catalogue written by :meth:`save`; ``name`` defaults to the folder name.

        Raises:
            FileNotFoundError: a file is missing (the message names its path).
            ValueError: a malformed header or row (the message names file and line).
        """
        directory = Path(directory)
        titles: list[str] = []
        for line_no, (item_id, title) in _read_tsv(directory / ITEMS_FILE, ITEMS_HEADER, 1):
            if item_id != len(titles):
                raise ValueError(
                    f"{directory / ITEMS_FILE}, line {line_no}: item id {item_id} out of "
                    f"order, expected {len(titles)}"
                )
            titles.append(title)
        rows = [f for _, f in _read_tsv(directory / INTERACTIONS_FILE, INTERACTIONS_HEADER, 3)]
        return cls(name or directory.name, titles, np.array(rows, dtype=np.int64).reshape(-1, 3))


def _read_tsv(path: Path, header: tuple[str, ...], n_int: int) -> Iterator[tuple[int, list]]:
    """Yield ``(line_number, fields)`` for each row of a TSV file after checking its header.

    The first ``n_int`` fields are parsed as ``int``; the rest stay strings.
    """
    if not path.is_file():
        raise FileNotFoundError(f"catalogue file not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines or tuple(lines[0].split("\t")) != header:
        got = lines[0] if lines else "<empty file>"
        raise ValueError(f"{path}, line 1: expected header {'<TAB>'.join(header)}, got {got!r}")
    for line_no, line in enumerate(lines[1:], start=2):
        fields: list = line.split("\t", len(header) - 1)
        try:
            if len(fields) != len(header):
                raise ValueError
            fields[:n_int] = [int(f) for f in fields[:n_int]]
        except ValueError:
            raise ValueError(
                f"{path}, line {line_no}: expected {len(header)} tab-separated fields "
                f"({', '.join(header)}) with integer ids, got {line!r}"
            ) from None
        yield line_no, fields
