"""Every loss: zero at the exact optimum, positive after a perturbation, vectorised == naive loop, gradients."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_lite import losses
from flower_lite.rewards import path_rewards, place_stop
from flower_lite.tabular import flow_optimum, stop_anywhere_optimum
from flower_lite.trie import Trie

EOS = 0
SEQS = [[1, 2], [1, 2, 3], [1, 4], [5], [1, 2], [1, 2, 3, 6, 7], [5, 5, 5]]
WEIGHTS = [1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.25]


def batch(seqs):
    width = max(len(s) for s in seqs)
    tokens = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    return tokens, torch.tensor([len(s) for s in seqs])


@pytest.fixture
def trie():
    return Trie.from_sequences(SEQS, WEIGHTS, eos_id=EOS)


def complete_batch():
    return batch([[1, 2], [1, 2, 3, 6, 7], [5], [1, 4], [5, 5, 5]])


def test_sft_at_flow_optimum_is_the_cross_entropy_of_the_target(trie):
    # At the flow optimum every complete title x has pi(x) = prod_t pi(a_t | s_t) pi(T | s_k) = R(x) / Z, so
    # SFT (-mean over the supervised tokens, T included, of log pi) is -sum_x log(R(x) / Z) / (sum_x (|x| + 1)).
    # The trie pools the two [1, 2] entries: R = 1 + 5; Z = 15.75.
    tokens, lengths = complete_batch()  # [1, 2], [1, 2, 3, 6, 7], [5], [1, 4], [5, 5, 5]
    rewards = [1.0 + 5.0, 0.5, 4.0, 3.0, 0.25]
    z = sum(WEIGHTS)
    expected = -sum(math.log(r / z) for r in rewards) / (3 + 6 + 2 + 3 + 4)
    policy = flow_optimum(trie)
    path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
    assert losses.sft_loss(path, mask).item() == pytest.approx(expected, rel=1e-12)
    # each token's own share: pi(5 | root) = F([5]) / Z = 4.25 / 15.75, pi(T | [5]) = 4 / 4.25
    assert path[2, :2].exp().tolist() == pytest.approx([4.25 / 15.75, 4.0 / 4.25], rel=1e-12)


def test_tb_db_zero_at_flow_optimum_and_positive_after_perturbation(trie):
    tokens, lengths = complete_batch()
    rewards = path_rewards(trie, tokens, lengths)
    log_r = rewards.log_stop_reward.gather(1, lengths[:, None])[:, 0] + trie.log_z  # log R(title)
    policy = flow_optimum(trie)

    def all_losses():
        path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
        return {
            "tb": losses.trajectory_balance_loss(path, mask, log_r, torch.tensor(trie.log_z, dtype=torch.float64)),
            "db": losses.detailed_balance_loss(path, rewards.log_r_path, mask),
            "db_n2": losses.detailed_balance_loss(path, rewards.log_r_path, mask, granularity=2),
        }

    for name, value in all_losses().items():
        assert value.item() == pytest.approx(0.0, abs=1e-20), name
    with torch.no_grad():
        policy.edge_logit[trie.node_of([1, 2, 3])] += 0.5
    for name, value in all_losses().items():
        assert value.item() > 1e-4, name


def test_sft_is_cross_entropy_and_minimised_by_the_target():
    # two complete titles with P = (0.25, 0.75): SFT on the target's expected counts is minimised at pi = P
    trie = Trie.from_sequences([[1], [2]], [1.0, 3.0], eos_id=EOS)
    tokens, lengths = batch([[1], [2]])
    weight = torch.tensor([1.0, 3.0])
    policy = flow_optimum(trie)
    path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
    got = losses.sft_loss(path, mask, weight)
    # tokens: (a, T) per title; log pi(T | title) = 0, so the loss is the entropy / 2 tokens
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert got.item() == pytest.approx(entropy / 2)
    with torch.no_grad():
        policy.edge_logit[trie.node_of([1])] += 0.3
    path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
    assert losses.sft_loss(path, mask, weight).item() > got.item() + 1e-4


@pytest.mark.parametrize("granularity", [1, 2, 100])
@pytest.mark.parametrize("normalisation", ["pairs", "sequence"])
def test_subtb_zero_at_stop_anywhere_optimum(trie, granularity, normalisation):
    tokens, lengths = batch([[1, 2], [1, 2, 3, 6, 7], [5], [1], [1, 2, 3, 6]])  # includes early stops
    rewards = path_rewards(trie, tokens, lengths, penalty=-15.0)
    policy = stop_anywhere_optimum(trie, penalty=-15.0)

    def loss():
        action, stop = policy.path_log_probs(tokens, lengths)
        return losses.subtrajectory_balance_loss(
            action, stop, rewards.log_stop_reward, lengths, subtb_lambda=0.7, granularity=granularity, normalisation=normalisation
        )

    assert loss().item() == pytest.approx(0.0, abs=1e-20)
    with torch.no_grad():
        policy.stop_logit[trie.node_of([1])] += 1.0  # [1] is not a title: an early stop
    assert loss().item() > 1e-6
    # the optimum samples titles exactly in proportion to R, up to O(exp(penalty)) invalid mass
    q, invalid = stop_anywhere_optimum(trie).title_distribution()
    assert 0 < invalid < 1e-5
    torch.testing.assert_close(q / q.sum(), trie.title_log_probs().exp())


def test_subtb_with_per_user_flows_is_zero_at_that_users_optimum(trie):
    """Per-user rewards (``path_rewards`` with a [batch, N] log R_u, the RQ2 path) give the same stop
    rewards as a trie re-weighted by R_u: the loss is 0 at user u's stop-anywhere optimum, > 0 at another's."""
    tokens, lengths = batch([[1, 2], [1, 2, 3, 6, 7], [5], [1], [1, 2, 3, 6]])
    log_r = torch.tensor([[5.0, 1.0, 0.5, 2.0, 9.0, 1.0, 3.0], [0.1, 4.0, 2.0, 0.2, 1.0, 6.0, 0.3]], dtype=torch.float64).log()

    def loss(user, policy_user):
        rewards = path_rewards(trie, tokens, lengths, log_r[user].expand(len(lengths), -1), penalty=-15.0)
        policy = stop_anywhere_optimum(trie.reweight(log_r[policy_user].exp()), penalty=-15.0)
        action, stop = policy.path_log_probs(tokens, lengths)
        return losses.subtrajectory_balance_loss(action, stop, rewards.log_stop_reward, lengths).item()

    assert loss(0, 0) == pytest.approx(0.0, abs=1e-18) and loss(1, 1) == pytest.approx(0.0, abs=1e-18)
    assert loss(0, 1) > 1e-3 and loss(1, 0) > 1e-3


def naive_subtb(action, stop, log_r, lengths, lam, n, normalisation):
    """Direct transcription of docs/method.md: sum over pairs i<j of supervised states of lam^(gap) (sum delta)^2."""
    total, count, per_seq = 0.0, 0, []
    for b in range(action.shape[0]):
        k = int(lengths[b])
        states = [t for t in range(k + 1) if t % n == 0 or t == k]
        delta = [
            log_r[b, t] + action[b, t] + stop[b, t + 1] - log_r[b, t + 1] - stop[b, t] for t in range(k)
        ]
        seq_total, seq_count = 0.0, 0
        for x, i in enumerate(states):
            for y in range(x + 1, len(states)):
                j = states[y]
                residual = sum(delta[i:j])
                seq_total += lam ** (y - x - 1) * residual**2
                seq_count += 1
        total, count = total + seq_total, count + seq_count
        if seq_count:
            per_seq.append(seq_total / seq_count)
    return total / count if normalisation == "pairs" else sum(per_seq) / len(per_seq)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 7), st.floats(0.1, 1.0), st.integers(1, 4),
    st.sampled_from(["pairs", "sequence"]), st.integers(0, 1000),
)
def test_vectorised_subtb_equals_naive_double_loop(batch_size, k_max, lam, n, normalisation, seed):
    g = torch.Generator().manual_seed(seed)
    action = torch.randn(batch_size, k_max, generator=g, dtype=torch.float64)
    stop = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    log_r = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, k_max + 1, (batch_size,), generator=g)
    got = losses.subtrajectory_balance_loss(action, stop, log_r, lengths, lam, n, normalisation)
    want = naive_subtb(action, stop, log_r, lengths, lam, n, normalisation)
    assert got.item() == pytest.approx(float(want), rel=1e-10, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 3), st.integers(0, 1000))
def test_vectorised_db_equals_naive_loop(batch_size, k_max, n, seed):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    log_r = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, k_max + 2, (batch_size,), generator=g)
    mask = torch.arange(k_max + 1)[None, :] < lengths[:, None]
    residuals = []
    for b in range(batch_size):
        k = int(lengths[b])
        cuts = [t for t in range(k + 1) if t % n == 0 or t == k]
        residuals += [float((log_pi[b, i:j] - log_r[b, i:j]).sum()) ** 2 for i, j in zip(cuts, cuts[1:])]
    got = losses.detailed_balance_loss(log_pi, log_r, mask, granularity=n)
    assert got.item() == pytest.approx(float(np.mean(residuals)), rel=1e-10, abs=1e-12)


def test_lambda_weights_long_pairs_down():
    action = torch.zeros(1, 3, dtype=torch.float64)
    stop = torch.zeros(1, 4, dtype=torch.float64)
    log_r = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)  # only state 3 is off
    lengths = torch.tensor([3])
    # pairs touching state 3: (2,3) w=1, (1,3) w=lam, (0,3) w=lam^2, residual 1 each; 6 pairs in all
    for lam in (1.0, 0.5):
        got = losses.subtrajectory_balance_loss(action, stop, log_r, lengths, subtb_lambda=lam)
        assert got.item() == pytest.approx((1 + lam + lam**2) / 6)


def test_gradients_flow_to_policy_and_log_z(trie):
    tokens, lengths = complete_batch()
    rewards = path_rewards(trie, tokens, lengths)
    policy = flow_optimum(trie)
    with torch.no_grad():
        policy.edge_logit.add_(0.1 * torch.randn(trie.num_nodes, dtype=torch.float64))
    log_z = torch.zeros((), dtype=torch.float64, requires_grad=True)
    path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
    log_r = rewards.log_stop_reward.gather(1, lengths[:, None])[:, 0]
    total = (
        losses.sft_loss(path, mask)
        + losses.trajectory_balance_loss(path, mask, log_r, log_z)
        + losses.detailed_balance_loss(path, rewards.log_r_path, mask)
    )
    total.backward()
    assert log_z.grad is not None and log_z.grad.abs() > 0
    assert torch.isfinite(policy.edge_logit.grad).all() and policy.edge_logit.grad.abs().sum() > 0


def test_subtb_gradients_are_finite_with_early_stops(trie):
    tokens, lengths = batch([[1, 2], [1], [5, 5]])
    rewards = path_rewards(trie, tokens, lengths)
    policy = stop_anywhere_optimum(trie)
    action, stop = policy.path_log_probs(tokens, lengths)
    losses.subtrajectory_balance_loss(action, stop + 0.1, rewards.log_stop_reward, lengths).backward()
    assert torch.isfinite(policy.edge_logit.grad).all() and torch.isfinite(policy.stop_logit.grad).all()
    assert policy.stop_logit.grad.abs().sum() > 0


def test_theta_mix_and_errors():
    assert losses.theta_mix(torch.tensor(2.0), torch.tensor(10.0), 0.995).item() == pytest.approx(0.995 * 2 + 0.005 * 10)
    with pytest.raises(ValueError, match="theta"):
        losses.theta_mix(torch.tensor(1.0), torch.tensor(1.0), 1.5)
    with pytest.raises(ValueError, match="normalisation"):
        losses.subtrajectory_balance_loss(torch.zeros(1, 1), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1]), normalisation="x")


# ---------------------------------------------------------------------------- objectives that condition the stop terms
def test_subtb_exact_and_distillation_zero_at_the_flow_optimum_and_positive_after_perturbation(trie):
    tokens, lengths = complete_batch()
    rewards = path_rewards(trie, tokens, lengths, children=True)
    policy = flow_optimum(trie)

    def both():
        path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
        log_edge, _ = policy.log_probs()
        children = log_edge[rewards.children.nodes.clamp_min(0)]
        return {"subtb_exact": losses.exact_subtb_loss(path, rewards.log_r_path, mask, subtb_lambda=0.6),
                "subtb_exact_n2": losses.exact_subtb_loss(path, rewards.log_r_path, mask, granularity=2, normalisation="sequence"),
                "distill": losses.flow_distillation_loss(children, rewards.children.log_r, rewards.children.mask)}

    for name, value in both().items():
        assert value.item() == pytest.approx(0.0, abs=1e-14), name
    with torch.no_grad():
        policy.edge_logit[trie.node_of([1, 2, 3])] += 0.5
    for name, value in both().items():
        assert value.item() > 1e-4, name


def test_distillation_supervises_children_no_trajectory_took():
    """Only the title [3] is visited. Moving mass between the root's other children, [1] and [2], keeps
    pi(3 | root): DB on the path stays 0, flow distillation sees the untaken children and is > 0."""
    trie = Trie.from_sequences([[1], [2], [3]], [1.0, 2.0, 3.0], eos_id=EOS)
    tokens, lengths = batch([[3]])
    rewards = path_rewards(trie, tokens, lengths, children=True)
    policy = flow_optimum(trie)
    one, two = trie.node_of([1]), trie.node_of([2])
    with torch.no_grad():
        a, b = policy.edge_logit[one].item(), policy.edge_logit[two].item()
        total = math.log(math.exp(a) + math.exp(b))
        policy.edge_logit[one] = a + 0.8
        policy.edge_logit[two] = math.log(math.exp(total) - math.exp(a + 0.8))  # same logsumexp of {1, 2}
    path, mask = place_stop(*policy.path_log_probs(tokens, lengths), lengths)
    assert losses.detailed_balance_loss(path, rewards.log_r_path, mask).item() == pytest.approx(0.0, abs=1e-20)
    kids = policy.log_probs()[0][rewards.children.nodes.clamp_min(0)]
    assert losses.flow_distillation_loss(kids, rewards.children.log_r, rewards.children.mask).item() > 1e-3


def test_calibrated_penalty_keeps_the_subtb_optimum(trie):
    """A penalty calibrated to the policy's own stop probabilities is still a valid SubTB reward: the loss
    is 0 at the stop-anywhere optimum of that penalty and > 0 at the -15 optimum."""
    tokens, lengths = batch([[1, 2], [1], [5, 5]])
    for penalty in (-21.4, -6.0):
        rewards = path_rewards(trie, tokens, lengths, penalty=penalty)
        for optimum, zero in ((penalty, True), (-15.0, False)):
            action, stop = stop_anywhere_optimum(trie, penalty=optimum).path_log_probs(tokens, lengths)
            value = losses.subtrajectory_balance_loss(action, stop, rewards.log_stop_reward, lengths).item()
            assert (value == pytest.approx(0.0, abs=1e-18)) if zero else value > 1.0, (penalty, optimum, value)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.floats(0.2, 1.0), st.integers(1, 3), st.sampled_from(["pairs", "sequence"]),
       st.integers(0, 1000))
def test_vectorised_exact_subtb_equals_naive_double_loop(batch_size, k_max, lam, n, normalisation, seed):
    g = torch.Generator().manual_seed(seed)
    log_pi = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    log_r = torch.randn(batch_size, k_max + 1, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, k_max + 2, (batch_size,), generator=g)  # path lengths, T included
    mask = torch.arange(k_max + 1)[None, :] < lengths[:, None]
    total, count, per_seq = 0.0, 0, []
    for b in range(batch_size):
        k = int(lengths[b])
        states = [t for t in range(k + 1) if t % n == 0 or t == k]
        seq_total = seq_count = 0
        for x in range(len(states)):
            for y in range(x + 1, len(states)):
                i, j = states[x], states[y]
                seq_total += lam ** (y - x - 1) * float((log_pi[b, i:j] - log_r[b, i:j]).sum()) ** 2
                seq_count += 1
        total, count = total + seq_total, count + seq_count
        per_seq.append(seq_total / seq_count)
    want = total / count if normalisation == "pairs" else sum(per_seq) / len(per_seq)
    got = losses.exact_subtb_loss(log_pi, log_r, mask, lam, n, normalisation)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(0, 1000))
def test_vectorised_distillation_equals_naive_loop(batch_size, states, children, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch_size, states, children, generator=g) < 0.7
    mask[0, 0, 0] = True
    log_pi = torch.log_softmax(torch.randn(batch_size, states, children, generator=g, dtype=torch.float64), -1)
    raw = torch.randn(batch_size, states, children, generator=g, dtype=torch.float64).masked_fill(~mask, -math.inf)
    log_r = torch.log_softmax(raw, -1)
    kls = []
    for b in range(batch_size):
        for s in range(states):
            if mask[b, s].any():
                kls.append(sum(math.exp(log_r[b, s, c]) * (log_r[b, s, c] - log_pi[b, s, c])
                               for c in range(children) if mask[b, s, c]))
    got = losses.flow_distillation_loss(log_pi, log_r, mask)
    assert got.item() == pytest.approx(float(np.mean(kls)), rel=1e-10, abs=1e-12)
