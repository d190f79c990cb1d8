"""Paired per-row differences and seed intervals (docs/method.md 8b), against closed forms and a naive loop."""
import math

import numpy as np
import pytest

from flower_lite.metrics import hit_at_k, ndcg_at_k, paired_difference, per_row_gains, seed_interval


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
