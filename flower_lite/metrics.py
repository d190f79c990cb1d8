"""Evaluation metrics of flower_lite (docs/method.md section 7).

Pure functions on numpy arrays and Python lists; no torch, no plotting.

Distribution fitting (RQ1). P is the target item distribution, Q the model's item
distribution. Both are given as 1-D arrays of non-negative weights of the same length
(item i at index i) and are normalised inside every function. Invalid (non-catalogue)
outputs are pooled into one extra bucket with :func:`with_invalid_bucket`. Logs are natural.

Recommendation (RQ2). ``ranked`` is a sequence of ranked lists of item ids (one list per
test row, best first; rows may have different lengths), ``targets`` the target item id of
every row, ``train_counts`` a 1-D array of length N with c(i), the training count of item
i = 0..N-1. Any id outside 0..N-1 (for example -1 for "no catalogue title") is invalid.
Duplicate titles are resolved by the caller: every function here sees item ids only.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "with_invalid_bucket", "kl_divergence", "js_divergence", "total_variation", "entropy",
    "support_size", "coverage", "gini", "tail_share", "rank_metrics", "hit_at_k", "ndcg_at_k",
    "group_unfairness", "popularity_group_ids", "word_entropy", "type_token_ratio",
    "invalid_count", "evaluate", "paired_difference", "row_exposure", "exposure_metrics", "paired_exposure_difference",
    "seed_interval", "seed_summary",
]

Ranked = Sequence[Sequence[int]]


# ---------------------------------------------------------------- validation helpers

def _weights(x: ArrayLike, name: str, allow_zero: bool = False) -> np.ndarray:
    """Check a 1-D array of finite non-negative weights; return it as float64 (not normalised)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    if np.isinf(a).any():
        raise ValueError(f"{name} contains inf")
    if (a < 0).any():
        raise ValueError(f"{name} contains negative entries")
    if not allow_zero and a.sum() <= 0:
        raise ValueError(f"{name} is all zero")
    return a


def _dist(x: ArrayLike, name: str) -> np.ndarray:
    """Validated weights normalised to sum 1."""
    a = _weights(x, name)
    return a / a.sum()


def _pair(p: ArrayLike, q: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, q = _dist(p, "p"), _dist(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"length mismatch: p has {p.size} entries, q has {q.size}")
    return p, q


def _rows(ranked: Ranked, targets: Sequence[int] | None = None) -> list[list[int]]:
    rows = [[int(i) for i in row] for row in ranked]
    if not rows:
        raise ValueError("ranked is empty")
    if targets is not None and len(targets) != len(rows):
        raise ValueError(f"length mismatch: {len(rows)} ranked lists, {len(targets)} targets")
    return rows


# ---------------------------------------------------------------- distributions (RQ1)

def with_invalid_bucket(p: ArrayLike, q: ArrayLike,
                        invalid_mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Append one pooled "invalid" bucket: P gets 0 there, Q gets ``invalid_mass``.

    ``p``, ``q``: shape (N,) weights. ``invalid_mass`` is in the units of ``q`` before
    normalisation (a count of invalid samples if ``q`` holds counts; the missing probability
    1 - sum(q) if ``q`` holds probabilities of the valid items). Returns two (N + 1,) arrays.
    Note KL(Q||P) is then dominated by the eps clip of P at the bucket (P is 0 there).
    """
    p, q = _weights(p, "p", allow_zero=True), _weights(q, "q", allow_zero=True)
    if p.shape != q.shape:
        raise ValueError(f"length mismatch: p has {p.size} entries, q has {q.size}")
    m = float(invalid_mass)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"invalid_mass must be finite and non-negative, got {invalid_mass}")
    return np.append(p, 0.0), np.append(q, m)


def kl_divergence(p: ArrayLike, q: ArrayLike, eps: float = 1e-12) -> float:
    """KL(P||Q) = sum_i p_i log(p_i / q_i), natural log, with 0 log 0 = 0.

    ``p``, ``q``: shape (N,). After normalisation q is clipped below at ``eps`` so the result
    stays finite where q_i = 0 < p_i (it is then about p_i log(p_i / eps), a large number,
    not infinity). Swap the arguments for KL(Q||P).
    """
    p, q = _pair(p, q)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], eps))))


def js_divergence(p: ArrayLike, q: ArrayLike) -> float:
    """Jensen-Shannon JS(P, Q) = KL(P||M)/2 + KL(Q||M)/2 with M = (P + Q)/2, natural log.

    ``p``, ``q``: shape (N,). Exact (M > 0 wherever P or Q is), symmetric, in [0, log 2];
    floating-point rounding is clipped to that interval.
    """
    p, q = _pair(p, q)
    m = 0.5 * (p + q)
    js = 0.0
    for a in (p, q):
        s = a > 0
        js += 0.5 * float(np.sum(a[s] * np.log(a[s] / m[s])))
    return min(max(js, 0.0), math.log(2.0))


def total_variation(p: ArrayLike, q: ArrayLike) -> float:
    """Total variation TV(P, Q) = (1/2) sum_i |p_i - q_i|, in [0, 1]. ``p``, ``q``: shape (N,)."""
    p, q = _pair(p, q)
    return float(0.5 * np.abs(p - q).sum())


def entropy(p: ArrayLike) -> float:
    """Shannon entropy H(P) = -sum_i p_i log p_i (natural log, 0 log 0 = 0). ``p``: shape (N,)."""
    p = _dist(p, "p")
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def support_size(q: ArrayLike, threshold: float = 0.0) -> int:
    """Number of items whose normalised probability q_i is strictly above ``threshold``.

    The distribution counterpart of :func:`coverage`. ``q``: shape (N,).
    """
    return int((_dist(q, "q") > threshold).sum())


# ---------------------------------------------------------------- exposure

def coverage(ranked: Ranked, num_items: int | None = None) -> int:
    """Number of distinct item ids over all ranked lists (every position).

    With ``num_items`` = N only valid ids (0..N-1) count; without it every id counts.
    """
    ids = {i for row in _rows(ranked) for i in row}
    if num_items is not None:
        ids = {i for i in ids if 0 <= i < num_items}
    return len(ids)


def gini(weights: ArrayLike) -> float:
    """Gini coefficient of exposure, 0 = equal, (n-1)/n = all weight on one of n items.

    Standard sorted formula: with x_(1) <= ... <= x_(n) the weights in ascending order,
    G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i), i = 1..n. ``weights``: shape (n,).
    """
    x = np.sort(_weights(weights, "weights"))
    n = x.size
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def tail_share(weights: ArrayLike, counts: ArrayLike, head_fraction: float = 0.2) -> float:
    """Share of ``weights`` on tail items: those outside the ``round(head_fraction * n)`` items
    with the largest ``counts`` (ties broken by smaller item id first).

    ``weights`` (e.g. recommendation exposure) and ``counts`` (e.g. training counts c(i)):
    shape (n,). Returns a value in [0, 1].
    """
    w = _weights(weights, "weights")
    c = _weights(counts, "counts", allow_zero=True)
    if w.shape != c.shape:
        raise ValueError(f"length mismatch: weights has {w.size} entries, counts has {c.size}")
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must be in [0, 1], got {head_fraction}")
    head = np.argsort(-c, kind="stable")[: int(round(head_fraction * c.size))]
    return float(1.0 - w[head].sum() / w.sum())


# ---------------------------------------------------------------- next-item recommendation (RQ2)

def _target_ranks(ranked: Ranked, targets: Sequence[int], k: int) -> np.ndarray:
    """0-based rank r of each target in its list (first occurrence); np.inf when absent."""
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = _rows(ranked, targets)
    return np.array([row.index(int(t)) if int(t) in row else np.inf
                     for row, t in zip(rows, targets)])


def rank_metrics(ranks: ArrayLike, ks: Sequence[int] = (10,)) -> dict[str, float]:
    """``hit@K`` = mean over rows of 1[r < K] and ``ndcg@K`` = mean of 1[r < K] / log2(r + 2) from the 0-based
    ranks r of each row's one relevant item (inf when absent): the one HR / NDCG of the package."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hit@{k}"] = float(np.mean(hit))
        out[f"ndcg@{k}"] = float(np.sum(1.0 / np.log2(r[hit] + 2)) / r.size)
    return out


def hit_at_k(ranked: Ranked, targets: Sequence[int], k: int) -> float:
    """HR@K of ranked lists (:func:`rank_metrics`); a list shorter than K is scored on the positions it has."""
    return rank_metrics(_target_ranks(ranked, targets, k), (k,))[f"hit@{k}"]


def ndcg_at_k(ranked: Ranked, targets: Sequence[int], k: int) -> float:
    """NDCG@K of ranked lists (:func:`rank_metrics`; one relevant item per row)."""
    return rank_metrics(_target_ranks(ranked, targets, k), (k,))[f"ndcg@{k}"]


def group_unfairness(ranked: Ranked, train_counts: ArrayLike, n_groups: int = 8) -> dict:
    """Popularity-group unfairness (IFairLRS): DGU and MGU.

    Items with c(i) > 0 are sorted by c(i) descending (ties: smaller id first) and cut into
    ``n_groups`` groups with ``numpy.array_split`` sizes (the first groups take the remainder).
    GP_data(g) = sum_{i in g} c(i) / sum_i c(i); GP_rec(g) = share of recommended slots (every
    position of every list) that fall in g, among the slots whose item is in some group
    (invalid ids and items with c(i) = 0 are left out). GU(g) = GP_rec(g) - GP_data(g),
    MGU = mean_g |GU(g)|, DGU = max_g GU(g) - min_g GU(g). If no slot falls in a group,
    GP_rec, GU, MGU and DGU are NaN.

    Returns {"dgu": float, "mgu": float, "gp_data", "gp_rec", "gu": arrays of shape (n_groups,)}.
    """
    c = _weights(train_counts, "train_counts")
    groups = popularity_group_ids(c, n_groups)
    order = np.concatenate(groups)
    group_of = np.full(c.size, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    gp_data = np.bincount(group_of[order], weights=c[order], minlength=n_groups) / c.sum()
    slots = np.array([i for row in _rows(ranked) for i in row], dtype=np.int64)
    slots = slots[(slots >= 0) & (slots < c.size)]
    g_slots = group_of[slots]
    g_slots = g_slots[g_slots >= 0]
    if g_slots.size:
        gp_rec = np.bincount(g_slots, minlength=n_groups) / g_slots.size
    else:
        gp_rec = np.full(n_groups, np.nan)
    gu = gp_rec - gp_data
    return {"dgu": float(gu.max() - gu.min()), "mgu": float(np.abs(gu).mean()),
            "gp_data": gp_data, "gp_rec": gp_rec, "gu": gu}


def _words(titles: Sequence[str]) -> list[str]:
    words = [w for t in titles for w in str(t).split()]
    if not words:
        raise ValueError("titles contain no words")
    return words


def word_entropy(titles: Sequence[str], base: float = 2.0) -> float:
    """Entropy -sum_w f_w log f_w of the word frequencies f_w over all recommended titles.

    ``titles``: one string per recommended slot (repeats count). Words are whitespace-split,
    case-sensitive. Log base 2 (bits) by default, as the reference reports it.
    """
    n = np.array(list(Counter(_words(titles)).values()), dtype=np.float64)
    f = n / n.sum()
    return float(-(f * np.log(f)).sum() / math.log(base))


def type_token_ratio(titles: Sequence[str]) -> float:
    """TTR = number of distinct words / number of words over all recommended titles."""
    words = _words(titles)
    return len(set(words)) / len(words)


def invalid_count(ranked: Ranked, num_items: int) -> int:
    """Number of recommended slots whose id is not a catalogue item (outside 0..N-1, e.g. -1)."""
    return sum(1 for row in _rows(ranked) for i in row if not 0 <= i < num_items)


def evaluate(ranked: Ranked, targets: Sequence[int], train_counts: ArrayLike,
             titles: Sequence[str] | None = None,
             ks: Sequence[int] = (1, 3, 5, 10, 20), n_groups: int = 8) -> dict[str, float]:
    """All section-8 recommendation metrics in one dict.

    Keys: ``hit@K`` and ``ndcg@K`` for K in ``ks`` (a K beyond a list's length uses the
    positions the list has); ``dgu``, ``mgu`` (``n_groups`` groups); ``coverage`` (distinct
    valid ids); ``gini`` and ``tail_share`` (head = top 20% of all N items by c(i)) of the
    exposure vector (slots per item i = 0..N-1; NaN if no slot is valid); ``word_entropy``
    (bits) and ``ttr`` of the titles of the valid recommended slots (``titles``: catalogue
    titles indexed by item id; NaN when ``titles`` is None or there is no word); ``invalid``.
    N = len(train_counts).
    """
    c = _weights(train_counts, "train_counts")
    n = c.size
    rows = _rows(ranked, targets)
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit@{k}"] = hit_at_k(rows, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(rows, targets, k)
    gu = group_unfairness(rows, c, n_groups)
    out["dgu"], out["mgu"] = gu["dgu"], gu["mgu"]
    valid = [i for row in rows for i in row if 0 <= i < n]
    out["coverage"] = len(set(valid))
    exposure = np.bincount(np.array(valid, dtype=np.int64), minlength=n).astype(np.float64)
    out["gini"] = gini(exposure) if valid else math.nan
    out["tail_share"] = tail_share(exposure, c) if valid else math.nan
    rec_titles = [titles[i] for i in valid] if titles is not None else []
    has_words = any(str(t).split() for t in rec_titles)
    out["word_entropy"] = word_entropy(rec_titles) if has_words else math.nan
    out["ttr"] = type_token_ratio(rec_titles) if has_words else math.nan
    out["invalid"] = invalid_count(rows, n)
    return out


def popularity_group_ids(counts: ArrayLike, n_groups: int = 8) -> list[np.ndarray]:
    """The IFairLRS popularity groups: ``n_groups`` int64 arrays of item ids, most popular first.

    Items with c(i) > 0 (``counts``: shape (N,), c(i) at index i) are sorted by c(i)
    descending, ties by smaller id first, and cut with ``numpy.array_split`` (the first
    ``n_pos % n_groups`` groups get one extra item). Items with c(i) = 0 are in no group.
    This is the one grouping rule of the package (used by :func:`group_unfairness`).
    """
    c = _weights(counts, "counts")
    items = np.flatnonzero(c > 0)
    if not 1 <= n_groups <= items.size:
        raise ValueError(f"n_groups must be in 1..{items.size} (items with a positive count), "
                         f"got {n_groups}")
    order = items[np.argsort(-c[items], kind="stable")].astype(np.int64)
    return list(np.array_split(order, n_groups))


# --------------------------------------------------------------------------------------------
# Uncertainty of a comparison on the same rows (docs/method.md 8b)
# --------------------------------------------------------------------------------------------


def per_row_gains(ranked: Ranked, targets: Sequence[int], k: int) -> dict[str, np.ndarray]:
    """Each row's own ``hit@K`` (1[r < K]) and ``ndcg@K`` (1[r < K] / log2(r + 2)): float64 [rows] each; their
    means are :func:`hit_at_k` and :func:`ndcg_at_k`."""
    r = _target_ranks(ranked, targets, k)
    hit = r < k
    return {f"hit@{k}": hit.astype(np.float64), f"ndcg@{k}": np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2), 0.0)}


def paired_difference(a: ArrayLike, b: ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The mean of d_u = a_u - b_u over rows u scored by two methods, its percentile bootstrap interval (rows
    resampled with replacement, ``resamples`` times, seeded) and the two-sided paired randomization p-value
    (every d_u's sign flipped at random, ``resamples`` times; (1 + #|mean*| >= |mean|) / (1 + resamples)).

    Returns ``{"diff", "lo", "hi", "p"}``. ``a``, ``b``: float [rows], the same rows in the same order.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"paired_difference needs two equal-length 1-D score arrays, got shapes {np.shape(a)}, {np.shape(b)}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    flips = rng.choice(np.array([-1.0, 1.0]), size=(resamples, d.size))
    null = np.abs((flips * d).mean(axis=1))
    p = (1 + np.sum(null >= abs(d.mean()) - 1e-12)) / (1 + resamples)
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": float(p)}


EXPOSURE_KEYS = ("dgu", "mgu", "coverage", "gini", "tail_share")
"""The list-level metrics of :func:`evaluate` that :func:`paired_exposure_difference` gives intervals for."""


def row_exposure(ranked: Ranked, num_items: int) -> np.ndarray:
    """Each row's valid slots per item, float64 [rows, ``num_items``]: a sum of rows is the exposure vector
    :func:`evaluate` scores (invalid ids left out)."""
    rows = _rows(ranked)
    out = np.zeros((len(rows), num_items))
    for u, row in enumerate(rows):
        ids = np.array([i for i in row if 0 <= i < num_items], dtype=np.int64)
        np.add.at(out[u], ids, 1.0)
    return out


def exposure_metrics(exposure: np.ndarray, train_counts: ArrayLike, n_groups: int = 8,
                     head_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """DGU, MGU, coverage, Gini and tail share of exposure vectors ``exposure`` [..., N] (slots per item), each
    [...], by the formulas of :func:`group_unfairness`, :func:`gini` and :func:`tail_share` (NaN without a slot)."""
    c = _weights(train_counts, "train_counts")
    e = np.asarray(exposure, dtype=np.float64)
    groups = popularity_group_ids(c, n_groups)
    gp_data = np.array([c[g].sum() for g in groups]) / c.sum()
    in_group = np.stack([e[..., g].sum(axis=-1) for g in groups], axis=-1)
    head = np.argsort(-c, kind="stable")[: int(round(head_fraction * c.size))]
    total = e.sum(axis=-1)
    x = np.sort(e, axis=-1)
    i = np.arange(1, c.size + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gu = in_group / in_group.sum(axis=-1, keepdims=True) - gp_data
        return {"dgu": gu.max(axis=-1) - gu.min(axis=-1), "mgu": np.abs(gu).mean(axis=-1),
                "coverage": (e > 0).sum(axis=-1).astype(np.float64),
                "gini": np.sum((2 * i - c.size - 1) * x, axis=-1) / (c.size * total),
                "tail_share": 1.0 - e[..., head].sum(axis=-1) / total}


def paired_exposure_difference(ranked_a: Ranked, ranked_b: Ranked, train_counts: ArrayLike,
                               keys: Sequence[str] = EXPOSURE_KEYS, resamples: int = 2000, seed: int = 0,
                               level: float = 0.95, n_groups: int = 8, chunk: int = 250) -> dict[str, dict]:
    """For each list-level metric of ``keys`` (:data:`EXPOSURE_KEYS`): its value on lists ``a`` minus its value on
    lists ``b`` over the same rows, a paired percentile bootstrap interval (rows resampled with replacement, both
    methods' lists of a drawn row kept together, ``resamples`` times, seeded) and a two-sided randomization p-value
    (each row's two lists swapped at random: the null that the methods are exchangeable on every row).

    These metrics are not means of per-row terms, as hit@K is: each resample recomputes them from the exposure of
    its rows (``chunk`` resamples at a time). Returns ``{key: {"diff", "lo", "hi", "p"}}``.
    """
    unknown = [k for k in keys if k not in EXPOSURE_KEYS]
    if unknown:
        raise ValueError(f"no list-level interval for {unknown}: expected keys among {EXPOSURE_KEYS}")
    n = np.asarray(train_counts).size
    a, b = row_exposure(ranked_a, n), row_exposure(ranked_b, n)
    if a.shape != b.shape:
        raise ValueError(f"paired_exposure_difference needs the same rows for both methods, got {len(a)} and {len(b)}")
    metric = lambda e: exposure_metrics(e, train_counts, n_groups)  # noqa: E731
    full_a, full_b = metric(a.sum(0)), metric(b.sum(0))
    diff = {k: float(full_a[k] - full_b[k]) for k in keys}
    rng = np.random.default_rng(seed)
    times = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a)), size=resamples)  # [resamples, rows]: draws per row
    swap = (rng.random((resamples, len(a))) < 0.5).astype(np.float64)  # 1: the row's two lists change places
    boot, null = {k: [] for k in keys}, {k: [] for k in keys}
    for s in range(0, resamples, chunk):
        t, moved = times[s:s + chunk], swap[s:s + chunk] @ (b - a)
        ma, mb = metric(t @ a), metric(t @ b)
        sa, sb = metric(a.sum(0) + moved), metric(b.sum(0) - moved)
        for k in keys:
            boot[k].append(ma[k] - mb[k])
            null[k].append(np.abs(sa[k] - sb[k]))
    out = {}
    for k in keys:
        lo, hi = np.nanquantile(np.concatenate(boot[k]), [(1 - level) / 2, (1 + level) / 2])
        p = (1 + np.sum(np.concatenate(null[k]) >= abs(diff[k]) - 1e-12)) / (1 + resamples)
        out[k] = {"diff": diff[k], "lo": float(lo), "hi": float(hi), "p": float(p)}
    return out


T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281)
"""Student-t 0.975 quantiles for 1..10 degrees of freedom (beyond: 1.96 + 2.4 / df, within 0.01 of the exact value)."""


def seed_interval(values: ArrayLike) -> dict:
    """Mean and 95% Student-t interval over seeds: ``{"mean", "lo", "hi", "n"}`` (half-width t_{n-1} s / sqrt(n))."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"a seed interval needs at least 2 seeds, got {x.size}")
    df = x.size - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96 + 2.4 / df
    half = float(t * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": float(x.mean()), "lo": float(x.mean() - half), "hi": float(x.mean() + half), "n": int(x.size)}


def seed_summary(tables: Sequence[list[dict]], keys: Sequence[str], name: str = "method") -> list[dict]:
    """One row per ``name`` of the per-seed ``tables`` (the same rows in the same order, one table per seed): for
    every key of ``keys`` the mean over seeds and its 95% Student-t interval (``key``, ``key_lo``, ``key_hi``;
    :func:`seed_interval`), and ``seeds``. The seed-to-seed spread is what a claim must clear beside the per-row
    interval of one seed (``flower-lite compare --seeds``, ``results/rq1_table.py --seeds``)."""
    if len(tables) < 2:
        raise ValueError(f"seed_summary needs the tables of at least 2 seeds, got {len(tables)}")
    names = [[r[name] for r in t] for t in tables]
    if any(n != names[0] for n in names):
        raise ValueError(f"the seeds' tables have different rows: {names}; give every seed the same rows (no grid "
                         "that validation may settle differently per seed)")
    out = []
    for i, row_name in enumerate(names[0]):
        row = {name: row_name, "seeds": len(tables)}
        for key in keys:
            values = [t[i][key] for t in tables if key in t[i]]
            if len(values) == len(tables):
                ci = seed_interval(values)
                row |= {key: round(ci["mean"], 4), f"{key}_lo": round(ci["lo"], 4), f"{key}_hi": round(ci["hi"], 4)}
        out.append(row)
    return out
