"""The trie: structure, exact flows, token rewards, batched operations and input errors."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_lite import trie as trie_module
from flower_lite.losses import chunk_boundaries
from flower_lite.range_sums import range_sums
from flower_lite.trie import Trie

EOS = 0


def naive_flows(seqs, weights):
    """Dict trie: prefix tuple (T included) -> F(prefix)."""
    flow = {(): 0.0}
    for s, w in zip(seqs, weights):
        path = tuple(s) + (EOS,)
        for k in range(len(path) + 1):
            flow[path[:k]] = flow.get(path[:k], 0.0) + w
    return flow


@st.composite
def catalogues(draw):
    """Random catalogues with shared prefixes, titles that prefix others, and duplicates."""
    n = draw(st.integers(1, 25))
    seqs = [draw(st.lists(st.integers(1, 6), min_size=1, max_size=6)) for _ in range(n)]
    if n > 1 and draw(st.booleans()):
        seqs.append(list(seqs[0]))  # a duplicate title
    if draw(st.booleans()):
        seqs.append(list(seqs[0]) + [draw(st.integers(1, 6))])  # a title that extends another
    weights = [draw(st.floats(0.01, 100.0)) for _ in seqs]
    return seqs, weights


@settings(max_examples=60, deadline=None)
@given(catalogues())
def test_flows_match_naive_dict_trie(cat):
    seqs, weights = cat
    trie = Trie.from_sequences(seqs, weights, eos_id=EOS)
    flow = naive_flows(seqs, weights)
    assert trie.num_nodes == len(flow)
    for prefix, f in flow.items():
        node = trie.node_of(prefix)
        assert node >= 0
        assert math.isclose(float(trie.log_flow[node].exp()), f, rel_tol=1e-9)
        items = sorted(trie.structure.item_order[int(trie.structure.lo[node]) : int(trie.structure.hi[node])].tolist())
        assert items == [i for i, s in enumerate(seqs) if tuple(s + [EOS])[: len(prefix)] == prefix]


@settings(max_examples=60, deadline=None)
@given(catalogues())
def test_children_sum_to_one_and_telescoping(cat):
    seqs, weights = cat
    trie = Trie.from_sequences(seqs, weights, eos_id=EOS)
    s = trie.structure
    # children of every non-terminal node: sum_a r(a|s) = 1
    for node in range(trie.num_nodes):
        lo, hi = int(s.child_lo[node]), int(s.child_hi[node])
        if hi > lo:
            total = (trie.log_flow[lo:hi] - trie.log_flow[node]).exp().sum()
            assert math.isclose(float(total), 1.0, rel_tol=1e-12)
        else:
            assert int(s.token[node]) == EOS  # only terminal nodes are leaves
    # product of r along every item path = F(title·T) / Z (= R(i) / Z without duplicates)
    z = sum(weights)
    for i, seq in enumerate(seqs):
        path = seq + [EOS]
        log_prod = sum(trie.log_token_reward(path[:k], path[k]) for k in range(len(path)))
        same = sum(w for s2, w in zip(seqs, weights) if s2 == seq)
        assert math.isclose(log_prod, math.log(same / z), abs_tol=1e-9)
        assert math.isclose(trie.item_log_prob(i), math.log(weights[i] / z), abs_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(catalogues(), st.integers(0, 10_000))
def test_batched_ops_equal_single_lookups(cat, seed):
    seqs, weights = cat
    trie = Trie.from_sequences(seqs, weights, eos_id=EOS)
    rng = np.random.default_rng(seed)
    tokens = torch.as_tensor(rng.integers(0, 7, size=(8, 5)))
    for b, i in enumerate(rng.integers(0, len(seqs), size=4)):  # half of the rows follow real paths
        path = (seqs[i] + [EOS])[:5]
        tokens[b, : len(path)] = torch.tensor(path)
    mask = torch.as_tensor(rng.random((8, 5)) < 0.9).cumprod(dim=1).bool()
    rewards = trie.log_token_rewards(tokens, mask)
    nodes = trie.walk(tokens, mask)
    allowed = trie.allowed_mask(nodes.flatten(), vocab_size=8).view(8, 6, 8)
    for b in range(8):
        for t in range(5):
            prefix = tokens[b, :t].tolist()
            node = trie.node_of(prefix) if bool(mask[b, :t].all()) else -1
            assert int(nodes[b, t]) == node
            expected = set(trie.allowed_tokens(prefix)) if node >= 0 else set()
            assert set(torch.nonzero(allowed[b, t]).flatten().tolist()) == expected
            if mask[b, t]:
                want = trie.log_token_reward(prefix, int(tokens[b, t])) if node >= 0 else -math.inf
                assert float(rewards[b, t]) == pytest.approx(want, abs=1e-12) or (want == -math.inf and rewards[b, t] == -math.inf)
            else:
                assert float(rewards[b, t]) == 0.0


@settings(max_examples=30, deadline=None)
@given(catalogues(), st.integers(0, 10_000))
def test_sorted_batch_lookups_equal_the_dict_trie(cat, seed):
    """Large batches are looked up in sorted key order and scattered back: every (state, token) pair,
    off-trie ones included (-1 states, tokens outside the vocabulary), in a shuffled 2-D batch."""
    seqs, weights = cat
    trie = Trie.from_sequences(seqs, weights, eos_id=EOS)
    edges = {(trie.node_of(p[:-1]), p[-1]): trie.node_of(p) for p in naive_flows(seqs, weights) if p}
    states, tokens = torch.meshgrid(torch.arange(-1, trie.num_nodes), torch.arange(-1, 9), indexing="ij")
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(states.numel()))
    states, tokens = states.flatten()[perm].view(-1, 2), tokens.flatten()[perm].view(-1, 2)
    before = trie_module.SORTED_LOOKUP_MIN
    trie_module.SORTED_LOOKUP_MIN = 1
    try:
        out = trie.child(states, tokens)
    finally:
        trie_module.SORTED_LOOKUP_MIN = before
    want = torch.tensor([edges.get((int(n), int(t)), -1) for n, t in zip(states.flatten(), tokens.flatten())]).view(-1, 2)
    assert torch.equal(out, want)
    assert torch.equal(out, trie.child(states, tokens))  # the unsorted path of small batches agrees


def test_prefix_title_and_duplicates_are_explicit():
    # items: "1 2", "1 2 3" (extends item 0), "4", "1 2" again (duplicate of item 0)
    trie = Trie.from_sequences([[1, 2], [1, 2, 3], [4], [1, 2]], [1.0, 2.0, 3.0, 4.0], eos_id=EOS)
    assert trie.allowed_tokens([1, 2]) == [EOS, 3]  # a complete title that also continues
    assert trie.terminal_nodes.numel() == 3  # three distinct titles
    assert trie.item_title[0] == trie.item_title[3] != trie.item_title[1]
    assert trie.log_token_reward([1, 2], EOS) == pytest.approx(math.log(5 / 7))
    assert trie.title_log_probs().exp().sum().item() == pytest.approx(1.0)
    assert sorted(trie.title_log_probs().exp().tolist()) == pytest.approx(sorted([5 / 10, 2 / 10, 3 / 10]))
    assert trie.item_log_prob(3) == pytest.approx(math.log(4 / 10))


def test_depth_first_ranges_give_per_user_flows():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 5, size=rng.integers(1, 5))) for _ in range(40)]
    trie = Trie.from_sequences(seqs, np.ones(40), eos_id=EOS)
    log_rewards = torch.as_tensor(rng.normal(size=(3, 40)) * 3)
    nodes = torch.arange(trie.num_nodes).expand(3, -1)
    batched = trie.batch_log_flows(log_rewards, nodes)
    for u in range(3):
        exact = trie.reweight(log_rewards[u].exp()).log_flow
        torch.testing.assert_close(batched[u], exact, rtol=1e-10, atol=1e-10)
    assert trie.batch_log_flows(log_rewards, torch.full((3, 2), -1))[0, 0] == -math.inf


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 100])
def test_range_sums_equal_exact_sums_over_a_huge_dynamic_range(n):
    """Every range [lo, hi) of non-negative values spread over 300 orders of magnitude: the segment
    tree's sum equals the correctly rounded sum (math.fsum) to a few roundings, empty ranges give 0."""
    rng = np.random.default_rng(n)
    values = 10.0 ** rng.uniform(-300, 0, size=(2, n)) * (rng.random((2, n)) > 0.1)
    lo, hi = np.triu_indices(n + 1)  # every 0 <= lo <= hi <= n
    got = range_sums(torch.as_tensor(values), torch.as_tensor(lo).expand(2, -1), torch.as_tensor(hi).expand(2, -1))
    want = np.array([[math.fsum(values[b, i:j]) for i, j in zip(lo, hi)] for b in range(2)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14, atol=0)
    assert (got.numpy()[:, lo == hi] == 0).all()


def test_per_user_flows_keep_the_relative_precision_of_tiny_flows():
    """A tail item with a reward 1e-30 of the others (last in depth-first order, where a cumulative
    sum's difference C[hi] - C[lo] would cancel to 0) gets its exact log flow, as bottom-up sums do."""
    seqs = [[1, 2], [1, 3], [2, 4], [3, 5, 6]]
    trie = Trie.from_sequences(seqs, np.ones(4), eos_id=EOS)
    log_rewards = torch.tensor([[0.0, 1.0, 2.0, math.log(1e-30)], [math.log(1e-200), 0.0, 0.0, 0.0]], dtype=torch.float64)
    nodes = torch.arange(trie.num_nodes).expand(2, -1)
    batched = trie.batch_log_flows(log_rewards, nodes)
    for u in range(2):
        exact = trie.reweight(log_rewards[u].exp()).log_flow
        torch.testing.assert_close(batched[u], exact, rtol=1e-14, atol=1e-12)
    tail = trie.terminal_nodes[trie.item_title[3]]
    assert batched[0, tail] == pytest.approx(math.log(1e-30), abs=1e-12)


def test_reweight_shares_structure():
    trie = Trie.from_sequences([[1], [2, 3], [2]], [1.0, 1.0, 1.0], eos_id=EOS)
    new = trie.reweight([1.0, 2.0, 5.0])
    assert new.structure is trie.structure
    assert new.log_z == pytest.approx(math.log(8))
    assert new.log_token_reward([2], 3) == pytest.approx(math.log(2 / 7))


def test_prefix_tokens_inverts_walk():
    seqs = [[5, 6, 7], [5, 8], [9]]
    trie = Trie.from_sequences(seqs, [1.0, 1.0, 1.0], eos_id=EOS)
    nodes = torch.tensor([trie.node_of(s) for s in seqs])
    tokens, lengths = trie.prefix_tokens(nodes)
    assert lengths.tolist() == [3, 2, 1]
    assert [tokens[i, : int(lengths[i])].tolist() for i in range(3)] == seqs


def test_chunk_boundaries():
    got = chunk_boundaries(torch.tensor([5, 2]), 6, n=2)
    assert got.int().tolist() == [[1, 0, 1, 0, 1, 1], [1, 0, 1, 0, 0, 0]]
    outcome_only = chunk_boundaries(torch.tensor([5]), 6, n=100)
    assert outcome_only.int().tolist() == [[1, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="granularity"):
        chunk_boundaries(torch.tensor([5]), 6, n=0)


@pytest.mark.parametrize(
    "seqs, weights, eos, message",
    [
        ([], [], 0, "no sequences"),
        ([[1], []], [1.0, 1.0], 0, "empty sequence for item 1"),
        ([[1, 0, 2]], [1.0], 0, "eos_id 0 occurs inside the sequence of item 0"),
        ([[1], [2]], [1.0], 0, "length mismatch"),
        ([[1], [2]], [1.0, -1.0], 0, "negative reward"),
        ([[1], [2]], [1.0, float("nan")], 0, "NaN reward"),
        ([[1], [2]], [1.0, float("inf")], 0, "infinite reward"),
        ([[1], [2]], [0.0, 0.0], 0, "all rewards are zero"),
        ([[1], [-2]], [1.0, 1.0], 0, "negative token"),
    ],
)
def test_bad_input_is_named(seqs, weights, eos, message):
    with pytest.raises(ValueError, match=message):
        Trie.from_sequences(seqs, weights, eos_id=eos)


def test_reweight_checks_weights():
    trie = Trie.from_sequences([[1], [2]], [1.0, 1.0], eos_id=EOS)
    with pytest.raises(ValueError, match="expected 2 rewards"):
        trie.reweight([1.0])
    with pytest.raises(ValueError, match="unknown item 5"):
        trie.item_log_prob(5)


def test_zero_reward_items_are_allowed_and_have_no_flow():
    trie = Trie.from_sequences([[1], [2]], [1.0, 0.0], eos_id=EOS)
    assert trie.log_token_reward([], 2) == -math.inf
    assert trie.log_token_reward([], 1) == 0.0


def test_token_rewards_below_a_zero_flow_state_are_minus_inf():
    trie = Trie.from_sequences([[1, 2], [3]], [0.0, 1.0], eos_id=EOS)
    rewards = trie.log_token_rewards(torch.tensor([[1, 2, EOS]]))
    assert rewards.tolist() == [[-math.inf, -math.inf, -math.inf]]


@settings(max_examples=40, deadline=None)
@given(catalogues(), st.integers(0, 10_000))
def test_child_edges_and_tree_sums_equal_naive_loops(cat, seed):
    """``child_edges``, ``children_of``, ``path_sums``, ``subtree_sums`` and ``segment_log_softmax`` against
    one Python loop over the nodes each."""
    seqs, weights = cat
    trie = Trie.from_sequences(seqs, weights, eos_id=EOS)
    s, n = trie.structure, trie.num_nodes
    gen = torch.Generator().manual_seed(seed)
    nodes = torch.randint(-1, n, (7,), generator=gen)
    kids = [list(range(int(s.child_lo[v]), int(s.child_hi[v]))) if v >= 0 else [] for v in nodes.tolist()]
    segment, edges = trie.child_edges(nodes)
    assert segment.tolist() == [b for b, k in enumerate(kids) for _ in k]
    assert edges.tolist() == [c for k in kids for c in k]
    padded, real = trie.children_of(nodes)
    assert [row[mask].tolist() for row, mask in zip(padded, real)] == kids
    assert (padded[~real] == -1).all()
    values = torch.randn(n, generator=gen, dtype=torch.float64)
    parent = s.parent.tolist()
    path_sums, subtree_sums = trie.path_sums(values), trie.subtree_sums(values)
    for v in range(n):
        on_path = [v] + _ancestors(parent, v)[:-1]  # the nodes whose incoming edge is on the path (not the root)
        assert math.isclose(float(path_sums[v]), float(values[on_path].sum()) if v else 0.0, abs_tol=1e-12)
        below = [w for w in range(n) if w == v or v in _ancestors(parent, w)]
        assert math.isclose(float(subtree_sums[v]), float(values[below].sum()), abs_tol=1e-9)
    log_q = trie_module.segment_log_softmax(values[edges], segment, nodes.numel())
    for b, k in enumerate(kids):
        if k:
            assert torch.allclose(log_q[segment == b], values[k].log_softmax(0), atol=1e-12)


def _ancestors(parent, node):
    """The proper ancestors of ``node``, up to the root."""
    out = []
    while parent[node] >= 0:
        node = parent[node]
        out.append(node)
    return out
