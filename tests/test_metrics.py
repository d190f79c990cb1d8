"""Tests of flower_lite.metrics: hand-computed values, properties, naive-loop references."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flower_lite import metrics as M

LN2 = math.log(2.0)

# ---------------------------------------------------------------- strategies

_w = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)


@st.composite
def dist_pair(draw):
    n = draw(st.integers(1, 12))
    p = draw(st.lists(_w, min_size=n, max_size=n))
    q = draw(st.lists(_w, min_size=n, max_size=n))
    assume(sum(p) > 1e-6 and sum(q) > 1e-6)
    return np.array(p), np.array(q)


weights = st.lists(_w, min_size=1, max_size=15).filter(lambda x: sum(x) > 1e-6)


# ---------------------------------------------------------------- naive references

def naive_kl(p, q, eps=1e-12):
    sp, sq = sum(p), sum(q)
    out = 0.0
    for a, b in zip(p, q):
        a, b = a / sp, max(b / sq, eps)
        if a > 0:
            out += a * math.log(a / b)
    return out


def naive_js(p, q):
    sp, sq = sum(p), sum(q)
    out = 0.0
    for a, b in zip(p, q):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        if a > 0:
            out += 0.5 * a * math.log(a / m)
        if b > 0:
            out += 0.5 * b * math.log(b / m)
    return out


def naive_gini(x):
    """Gini as mean absolute difference / (2 * mean); equals the sorted formula."""
    n, mean = len(x), sum(x) / len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


def naive_group_unfairness(ranked, counts, n_groups):
    items = sorted((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    q, r = divmod(len(items), n_groups)
    group, start = {}, 0
    for g in range(n_groups):
        size = q + (1 if g < r else 0)
        for i in items[start:start + size]:
            group[i] = g
        start += size
    total = sum(counts)
    gp_data = [0.0] * n_groups
    for i, g in group.items():
        gp_data[g] += counts[i] / total
    hits, n_slots = [0] * n_groups, 0
    for row in ranked:
        for i in row:
            if i in group:
                hits[group[i]] += 1
                n_slots += 1
    gu = [hits[g] / n_slots - gp_data[g] for g in range(n_groups)]
    return max(gu) - min(gu), sum(abs(v) for v in gu) / n_groups, gu


# ---------------------------------------------------------------- distributions: closed forms

def test_kl_closed_form():
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)  # 0.5 ln(.5/.25) + 0.5 ln(.5/.75)
    assert M.kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert M.kl_divergence([1, 1], [1, 3]) == pytest.approx(expected)  # normalised inside
    assert M.kl_divergence([1, 0], [0.5, 0.5]) == pytest.approx(LN2)  # 0 log 0 = 0


def test_kl_self_is_zero_and_eps_clip():
    p = np.array([0.1, 0.2, 0.7])
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    # q = 0 where p > 0: q clipped at eps -> 0.5 ln(0.5 / 1) + 0.5 ln(0.5 / eps), finite
    eps = 1e-12
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / eps)
    assert M.kl_divergence([0.5, 0.5], [1.0, 0.0], eps=eps) == pytest.approx(expected)


def test_js_closed_form():
    assert M.js_divergence([1, 0], [0, 1]) == pytest.approx(LN2)
    assert M.js_divergence([0.3, 0.7], [3, 7]) == pytest.approx(0.0, abs=1e-15)
    # M = [3/4, 1/4]; KL(P||M) = ln(4/3); KL(Q||M) = 0.5 ln(2/3) + 0.5 ln 2
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * LN2
    assert M.js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(expected)


def test_tv_entropy_support():
    assert M.total_variation([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25)
    assert M.total_variation([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))
    assert M.entropy([0.5, 0.25, 0.25, 0]) == pytest.approx(1.5 * LN2)
    assert M.entropy([0, 3]) == 0.0
    assert M.support_size([0.5, 0.3, 0.2, 0]) == 3
    assert M.support_size([5, 3, 2, 0], threshold=0.25) == 2


def test_with_invalid_bucket():
    p, q = M.with_invalid_bucket([1, 1], [3, 1], 4)
    np.testing.assert_array_equal(p, [1, 1, 0])
    np.testing.assert_array_equal(q, [3, 1, 4])
    # KL(P||Q) with Q = [3/8, 1/8, 1/2]: 0.5 ln(0.5/(3/8)) + 0.5 ln(0.5/(1/8))
    assert M.kl_divergence(p, q) == pytest.approx(0.5 * math.log(4 / 3) + 0.5 * math.log(4))
    assert M.total_variation(p, q) == pytest.approx(0.5 * (1 / 8 + 3 / 8 + 1 / 2))


# ---------------------------------------------------------------- distributions: properties

@settings(max_examples=100, deadline=None)
@given(dist_pair())
def test_divergence_properties_and_naive(pq):
    p, q = pq
    kl = M.kl_divergence(p, q)
    js = M.js_divergence(p, q)
    tv = M.total_variation(p, q)
    assert kl >= -1e-12
    assert kl == pytest.approx(naive_kl(p, q), rel=1e-9, abs=1e-12)
    assert 0.0 <= js <= LN2
    assert js == pytest.approx(M.js_divergence(q, p), rel=1e-9, abs=1e-12)
    assert js == pytest.approx(min(max(naive_js(p, q), 0.0), LN2), rel=1e-9, abs=1e-12)
    assert 0.0 <= tv <= 1.0 + 1e-12
    assert tv == pytest.approx(M.total_variation(q, p))
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    h = M.entropy(p)
    assert -1e-12 <= h <= math.log(len(p)) + 1e-9


# ---------------------------------------------------------------- exposure

def test_gini_closed_forms():
    assert M.gini([3, 3, 3, 3]) == pytest.approx(0.0)
    for n in (1, 2, 5, 10):
        one_hot = np.zeros(n)
        one_hot[n // 2] = 7.0
        assert M.gini(one_hot) == pytest.approx((n - 1) / n)
    # sorted formula: (-2*1 + 0*2 + 2*3) / (3 * 6) = 2/9
    assert M.gini([3, 1, 2]) == pytest.approx(2 / 9)


@settings(max_examples=100, deadline=None)
@given(weights)
def test_gini_equals_naive(x):
    g = M.gini(x)
    assert g == pytest.approx(naive_gini(x), rel=1e-9, abs=1e-12)
    assert -1e-12 <= g <= (len(x) - 1) / len(x) + 1e-12


def test_tail_share():
    # counts order: item0 (10), item2 (5), item3 (5, tie -> larger id later), item1, item4
    # head = round(0.4 * 5) = 2 items = {0, 2}: head weight 5 + 1 = 6 of 10
    assert M.tail_share([5, 3, 1, 1, 0], [10, 1, 5, 5, 0], head_fraction=0.4) == pytest.approx(0.4)
    # tie broken by id: head = {2} (not 3)
    assert M.tail_share([0, 0, 1, 3], [0, 0, 5, 5], head_fraction=0.25) == pytest.approx(0.75)
    assert M.tail_share([1, 2], [1, 2], head_fraction=0.0) == pytest.approx(1.0)
    assert M.tail_share([1, 2], [1, 2], head_fraction=1.0) == pytest.approx(0.0)


def test_coverage_and_invalid():
    ranked = [[1, 2, 3], [3, 4, -1], [7]]
    assert M.coverage(ranked) == 6  # ids 1, 2, 3, 4, -1, 7
    assert M.coverage(ranked, num_items=5) == 4  # ids 1, 2, 3, 4
    assert M.invalid_count(ranked, num_items=5) == 2  # -1 and 7
    assert M.invalid_count([[0, 1]], num_items=2) == 0


# ---------------------------------------------------------------- HR / NDCG

RANKED = [[5, 3, 7], [1, 2, 3], [9, 8, 7], [4, 4, 6]]
TARGETS = [3, 1, 0, 4]  # ranks 1, 0, absent, 0 (first occurrence)


def test_hit_ndcg_hand():
    assert M.hit_at_k(RANKED, TARGETS, 1) == pytest.approx(2 / 4)
    assert M.hit_at_k(RANKED, TARGETS, 2) == pytest.approx(3 / 4)
    assert M.hit_at_k(RANKED, TARGETS, 20) == pytest.approx(3 / 4)  # K beyond list length
    assert M.ndcg_at_k(RANKED, TARGETS, 1) == pytest.approx(2 / 4)
    expected = (1 / math.log2(3) + 1 + 0 + 1) / 4
    assert M.ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx(expected)
    assert M.ndcg_at_k(RANKED, TARGETS, 20) == pytest.approx(expected)
    two_d = np.array([[1, 2], [3, 4]])  # a 2-D array of ids works too
    assert M.ndcg_at_k(two_d, np.array([2, 4]), 5) == pytest.approx(1 / math.log2(3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(-1, 6), max_size=6), st.integers(0, 6)),
                min_size=1, max_size=8),
       st.integers(1, 8))
def test_hit_ndcg_equal_naive(rows, k):
    ranked, targets = [r for r, _ in rows], [t for _, t in rows]
    hr = nd = 0.0
    for row, t in rows:
        for pos, item in enumerate(row):
            if item == t:
                if pos < k:
                    hr += 1
                    nd += 1 / math.log2(pos + 2)
                break
    assert M.hit_at_k(ranked, targets, k) == pytest.approx(hr / len(rows))
    assert M.ndcg_at_k(ranked, targets, k) == pytest.approx(nd / len(rows))


# ---------------------------------------------------------------- group unfairness

def test_group_unfairness_hand_8_items():
    counts = np.arange(8, 0, -1)  # item i has count 8 - i; total 36; one item per group
    ranked = [[0, 0, 1], [7, -1, 99]]  # in-group slots: 0, 0, 1, 7
    out = M.group_unfairness(ranked, counts, n_groups=8)
    np.testing.assert_allclose(out["gp_data"], np.arange(8, 0, -1) / 36)
    np.testing.assert_allclose(out["gp_rec"], [0.5, 0.25, 0, 0, 0, 0, 0, 0.25])
    np.testing.assert_allclose(out["gu"], np.array([10, 2, -6, -5, -4, -3, -2, 8]) / 36)
    assert out["dgu"] == pytest.approx(16 / 36)
    assert out["mgu"] == pytest.approx(40 / 36 / 8)


def test_group_unfairness_zero_count_and_ties():
    # positive items by count: 0 (3), 3 (2), 2 (1) -> groups [0, 3], [2]; item 1 is in no group
    out = M.group_unfairness([[1, 2, 2, 0]], [3, 0, 1, 2], n_groups=2)
    np.testing.assert_allclose(out["gp_data"], [5 / 6, 1 / 6])
    np.testing.assert_allclose(out["gp_rec"], [1 / 3, 2 / 3])
    assert out["dgu"] == pytest.approx(1.0)
    assert out["mgu"] == pytest.approx(0.5)
    # equal counts: ties by id -> groups [0, 1], [2, 3]
    out = M.group_unfairness([[0, 1, 1, 2]], [1, 1, 1, 1], n_groups=2)
    np.testing.assert_allclose(out["gp_rec"], [0.75, 0.25])
    # no in-group slot: shares undefined
    out = M.group_unfairness([[-1, 9]], [1, 1], n_groups=2)
    assert np.isnan(out["gp_rec"]).all() and math.isnan(out["dgu"]) and math.isnan(out["mgu"])


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_group_unfairness_equals_naive(data):
    n = data.draw(st.integers(1, 20))
    counts = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    n_pos = sum(c > 0 for c in counts)
    assume(n_pos >= 1)
    n_groups = data.draw(st.integers(1, n_pos))
    ranked = data.draw(st.lists(st.lists(st.integers(-1, n), max_size=5), min_size=1, max_size=6))
    in_group = [i for row in ranked for i in row if 0 <= i < n and counts[i] > 0]
    assume(in_group)
    out = M.group_unfairness(ranked, counts, n_groups)
    dgu, mgu, gu = naive_group_unfairness(ranked, counts, n_groups)
    assert out["dgu"] == pytest.approx(dgu, abs=1e-12)
    assert out["mgu"] == pytest.approx(mgu, abs=1e-12)
    np.testing.assert_allclose(out["gu"], gu, atol=1e-12)
    assert out["gp_data"].sum() == pytest.approx(1.0)
    assert out["gp_rec"].sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- titles

def test_word_entropy_and_ttr():
    titles = ["a b", "a c"]  # words a, b, a, c: frequencies 1/2, 1/4, 1/4
    assert M.word_entropy(titles) == pytest.approx(1.5)  # bits
    assert M.word_entropy(titles, base=math.e) == pytest.approx(1.5 * LN2)
    assert M.type_token_ratio(titles) == pytest.approx(3 / 4)
    assert M.word_entropy(["x x"]) == 0.0


# ---------------------------------------------------------------- evaluate

def test_evaluate():
    counts = np.arange(8, 0, -1)
    titles = [f"game {i}" for i in range(8)]
    ranked = [[0, 1, 2], [3, 0, -1]]
    targets = [1, 5]
    out = M.evaluate(ranked, targets, counts, titles=titles, ks=(1, 2, 5))
    expected_keys = {"hit@1", "ndcg@1", "hit@2", "ndcg@2", "hit@5", "ndcg@5", "dgu", "mgu",
                     "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid"}
    assert set(out) == expected_keys
    assert out["hit@1"] == 0.0 and out["hit@2"] == pytest.approx(0.5)
    assert out["ndcg@5"] == pytest.approx(0.5 / math.log2(3))
    gu = M.group_unfairness(ranked, counts)
    assert out["dgu"] == gu["dgu"] and out["mgu"] == gu["mgu"]
    assert out["coverage"] == 4 and out["invalid"] == 1
    exposure = [2, 1, 1, 1, 0, 0, 0, 0]
    assert out["gini"] == pytest.approx(M.gini(exposure))
    # head = round(0.2 * 8) = 2 items {0, 1}: head exposure 3 of 5
    assert out["tail_share"] == pytest.approx(2 / 5)
    # words: game x5, "0" x2, "1", "2", "3" -> 5/10, 2/10, 1/10 x3
    f = np.array([5, 2, 1, 1, 1]) / 10
    assert out["word_entropy"] == pytest.approx(-(f * np.log2(f)).sum())
    assert out["ttr"] == pytest.approx(5 / 10)
    no_titles = M.evaluate(ranked, targets, counts)
    assert math.isnan(no_titles["word_entropy"]) and math.isnan(no_titles["ttr"])
    all_invalid = M.evaluate([[-1, 8]], [0], counts, titles=titles)
    assert all_invalid["invalid"] == 2 and all_invalid["coverage"] == 0
    assert math.isnan(all_invalid["gini"]) and math.isnan(all_invalid["dgu"])


# ---------------------------------------------------------------- every documented ValueError

@pytest.mark.parametrize("bad, msg", [
    ([0.5, -0.1], "negative"),
    ([0.5, float("nan")], "NaN"),
    ([0.5, float("inf")], "inf"),
    ([0.0, 0.0], "all zero"),
    ([], "empty"),
    ([[0.5, 0.5]], "1-D"),
])
def test_distribution_validation(bad, msg):
    for fn in (lambda x: M.kl_divergence(x, [1, 1]), lambda x: M.kl_divergence([1, 1], x),
               lambda x: M.js_divergence(x, [1, 1]), lambda x: M.total_variation([1, 1], x),
               M.entropy, M.support_size, M.gini):
        with pytest.raises(ValueError, match=msg):
            fn(bad)


def test_validation_errors():
    for fn in (M.kl_divergence, M.js_divergence, M.total_variation):
        with pytest.raises(ValueError, match="length mismatch"):
            fn([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="length mismatch"):
        M.with_invalid_bucket([1, 1], [1], 0.5)
    with pytest.raises(ValueError, match="invalid_mass"):
        M.with_invalid_bucket([1, 1], [1, 1], -0.5)
    with pytest.raises(ValueError, match="invalid_mass"):
        M.with_invalid_bucket([1, 1], [1, 1], float("nan"))
    with pytest.raises(ValueError, match="negative"):
        M.with_invalid_bucket([1, -1], [1, 1], 0.5)
    with pytest.raises(ValueError, match="length mismatch"):
        M.tail_share([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="head_fraction"):
        M.tail_share([1, 1], [1, 1], head_fraction=1.5)
    with pytest.raises(ValueError, match="all zero"):
        M.tail_share([0, 0], [1, 1])
    with pytest.raises(ValueError, match="negative"):
        M.tail_share([1, 1], [1, -1])
    with pytest.raises(ValueError, match="k must be"):
        M.hit_at_k([[1]], [1], 0)
    with pytest.raises(ValueError, match="length mismatch"):
        M.ndcg_at_k([[1], [2]], [1], 1)
    with pytest.raises(ValueError, match="ranked is empty"):
        M.hit_at_k([], [], 1)
    with pytest.raises(ValueError, match="ranked is empty"):
        M.coverage([])
    with pytest.raises(ValueError, match="n_groups"):
        M.group_unfairness([[0]], [1, 1, 0], n_groups=3)
    with pytest.raises(ValueError, match="n_groups"):
        M.group_unfairness([[0]], [1, 1], n_groups=0)
    with pytest.raises(ValueError, match="all zero"):
        M.group_unfairness([[0]], [0, 0])
    with pytest.raises(ValueError, match="no words"):
        M.word_entropy(["", "  "])
    with pytest.raises(ValueError, match="no words"):
        M.type_token_ratio([])
    with pytest.raises(ValueError, match="length mismatch"):
        M.evaluate([[0]], [0, 1], [1] * 8)
