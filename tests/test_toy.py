"""The tabular policy and the toy fits on the embedded default catalogue."""
import numpy as np
import pytest
import torch

from flower_lite.data import load_default_catalog
from flower_lite.rewards import popularity_rewards
from flower_lite.tabular import TabularPolicy, flow_optimum
from flower_lite.tokenizer import WordTokenizer
from flower_lite.config import Objective
from flower_lite.toy import ToyConfig, compare_methods, draw_target_sample, fit_toy
from flower_lite.trie import Trie


@pytest.fixture(scope="module")
def default_trie():
    catalog = load_default_catalog()
    tok = WordTokenizer.fit(catalog.titles)
    return Trie.from_sequences([tok.encode(t) for t in catalog.titles], popularity_rewards(catalog.counts()), tok.eos_id)


def test_pushed_down_distribution_is_exact():
    trie = Trie.from_sequences([[1, 2], [1, 3], [4]], [1.0, 1.0, 1.0], eos_id=0)
    policy = TabularPolicy(trie, early_stop=True, init_std=0.5, seed=3)
    q, invalid = policy.title_distribution()
    assert q.sum().item() + invalid == pytest.approx(1.0)
    # by hand: enumerate every outcome from the per-edge probabilities
    log_edge, log_early = policy.log_probs()
    e = lambda prefix: float(log_edge[trie.node_of(prefix)].detach().exp())  # noqa: E731
    stop = lambda prefix: float(log_early[trie.node_of(prefix)].detach().exp())  # noqa: E731
    by_hand = {(1, 2): e([1]) * e([1, 2]) * e([1, 2, 0]), (1, 3): e([1]) * e([1, 3]) * e([1, 3, 0]), (4,): e([4]) * e([4, 0])}
    order = [trie.node_of(list(k) + [0]) for k in by_hand]
    got = dict(zip(trie.terminal_nodes.tolist(), q.tolist()))
    assert [got[n] for n in order] == pytest.approx(list(by_hand.values()))
    assert invalid == pytest.approx(stop([]) + e([1]) * stop([1]))


def test_sampling_matches_the_exact_distribution():
    trie = Trie.from_sequences([[1, 2], [1, 3], [4]], [1.0, 2.0, 5.0], eos_id=0)
    policy = flow_optimum(trie)
    tokens, lengths = policy.sample(20_000, torch.Generator().manual_seed(0))
    ends = trie.stop_child(trie.walk(tokens.clamp_min(0), tokens >= 0).gather(1, lengths[:, None])[:, 0])
    freq = torch.stack([(ends == n).float().mean() for n in trie.terminal_nodes])
    torch.testing.assert_close(freq.double(), trie.title_log_probs().exp(), atol=0.015, rtol=0)


def test_flower_fits_the_target_and_sft_on_a_finite_sample_does_not(default_trie):
    runs = compare_methods(default_trie, {"sft": ToyConfig(Objective("sft")), "flower": ToyConfig(Objective("subtb"))}, progress=False)
    kl = {name: run.final["kl"] for name, run in runs.items()}
    assert kl["flower"] <= 1e-3
    assert kl["sft"] > 0.05  # unseen titles get no mass: a broken SFT that copied the target would pass below
    # SFT learns the sample: its distribution matches the empirical frequencies of the 1000 titles
    sample = draw_target_sample(default_trie, 1000, 0)
    empirical = np.bincount(sample, minlength=default_trie.terminal_nodes.numel()) / 1000
    q, _ = runs["sft"].policy.title_distribution()
    assert np.abs(q.numpy() - empirical).sum() < 0.05


@pytest.mark.parametrize("loss", ["tb", "db"])
def test_tb_and_db_fit_the_target(default_trie, loss):
    run = fit_toy(default_trie, ToyConfig(Objective(loss), steps=300), progress=False)
    assert run.final["kl"] <= 1e-2
    assert run.history[0]["kl"] > 10 * run.final["kl"]


def test_fits_are_reproducible_by_seed(default_trie):
    cfg = ToyConfig(Objective("subtb"), steps=20, trajectories="catalog+on_policy", seed=4)
    a, b = fit_toy(default_trie, cfg, progress=False), fit_toy(default_trie, cfg, progress=False)
    assert a.history == b.history
    torch.testing.assert_close(a.policy.edge_logit, b.policy.edge_logit)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="unknown loss"):
        ToyConfig(Objective("ppo"))
    with pytest.raises(ValueError, match="unknown trajectories"):
        ToyConfig(trajectories="all")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        ToyConfig(steps=-5)
