"""Next-item data: sliding-window samples and the 8:1:1 chronological split.

A *sample* is one row of the next-item task: a history of at most ``max_history`` item
ids (oldest first) and the item that came next (the target). From one user's time-ordered
interactions ``[i_0, i_1, ..., i_{L-1}]`` the sliding window gives ``L - 1`` samples::

    [i_0] -> i_1,  [i_0, i_1] -> i_2,  ...,  [i_{t-10}, ..., i_{t-1}] -> i_t,  ...

All samples of all users are sorted by the timestamp of their target (a stable sort: ties
keep the order in which the samples were made) and cut chronologically into train / valid /
test at ``int(0.8 * rows)`` and ``int(0.9 * rows)``, as the reference (``process.py``) does.
A user's later samples can therefore land in valid or test while the earlier ones are in
train; valid/test histories contain items seen in train.

Popularity (docs/method.md section 4). :meth:`NextItemData.train_history_counts` is the paper's
count c(i): the number of times item i appears in the ``history`` lists of the train split.
Because the windows overlap, one interaction is counted up to ``max_history`` times (once
per window that contains it), and the last train target of a user is not counted. That is
what the reference's popularity file, trie and group shares use. The plain interaction
count is closer to :meth:`NextItemData.train_target_counts` (every train target once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from .catalog import Catalog

__all__ = [
    "MAX_HISTORY", "Sample", "Split", "NextItemData",
    "sliding_window_samples", "chronological_split", "next_item_data_from_catalog",
]

MAX_HISTORY = 10
SPLIT_NAMES = ("train", "valid", "test")


class Sample(NamedTuple):
    """One next-item row: ``history`` (oldest first) -> ``target``.

    ``user`` is the user index and ``timestamp`` the target's time (Unix seconds);
    either is -1 when unknown.
    """

    user: int
    history: list[int]
    target: int
    timestamp: int = -1


@dataclass(frozen=True, eq=False)
class Split:
    """One split (train, valid or test) of a next-item data set, ``rows`` samples.

    Attributes:
        history: ``rows`` lists of item ids, oldest first, each non-empty
            (1..``max_history`` items in the shipped data).
        target: int64 ``[rows]``, the next item of each row.
        user: int64 ``[rows]``, the user index of each row, -1 where unknown (the BIGRec
            train files store no users).
        timestamp: int64 ``[rows]``, the target's Unix time, -1 where unknown.

    The constructor copies the lists, converts the arrays and makes them read-only.
    """

    history: list[list[int]]
    target: np.ndarray
    user: np.ndarray | None = field(default=None)
    timestamp: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        history = [[int(i) for i in h] for h in self.history]
        rows = len(history)
        target = _int_array(self.target, rows, "target")
        user = _int_array(self.user, rows, "user")
        timestamp = _int_array(self.timestamp, rows, "timestamp")
        empty = [k for k, h in enumerate(history) if not h]
        if empty:
            raise ValueError(f"row {empty[0]} has an empty history (every row needs >= 1 item)")
        object.__setattr__(self, "history", history)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "timestamp", timestamp)

    def __len__(self) -> int:
        return len(self.history)

    def __repr__(self) -> str:
        if not len(self):
            return "Split(rows=0)"
        return f"Split(rows={len(self)}, mean_history={self.history_lengths().mean():.2f})"

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> Split:
        """A split holding ``samples`` in the given order."""
        return cls(
            history=[list(s.history) for s in samples],
            target=np.array([s.target for s in samples], dtype=np.int64),
            user=np.array([s.user for s in samples], dtype=np.int64),
            timestamp=np.array([s.timestamp for s in samples], dtype=np.int64),
        )

    def history_lengths(self) -> np.ndarray:
        """int64 ``[rows]``: the number of items in each history."""
        return np.array([len(h) for h in self.history], dtype=np.int64)

    def history_items(self) -> np.ndarray:
        """int64 ``[sum of history lengths]``: every history item of every row, in row order."""
        flat = [i for h in self.history for i in h]
        return np.array(flat, dtype=np.int64)

    def padded_histories(self, max_len: int, pad: int) -> np.ndarray:
        """int64 ``[rows, max_len]``: the last ``max_len`` items of each history, left-padded
        with ``pad`` (so the newest item is always in the last column)."""
        return pad_histories(self.history, max_len, pad)

    def first_sample_rows(self) -> int:
        """Rows whose history has exactly one item: a user's first sample. In a train split
        made by the sliding window this is the number of users with a train row."""
        return int((self.history_lengths() == 1).sum())


def _int_array(x, rows: int, name: str) -> np.ndarray:
    """int64 read-only ``[rows]`` copy of ``x``; ``None`` gives all -1."""
    a = np.full(rows, -1, dtype=np.int64) if x is None else np.array(x, dtype=np.int64)
    if a.shape != (rows,):
        raise ValueError(f"{name} must have shape [{rows}] (one entry per history), "
                         f"got {list(a.shape)}")
    a.flags.writeable = False
    return a


def pad_histories(histories: Sequence[Sequence[int]], max_len: int, pad: int) -> np.ndarray:
    """int64 ``[rows, max_len]``: each history's last ``max_len`` items, left-padded with
    ``pad``. Histories longer than ``max_len`` lose their oldest items."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.full((len(histories), max_len), pad, dtype=np.int64)
    for r, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            out[r, max_len - len(h):] = h
    return out


@dataclass(frozen=True, eq=False)
class NextItemData:
    """A next-item data set: the item titles and the train / valid / test splits.

    Attributes:
        name: a label (e.g. ``"Video_Games"``, ``"synthetic"``).
        titles: ``titles[i]`` is the title of item ``i``; ids are ``0..N-1``. Titles may
            repeat (several ids, one string).
        train, valid, test: the three :class:`Split` s; every item id in them is in 0..N-1.
    """

    name: str
    titles: list[str]
    train: Split
    valid: Split
    test: Split

    def __post_init__(self) -> None:
        titles = list(self.titles)
        if not titles:
            raise ValueError(f"data set {self.name!r} has no item titles")
        object.__setattr__(self, "titles", titles)
        n = len(titles)
        for split_name, split in self.splits().items():
            for what, ids in (("history item", split.history_items()), ("target", split.target)):
                bad = (ids < 0) | (ids >= n)
                if bad.any():
                    raise ValueError(f"{self.name} {split_name}: {what} id {int(ids[bad][0])} "
                                     f"is outside the catalogue 0..{n - 1}")

    def __repr__(self) -> str:
        return (f"NextItemData(name={self.name!r}, num_items={self.num_items}, "
                f"rows train/valid/test={len(self.train)}/{len(self.valid)}/{len(self.test)})")

    @property
    def num_items(self) -> int:
        """N, the number of item ids."""
        return len(self.titles)

    def splits(self) -> dict[str, Split]:
        """``{"train": ..., "valid": ..., "test": ...}``."""
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def train_history_counts(self) -> np.ndarray:
        """The paper's popularity c(i), int64 ``[N]``: how often item i appears in the train
        histories, counting every history window it is in (module docstring)."""
        return np.bincount(self.train.history_items(), minlength=self.num_items).astype(np.int64)

    def train_target_counts(self) -> np.ndarray:
        """int64 ``[N]``: how often item i is the target of a train row."""
        return np.bincount(self.train.target, minlength=self.num_items).astype(np.int64)

    def title_history_counts(self) -> dict[str, int]:
        """Title-level popularity: ``{title: count}`` over the train history lists, every
        title each time it appears, keys in order of first appearance.

        This is the reference's ``title_interaction`` file (its popularity reward, trie and
        groups are per title string, so duplicate titles pool their items' counts).
        """
        out: dict[str, int] = {}
        titles = self.titles
        for h in self.train.history:
            for i in h:
                t = titles[i]
                out[t] = out.get(t, 0) + 1
        return out

    def stats(self) -> dict[str, float]:
        """Summary numbers: items, rows and mean history length per split, the number of
        first samples (history length 1) per split, distinct train-history items."""
        out: dict[str, float] = {"items": self.num_items}
        for name, split in self.splits().items():
            out[f"rows_{name}"] = len(split)
            lengths = split.history_lengths()
            out[f"mean_history_{name}"] = float(lengths.mean()) if len(split) else float("nan")
            out[f"first_samples_{name}"] = split.first_sample_rows()
        out["train_history_items"] = int((self.train_history_counts() > 0).sum())
        return out


def sliding_window_samples(
    histories: Sequence[Sequence[int]],
    max_history: int = MAX_HISTORY,
    timestamps: Sequence[Sequence[int]] | None = None,
) -> list[Sample]:
    """Every next-item sample of every user, users in order, then time order.

    Args:
        histories: one time-ordered list of item ids per user (user index = position).
        max_history: keep at most this many previous items (the newest ones).
        timestamps: optional, parallel to ``histories``: the time of each interaction.
            Without it every sample's timestamp is -1.

    Returns:
        ``sum(max(len(h) - 1, 0))`` samples; ``Sample(u, h[max(0, t - max_history):t],
        h[t], time[t])`` for t = 1..len(h)-1.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    if timestamps is not None and len(timestamps) != len(histories):
        raise ValueError(f"{len(histories)} histories but {len(timestamps)} timestamp lists")
    samples: list[Sample] = []
    for u, seq in enumerate(histories):
        seq = [int(i) for i in seq]
        times = [-1] * len(seq) if timestamps is None else [int(t) for t in timestamps[u]]
        if len(times) != len(seq):
            raise ValueError(f"user {u}: {len(seq)} items but {len(times)} timestamps")
        for t in range(1, len(seq)):
            samples.append(Sample(u, seq[max(0, t - max_history):t], seq[t], times[t]))
    return samples


def chronological_split(
    samples: Sequence[Sample],
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Sort ``samples`` by target timestamp (stable) and cut them into train/valid/test.

    With ``rows`` samples the cuts are at ``int(r0 * rows)`` and ``int((r0 + r1) * rows)``
    (the reference's ``int(0.8 N)`` and ``int(0.9 N)``); test takes the rest.
    """
    r = [float(x) for x in ratios]
    if len(r) != 3 or min(r) < 0 or abs(sum(r) - 1.0) > 1e-9:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    ordered = sorted(samples, key=lambda s: s.timestamp)
    rows = len(ordered)
    a = int(r[0] * rows)
    b = int(round(r[0] + r[1], 12) * rows)
    return ordered[:a], ordered[a:b], ordered[b:]


def next_item_data_from_catalog(
    catalog: Catalog,
    max_history: int = MAX_HISTORY,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> NextItemData:
    """A :class:`NextItemData` from a :class:`Catalog` (e.g. the synthetic default).

    Every user's time-ordered interactions give sliding-window samples
    (:func:`sliding_window_samples`); they are sorted by target time and split
    (:func:`chronological_split`). ``user`` is the catalogue's user id.
    """
    inter = catalog.interactions
    users = inter[:, 0]
    bounds = np.searchsorted(users, np.arange(catalog.num_users + 1))
    items, times = inter[:, 1].tolist(), inter[:, 2].tolist()
    histories = [items[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    stamps = [times[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    samples = sliding_window_samples(histories, max_history, stamps)
    train, valid, test = chronological_split(samples, ratios)
    return NextItemData(catalog.name, catalog.titles, Split.from_samples(train),
                        Split.from_samples(valid), Split.from_samples(test))
