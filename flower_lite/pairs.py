"""Rejected items for preference pairs (RQ3): each row's chosen item is its target; these draw the rejected ones.

* :func:`uniform_negatives`: S-DPO's k distinct catalogue items other than the target, uniformly;
* :func:`popularity_negatives`: RosePO's one rejected item in proportion to its history popularity c(i), the target
  excluded (popular items become the "dispreferred" ones, pushing exposure toward the tail);
* :func:`popularity_pairs`: RQ1's (chosen, rejected) title pairs of the authors' DPO baseline, where the chosen
  title is the more popular one.

Pure numpy on item ids and counts, seeded by the caller's ``numpy.random.Generator``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["uniform_negatives", "popularity_negatives", "popularity_pairs"]


def uniform_negatives(targets: np.ndarray, num_items: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [rows, k]: for each target, k distinct items drawn uniformly from the other ``num_items - 1``."""
    targets = np.asarray(targets, dtype=np.int64)
    if not 1 <= k < num_items:
        raise ValueError(f"uniform_negatives: k must be in [1, {num_items - 1}] for {num_items} items, got {k}")
    keys = rng.random((len(targets), num_items))
    keys[np.arange(len(targets)), targets] = np.inf  # the target sorts last, never among the k smallest
    return np.argsort(keys, axis=1)[:, :k].astype(np.int64)


def popularity_negatives(targets: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 [rows]: for each target t, one item i != t drawn with probability c(i) / (Σ_j c(j) - c(t))."""
    targets = np.asarray(targets, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    if (counts < 0).any():
        raise ValueError("popularity_negatives: counts must be >= 0")
    rest = counts.sum() - counts[targets]
    if (rest <= 0).any():
        raise ValueError("popularity_negatives: a target is the only item with a positive count; nothing to reject")
    cdf = np.cumsum(counts)
    u = rng.random(len(targets)) * rest
    # draw on the counts with the target's mass cut out: shift u past the target's interval
    start = cdf[targets] - counts[targets]
    u = np.where(u >= start, u + counts[targets], u)
    return np.searchsorted(cdf, u, side="right").astype(np.int64)


def popularity_pairs(counts: np.ndarray, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RQ1's DPO pairs (the authors' 6,400 for 100 titles): ``(chosen, rejected)`` int64 [num_pairs] each. The
    chosen title is drawn uniformly among the titles that have a strictly less popular one (the least popular
    titles never are), the rejected one uniformly among the titles strictly less popular than it."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(counts, kind="stable")
    ranks = np.searchsorted(counts[order], counts, side="left")  # how many titles are strictly less popular
    eligible = np.flatnonzero(ranks > 0)
    if eligible.size == 0:
        raise ValueError("popularity_pairs: every title has the same count; no title is less popular than another")
    chosen = eligible[rng.integers(0, eligible.size, num_pairs)]
    rejected = order[(rng.random(num_pairs) * ranks[chosen]).astype(np.int64)]
    return chosen.astype(np.int64), rejected.astype(np.int64)
