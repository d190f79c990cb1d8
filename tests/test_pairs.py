"""Rejected-item samplers of the preference pairs: never the target, the stated distributions."""
import numpy as np
import pytest

from flower_lite.pairs import popularity_negatives, uniform_negatives


def test_popularity_negatives_follow_the_counts_without_the_target():
    counts = np.array([50.0, 30.0, 0.0, 15.0, 5.0])
    rng = np.random.default_rng(0)
    n = 200_000
    for target in range(5):
        drawn = popularity_negatives(np.full(n, target), counts, rng)
        assert (drawn != target).all() and (drawn != 2).all()  # never the target, never a zero count
        expected = counts.copy()
        expected[target] = 0
        expected /= expected.sum()
        freq = np.bincount(drawn, minlength=5) / n
        assert np.abs(freq - expected).max() < 0.005, (target, freq, expected)


def test_popularity_negatives_refuse_a_lonely_target():
    with pytest.raises(ValueError, match="only item"):
        popularity_negatives(np.array([1]), np.array([0.0, 3.0, 0.0]), np.random.default_rng(0))


def test_uniform_negatives_are_distinct_uniform_and_never_the_target():
    rng = np.random.default_rng(1)
    targets = np.array([0, 3, 3, 6] * 20_000)
    neg = uniform_negatives(targets, 7, 3, rng)
    assert neg.shape == (len(targets), 3)
    assert (neg != targets[:, None]).all()
    assert (np.sort(neg, axis=1)[:, 1:] != np.sort(neg, axis=1)[:, :-1]).all()  # distinct within a row
    rows = neg[targets == 3]
    freq = np.bincount(rows.ravel(), minlength=7) / rows.size
    assert freq[3] == 0 and np.abs(np.delete(freq, 3) - 1 / 6).max() < 0.005
    with pytest.raises(ValueError, match="k must be"):
        uniform_negatives(targets, 7, 7, rng)


def test_popularity_pairs_prefer_the_more_popular_title_uniformly():
    from flower_lite.pairs import popularity_pairs

    counts = np.array([5.0, 1.0, 9.0, 1.0, 5.0, 3.0])
    chosen, rejected = popularity_pairs(counts, 120_000, np.random.default_rng(2))
    assert (counts[rejected] < counts[chosen]).all()
    assert set(chosen.tolist()) == {0, 2, 4, 5}  # the two least popular titles are never chosen
    freq = np.bincount(chosen, minlength=6) / chosen.size
    assert np.abs(freq[[0, 2, 4, 5]] - 0.25).max() < 0.005
    below_9 = rejected[chosen == 2]  # every title less popular than 9: uniformly
    assert np.abs(np.bincount(below_9, minlength=6)[[0, 1, 3, 4, 5]] / below_9.size - 0.2).max() < 0.01
    with pytest.raises(ValueError, match="same count"):
        popularity_pairs(np.ones(4), 3, np.random.default_rng(0))
