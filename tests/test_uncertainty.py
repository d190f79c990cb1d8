"""Paired per-row differences and seed intervals (docs/method.md 8b), against closed forms and a naive loop."""
import math

import numpy as np
import pytest

from flower_lite.metrics import (EXPOSURE_KEYS, evaluate, exposure_metrics, hit_at_k, ndcg_at_k, paired_difference,
                                 paired_exposure_difference, per_row_gains, row_exposure, seed_interval)


def test_per_row_gains_average_to_hit_and_ndcg():
    ranked = [[3, 1, 2], [5, 4], [7, 8, 9], [1]]
    targets = [2, 5, 6, 1]
    g = per_row_gains(ranked, targets, 3)
    np.testing.assert_array_equal(g["hit@3"], [1, 1, 0, 1])
    np.testing.assert_allclose(g["ndcg@3"], [1 / math.log2(4), 1.0, 0.0, 1.0])
    assert g["hit@3"].mean() == hit_at_k(ranked, targets, 3)
    assert g["ndcg@3"].mean() == pytest.approx(ndcg_at_k(ranked, targets, 3))


def test_identical_methods_differ_by_zero_with_p_one():
    a = np.random.default_rng(0).random(50)
    out = paired_difference(a, a)
    assert out == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}


def test_a_constant_gain_is_its_own_interval_and_significant():
    b = np.random.default_rng(1).random(40)
    out = paired_difference(b + 0.25, b, resamples=999)
    assert out["diff"] == pytest.approx(0.25) and out["lo"] == pytest.approx(0.25) and out["hi"] == pytest.approx(0.25)
    assert out["p"] == pytest.approx(1 / 1000)  # no sign flip reaches |mean| = 0.25 except all-positive (prob 2^-40)


def test_the_bootstrap_equals_a_naive_loop_and_brackets_the_mean():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 200).astype(float), rng.integers(0, 2, 200).astype(float)
    out = paired_difference(a, b, resamples=500, seed=3)
    d = a - b
    gen = np.random.default_rng(3)
    idx = gen.integers(0, d.size, size=(500, d.size))
    naive = [np.mean([d[i] for i in row]) for row in idx]
    assert out["lo"] == pytest.approx(np.quantile(naive, 0.025)) and out["hi"] == pytest.approx(np.quantile(naive, 0.975))
    assert out["lo"] < out["diff"] < out["hi"]
    # a noisy null difference is not significant; the interval holds 0
    assert out["p"] > 0.05 and out["lo"] < 0 < out["hi"]


def test_seed_interval_is_the_t_interval():
    out = seed_interval([1.0, 2.0, 3.0])
    half = 4.3027 * 1.0 / math.sqrt(3)
    assert out["mean"] == 2.0 and out["lo"] == pytest.approx(2 - half) and out["hi"] == pytest.approx(2 + half)
    with pytest.raises(ValueError, match="2 seeds"):
        seed_interval([1.0])


# ---------------------------------------------------------------- list-level exposure (DGU, MGU, coverage, Gini, tail share)

COUNTS = np.array([40, 30, 20, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 1], dtype=float)  # 16 items, two never seen


def _lists(seed: int, rows: int = 60, head: bool = False) -> list[list[int]]:
    """Lists of 5 ids with an invalid or a repeated id now and then; ``head``: drawn from the 4 most popular items mostly."""
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(16) < 4, 6.0, 1.0) if head else np.ones(16)
    out = [[int(i) for i in rng.choice(16, size=5, replace=False, p=p / p.sum())] for _ in range(rows)]
    for row in out[::7]:
        row[-1] = -1
    for row in out[1::11]:
        row[0] = row[1]  # a repeated id counts twice, as in evaluate's exposure
    return out


def _metrics(ranked):
    m = evaluate(ranked, [0] * len(ranked), COUNTS, ks=(1,), n_groups=4)
    return {k: m[k] for k in EXPOSURE_KEYS}


def test_exposure_metrics_of_any_rows_equal_evaluate_on_them():
    ranked = _lists(0)
    e = row_exposure(ranked, 16)
    assert e.shape == (60, 16) and e.sum() == sum(1 for row in ranked for i in row if i >= 0)
    for rows in (range(60), [3, 3, 10, 41, 59, 7]):  # every row, and a subset with a row drawn twice
        got = exposure_metrics(e[list(rows)].sum(0), COUNTS, n_groups=4)
        want = _metrics([ranked[r] for r in rows])
        for key in EXPOSURE_KEYS:
            assert float(got[key]) == pytest.approx(want[key], abs=1e-12), key
    batch = exposure_metrics(np.stack([e[:30].sum(0), e[30:].sum(0)]), COUNTS, n_groups=4)  # vectorised over resamples
    for key in EXPOSURE_KEYS:
        assert batch[key] == pytest.approx([_metrics(ranked[:30])[key], _metrics(ranked[30:])[key]], abs=1e-12)


def test_identical_lists_differ_by_zero_in_exposure_with_p_one():
    ranked = _lists(1)
    out = paired_exposure_difference(ranked, ranked, COUNTS, n_groups=4)
    assert out == {k: {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0} for k in EXPOSURE_KEYS}


def test_the_exposure_bootstrap_and_swap_test_equal_a_naive_loop():
    a, b = _lists(2, head=True), _lists(3)
    out = paired_exposure_difference(a, b, COUNTS, resamples=200, seed=5, n_groups=4, chunk=64)
    rng = np.random.default_rng(5)  # the same draws, then every resample's lists rebuilt and scored one by one
    times = rng.multinomial(60, np.full(60, 1 / 60), size=200)
    swap = rng.random((200, 60)) < 0.5
    boot, null = [], []
    for t, s in zip(times, swap):
        rows = [u for u in range(60) for _ in range(t[u])]
        ma, mb = _metrics([a[u] for u in rows]), _metrics([b[u] for u in rows])
        boot.append({k: ma[k] - mb[k] for k in EXPOSURE_KEYS})
        sa = _metrics([b[u] if s[u] else a[u] for u in range(60)])
        sb = _metrics([a[u] if s[u] else b[u] for u in range(60)])
        null.append({k: abs(sa[k] - sb[k]) for k in EXPOSURE_KEYS})
    full_a, full_b = _metrics(a), _metrics(b)
    for k in EXPOSURE_KEYS:
        assert out[k]["diff"] == pytest.approx(full_a[k] - full_b[k], abs=1e-12), k
        assert out[k]["lo"] == pytest.approx(np.quantile([x[k] for x in boot], 0.025)), k
        assert out[k]["hi"] == pytest.approx(np.quantile([x[k] for x in boot], 0.975)), k
        assert out[k]["p"] == pytest.approx((1 + sum(x[k] >= abs(out[k]["diff"]) - 1e-12 for x in null)) / 201), k


def test_lists_blind_to_popularity_have_a_resolved_higher_dgu_and_tail_share():
    """The head items hold 68% of the counts: uniform lists under-expose them (a large group gap, DGU) and put more
    slots on the tail than lists that favour them."""
    out = paired_exposure_difference(_lists(4, rows=200), _lists(5, rows=200, head=True), COUNTS, n_groups=4)
    for key in ("dgu", "tail_share"):
        assert 0 < out[key]["lo"] < out[key]["diff"] < out[key]["hi"] and out[key]["p"] < 0.01, key
    with pytest.raises(ValueError, match="word_entropy"):
        paired_exposure_difference(_lists(4), _lists(5), COUNTS, keys=["dgu", "word_entropy"], n_groups=4)
