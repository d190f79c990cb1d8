"""Item rewards, personalised rewards as exact per-user flows, and trajectory rewards."""
import math

import numpy as np
import pytest
import torch

from flower_lite.rewards import (
    div_s_scores,
    log_popularity,
    minmax_scores,
    mix_uniform,
    path_rewards,
    personalised_log_rewards,
    popularity_rewards,
    reference_token_log_rewards,
)
from flower_lite.trie import Trie

EOS = 0
SEQS = [[1, 2], [1, 3], [1, 2, 4], [5]]
COUNTS = np.array([6.0, 3.0, 1.0, 10.0])


def test_popularity_exponent_and_uniform_mix():
    assert popularity_rewards(COUNTS, alpha=0.0).tolist() == [1.0] * 4
    assert popularity_rewards(COUNTS, alpha=1.0).tolist() == COUNTS.tolist()
    assert popularity_rewards([0.0, 3.0], alpha=0.5, eps=1.0).tolist() == pytest.approx([1.0, 2.0])
    head = [popularity_rewards(COUNTS, a)[3] / popularity_rewards(COUNTS, a).sum() for a in (0.0, 0.5, 1.0, 2.0)]
    assert head == sorted(head)  # a larger exponent gives the most popular item more mass
    assert mix_uniform(COUNTS, 1.0).tolist() == [0.25] * 4
    assert mix_uniform(COUNTS, 0.0).tolist() == pytest.approx((COUNTS / 20).tolist())
    assert log_popularity(COUNTS).exp().sum().item() == pytest.approx(1.0)
    flat = log_popularity(COUNTS, eps=1.0, alpha=0.5).exp()  # p_pop ∝ (c + 1) ** 0.5, flatter than alpha = 1
    assert flat.tolist() == pytest.approx((np.sqrt(COUNTS + 1) / np.sqrt(COUNTS + 1).sum()).tolist())
    assert log_popularity(COUNTS, alpha=0.0).exp().tolist() == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError, match="counts"):
        popularity_rewards([1.0, -1.0])
    with pytest.raises(ValueError, match="beta"):
        mix_uniform(COUNTS, 1.5)


def test_div_s_and_add_log_s_closed_form():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    s = div_s_scores(p)
    assert s[0].tolist() == pytest.approx([(x - 0.25) / 0.3 + 1 for x in (0.1, 0.2, 0.3, 0.4)])
    assert minmax_scores(p)[0].tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    log_pop = log_popularity(COUNTS)
    got = personalised_log_rewards(p, log_pop, "div_s")
    torch.testing.assert_close(got[0], log_pop / s[0])
    add = personalised_log_rewards(p, log_pop, "add_log_s", score_weight=1.0, min_score=1e-6)
    torch.testing.assert_close(add[0], log_pop + minmax_scores(p)[0].clamp_min(1e-6).log())
    torch.testing.assert_close(personalised_log_rewards(p, log_pop, "logp")[0], log_pop)
    # a user who prefers item 3 gives it more reward than the popularity prior does
    assert got[0, 3] - torch.logsumexp(got[0], 0) > log_pop[3]
    with pytest.raises(ValueError, match="unknown reward variant"):
        personalised_log_rewards(p, log_pop, "nope")


def test_constant_preferences_fall_back_to_popularity():
    p = torch.full((1, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(personalised_log_rewards(p, log_popularity(COUNTS), "div_s")[0], log_popularity(COUNTS))


def padded(seqs):
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [0] * (width - len(s)) for s in seqs]), torch.tensor([len(s) for s in seqs])


def test_per_user_path_rewards_telescope_and_depend_only_on_the_state():
    trie = Trie.from_sequences(SEQS, COUNTS, eos_id=EOS)
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]], dtype=torch.float64)
    log_r_u = personalised_log_rewards(p, log_popularity(COUNTS), "div_s")
    # every user walks every item: rows are (user, item)
    users = torch.arange(2).repeat_interleave(4)
    tokens, lengths = padded([SEQS[i] for i in range(4)] * 2)
    rewards = path_rewards(trie, tokens, lengths, log_rewards=log_r_u[users])
    total = rewards.log_r_path.sum(dim=1)  # sum of log r along the path, T included
    expected = (log_r_u - torch.logsumexp(log_r_u, dim=1, keepdim=True))[users, torch.arange(4).repeat(2)]
    torch.testing.assert_close(total, expected)
    # the shared prefix [1] gets one reward per user, whichever item the trajectory ends in
    first = rewards.log_r_action[:, 0].view(2, 4)
    assert torch.allclose(first[:, :3], first[:, :1].expand(2, 3))
    # the reference's form makes the same prefix depend on the end item: not a flow
    pop = path_rewards(trie, tokens[:4], lengths[:4])
    ref = reference_token_log_rewards(pop.log_r_action, tokens[:4] > 0, div_s_scores(p)[0], "div_s")
    assert not torch.allclose(ref[:3, 0], ref[:1, 0].expand(3))


def test_stop_rewards_of_flowers_objective():
    trie = Trie.from_sequences(SEQS, COUNTS, eos_id=EOS)
    tokens, lengths = padded([[1, 2, 4], [1]])
    r = path_rewards(trie, tokens, lengths, penalty=-15.0)
    z = COUNTS.sum()
    # s_0 = root and s_1 = [1] are incomplete: log F(s)/Z - 15; s_2 = [1, 2] is the title of item 0
    assert r.log_stop_reward[0].tolist()[:4] == pytest.approx(
        [-15.0, math.log(10 / z) - 15, math.log(6 / z), math.log(1 / z)]
    )
    assert r.log_r_stop[0, 2].item() == pytest.approx(math.log(6 / 7))
    assert r.log_r_stop[0, 1].item() == -math.inf
    assert r.log_stop_reward[1, 2].item() == -math.inf  # past the end of trajectory 1
    with pytest.raises(ValueError, match="leaves the trie"):
        path_rewards(trie, torch.tensor([[1, 9]]), torch.tensor([2]))
