"""The one objective (``flower_lite.objective``): both training loops call it and get the same loss.

A causal LM whose logits are a tabular policy's log-probabilities on the trie (``TabularLM``) is trained by
:class:`flower_lite.train.Trainer`; the tabular toy (:func:`flower_lite.toy.fit_toy`) trains the same policy.
On the same tiny trie and the same trajectories the two loops compute the same loss value for every objective.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flower_lite import losses
from flower_lite.config import Objective, ToyConfig, TrainConfig
from flower_lite.objective import PathLogProbs, objective_loss
from flower_lite.rewards import path_rewards
from flower_lite.tabular import TabularPolicy, flow_optimum
from flower_lite.toy import fit_toy
from flower_lite.train import FitData, Trainer
from flower_lite.trie import Trie

EOS, VOCAB = 0, 8
SEQS = [[1, 2], [1, 3], [4], [1, 2, 5], [6, 7]]  # [1, 2] is a prefix title of [1, 2, 5]
WEIGHTS = [3.0, 1.0, 2.0, 4.0, 0.5]
OBJECTIVES = [Objective("sft"), Objective("tb"), Objective("db"), Objective("subtb"), Objective("subtb", theta=0.9),
              Objective("db", theta=0.5), Objective("subtb", subtb_lambda=0.5, granularity=2, normalisation="sequence"),
              Objective("subtb_exact"), Objective("distill"), Objective("distill", theta=0.5), Objective("subtb", penalty=-21.4)]


class TabularLM(torch.nn.Module):
    """A causal LM whose next-token log-probabilities are those of a :class:`TabularPolicy` on the trie:
    the continuation after the prompt is walked on the trie, every allowed token gets its log pi, the rest -1e4."""

    def __init__(self, policy: TabularPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids, attention_mask, logits_to_keep, **_):
        trie = self.policy.trie
        log_edge, log_early = self.policy.log_probs()
        width = logits_to_keep - 1
        cont, mask = input_ids[:, input_ids.shape[1] - width:], attention_mask[:, attention_mask.shape[1] - width:].bool()
        states = trie.walk(cont, mask).clamp_min(0)  # [B, width + 1]
        tokens = torch.arange(VOCAB)
        child = trie.child(states[..., None].expand(-1, -1, VOCAB), tokens.expand(*states.shape, VOCAB))
        logits = torch.where(child >= 0, log_edge[child.clamp_min(0)], torch.tensor(-1e4, dtype=torch.float64))
        can_stop = (trie.stop_child(states) < 0) & self.policy.can_stop_early[states]
        logits[..., EOS] = torch.where(can_stop, log_early[states], logits[..., EOS])
        return SimpleNamespace(logits=logits)


class OneTokenPrompts:
    """The tokenizer interface the trainer uses for prompts: every prompt is one token."""

    pad_token_id, eos_token_id = EOS, EOS

    def __call__(self, text):
        return {"input_ids": [VOCAB - 1]}


@pytest.fixture
def trie():
    return Trie.from_sequences(SEQS, WEIGHTS, eos_id=EOS)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name + f" n={o.granularity}")
def test_the_toy_and_the_lm_trainer_compute_the_same_loss(trie, objective):
    """Every title once as the SFT data and as the GFlowNet trajectories, at step 0: the toy's own fresh
    policy, and a seeded random one (through the toy loop's loss on any policy, checked on the fresh one)."""
    titles = np.arange(int(trie.terminal_nodes.numel()))
    items = trie.title_first_item()[torch.as_tensor(titles)].numpy()
    data = FitData(["recommend"] * len(items), items)
    config = TrainConfig(objective=objective, trajectories="offline", batch_size=len(items), max_steps=1)

    def lm_loss(policy: TabularPolicy) -> tuple[float, dict]:
        trainer = Trainer(TabularLM(policy), OneTokenPrompts(), trie, config, data, progress=False)
        with torch.no_grad():
            trainer.log_z.fill_(-trie.log_z)  # the toy's TB starts at log Z_θ = 0, i.e. -log Z relative to the exact one
        loss, parts = trainer.loss(data, np.arange(len(items)))
        return loss.item(), parts

    toy = fit_toy(trie, ToyConfig(objective, steps=0), sample=titles, progress=False)
    fresh, parts = lm_loss(toy.policy)
    assert fresh == pytest.approx(toy.history[0]["loss"], rel=1e-6)
    assert toy.history[0]["loss"] == pytest.approx(_toy_step_loss(trie, objective, toy.policy, titles), rel=1e-12)
    random = TabularPolicy(trie, early_stop=objective.loss == "subtb", init_std=0.7, seed=5)
    assert lm_loss(random)[0] == pytest.approx(_toy_step_loss(trie, objective, random, titles), rel=1e-5)
    assert fresh > 1e-3 and set(parts) == ({"sft"} if objective.loss == "sft" else {"sft", "gfn"})


def _toy_step_loss(trie, objective, policy, titles) -> float:
    """The toy loop's loss of ``policy`` on every title (its ``fit_toy`` at step 0, for any policy)."""
    traj = trie.title_trajectories(torch.as_tensor(titles))
    paths = PathLogProbs(*policy.path_log_probs(traj.tokens, traj.lengths), traj.lengths)
    rewards = path_rewards(trie, traj.tokens, traj.lengths, penalty=objective.penalty, children=objective.loss == "distill")
    if rewards.children is not None:
        paths.children = policy.log_probs()[0][rewards.children.nodes.clamp_min(0)]
    log_z = torch.tensor(-trie.log_z, dtype=torch.float64)
    sft = paths if objective.sft_weight > 0 else None
    loss, _ = objective_loss(objective, sft, paths if objective.gfn else None, rewards if objective.gfn else None, log_z,
                             sft_weight=torch.ones(len(titles)))
    return loss.item()


def test_tb_outcome_reward_is_relative_to_the_exact_partition(trie):
    """log R~ at the title's end is log R(x) - log Z: TB is 0 at the flow optimum with log Z_θ = 0."""
    traj = trie.title_trajectories(torch.arange(int(trie.terminal_nodes.numel())))
    rewards = path_rewards(trie, traj.tokens, traj.lengths)
    torch.testing.assert_close(rewards.log_outcome, trie.title_log_probs(), rtol=0, atol=1e-12)
    policy = flow_optimum(trie)
    paths = PathLogProbs(*policy.path_log_probs(traj.tokens, traj.lengths), traj.lengths)
    zero, _ = objective_loss(Objective("tb"), None, paths, rewards, torch.tensor(0.0, dtype=torch.float64))
    assert zero.item() == pytest.approx(0.0, abs=1e-20)
    off, _ = objective_loss(Objective("tb"), None, paths, rewards, torch.tensor(0.3, dtype=torch.float64))
    assert off.item() == pytest.approx(0.09, rel=1e-9)


def test_theta_mixes_sft_and_the_gfn_term(trie):
    """θ L_SFT + (1 - θ) L_GFN with both terms computed apart: SFT by hand on its own targets (the first two
    titles), SubTB by the loss function on the GFlowNet trajectories (every title)."""
    policy = TabularPolicy(trie, early_stop=True, init_std=0.3, seed=1)
    traj = trie.title_trajectories(torch.arange(int(trie.terminal_nodes.numel())))
    targets = trie.title_trajectories(torch.arange(2))
    gfn = PathLogProbs(*policy.path_log_probs(traj.tokens, traj.lengths), traj.lengths)
    sft = PathLogProbs(*policy.path_log_probs(targets.tokens, targets.lengths), targets.lengths)
    rewards = path_rewards(trie, traj.tokens, traj.lengths)
    values, mask = sft.path()
    sft_term = -(values * mask).sum() / mask.sum()  # -mean log pi over the targets' tokens and T
    gfn_term = losses.subtrajectory_balance_loss(gfn.action, gfn.stop, rewards.log_stop_reward, gfn.lengths)
    assert sft_term.item() > 0 and gfn_term.item() > 0 and abs(sft_term.item() - gfn_term.item()) > 0.1
    for theta in (0.25, 0.9):
        mixed, parts = objective_loss(Objective("subtb", theta=theta), sft, gfn, rewards)
        assert mixed.item() == pytest.approx(theta * sft_term.item() + (1 - theta) * gfn_term.item(), rel=1e-12)
        assert parts == pytest.approx({"sft": sft_term.item(), "gfn": gfn_term.item()}, rel=1e-12)
    alone, alone_parts = objective_loss(Objective("subtb"), None, gfn, rewards)
    assert alone.item() == pytest.approx(gfn_term.item(), rel=1e-12) and "sft" not in alone_parts


def test_missing_inputs_are_named(trie):
    traj = trie.title_trajectories(torch.arange(2))
    paths = PathLogProbs(*TabularPolicy(trie).path_log_probs(traj.tokens, traj.lengths), traj.lengths)
    with pytest.raises(ValueError, match="needs trajectories and their rewards"):
        objective_loss(Objective("db"), paths)
    with pytest.raises(ValueError, match="mixes in SFT"):
        objective_loss(Objective("db", theta=0.5), None, paths, path_rewards(trie, traj.tokens, traj.lengths))
    with pytest.raises(ValueError, match="learned log Z"):
        objective_loss(Objective("tb"), None, paths, path_rewards(trie, traj.tokens, traj.lengths))
    with pytest.raises(ValueError, match="needs the SFT targets"):
        objective_loss(Objective("sft"), None)


def test_objective_names_say_what_is_optimised():
    assert [o.name for o in OBJECTIVES[:5]] == ["sft", "tb", "db", "subtb", "sft+subtb θ=0.9"]
    assert Objective("sft", theta=0.3).sft_weight == 1.0 and Objective("db", theta=0.3).sft_weight == 0.3
    with pytest.raises(ValueError, match="normalisation"):
        Objective(normalisation="tokens")
    with pytest.raises(ValueError, match="granularity must be >= 1"):
        Objective(granularity=0)
