"""Fitting the tabular policy to a target with SFT, TB, DB or Flower's sub-trajectory balance.

The target is the trie's own reward distribution P(title) = F(title·T) / Z. SFT sees only a finite
sample of titles drawn from P (as in the paper's RQ1), so it learns the sample's empirical
distribution; the GFlowNet objectives see exact flows, so they can reach P itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses, metrics
from .rewards import OFF_ITEM_PENALTY, path_rewards, place_stop
from .tabular import TabularPolicy
from .trie import Trie

METHODS = ("sft", "tb", "db", "flower")
TRAJECTORIES = ("catalog", "on_policy", "mixed")


@dataclass
class ToyConfig:
    """Settings of one toy fit (``method`` in sft | tb | db | flower)."""

    method: str = "flower"
    steps: int = 300
    lr: float = 0.3
    log_z_lr: float = 0.3  # TB's learned log Z needs its own, larger learning rate
    theta: float = 0.0  # Flower: weight of the SFT term, L = theta L_SFT + (1 - theta) L_SubTB
    lam: float = 1.0
    granularity: int = 1
    normalisation: str = "pairs"
    penalty: float = OFF_ITEM_PENALTY
    trajectories: str = "catalog"  # GFlowNet trajectories: every title, on-policy samples, or both
    batch_size: int = 64  # on-policy samples per step
    seed: int = 0
    eval_every: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: expected one of {METHODS}")
        if self.trajectories not in TRAJECTORIES:
            raise ValueError(f"unknown trajectories {self.trajectories!r}: expected one of {TRAJECTORIES}")


@dataclass
class ToyRun:
    """A fitted policy and its curve: one dict per evaluation (step, loss, kl, kl_reverse, js, tv, invalid)."""

    config: ToyConfig
    policy: TabularPolicy
    history: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1]


def distribution_fit(target: np.ndarray, policy: TabularPolicy) -> dict:
    """Exact fit of the policy's title distribution Q to the target P (invalid mass pooled in one bucket)."""
    q, invalid = policy.title_distribution()
    p, q = metrics.with_invalid_bucket(np.asarray(target), q.numpy(), invalid)
    return {
        "kl": metrics.kl_divergence(p, q),
        "kl_reverse": metrics.kl_divergence(q, p),
        "js": metrics.js_divergence(p, q),
        "tv": metrics.total_variation(p, q),
        "invalid": invalid,
    }


def sample_titles(trie: Trie, num: int, seed: int) -> np.ndarray:
    """Draw ``num`` title indices (into ``trie.terminal_nodes``) from the target P(title) = F / Z."""
    p = trie.title_log_probs().exp().numpy()
    return np.random.default_rng(seed).choice(p.size, size=num, p=p / p.sum())


def _title_paths(trie: Trie, titles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Title tokens [batch, K] (padded with 0) and lengths of titles given by index into terminal_nodes."""
    tokens, lengths = trie.prefix_tokens(trie.structure.parent[trie.terminal_nodes[titles]])
    return tokens.clamp_min(0), lengths


def fit_toy(trie: Trie, config: ToyConfig, sample: np.ndarray | None = None, progress: bool = True) -> ToyRun:
    """Fit a fresh ``TabularPolicy`` to the trie's target with ``config.method``.

    ``sample`` holds the title indices SFT (and Flower's SFT term) trains on; by default
    ``sample_titles(trie, 1000, config.seed)``.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    policy = TabularPolicy(trie, early_stop=config.method == "flower")
    log_z = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    groups = [{"params": policy.parameters(), "lr": config.lr}]
    if config.method == "tb":
        groups.append({"params": [log_z], "lr": config.log_z_lr})
    opt = torch.optim.Adam(groups)
    target = trie.title_log_probs().exp().numpy()
    sample = sample_titles(trie, 1000, config.seed) if sample is None else np.asarray(sample)
    sft_titles, sft_counts = torch.unique(torch.as_tensor(sample), return_counts=True)
    sft_batch = (*_title_paths(trie, sft_titles), sft_counts)
    all_tokens, all_lengths = _title_paths(trie, torch.arange(trie.terminal_nodes.numel()))
    run = ToyRun(config, policy)

    def gfn_batch() -> tuple[torch.Tensor, torch.Tensor]:
        if config.trajectories == "catalog":
            return all_tokens, all_lengths
        tokens, lengths = policy.sample(config.batch_size, gen)
        tokens = tokens.clamp_min(0)
        if config.trajectories == "mixed":
            width = max(tokens.shape[1], all_tokens.shape[1])
            pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
            return torch.cat([pad(all_tokens), pad(tokens)]), torch.cat([all_lengths, lengths])
        return tokens, lengths

    for step in tqdm(range(config.steps + 1), desc=f"toy {config.method}", disable=not progress):
        loss = _loss(policy, trie, config, log_z, sft_batch, gfn_batch)
        if step % config.eval_every == 0 or step == config.steps:
            run.history.append({"step": step, "loss": loss.item(), **distribution_fit(target, policy)})
        if step == config.steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return run


def _loss(policy, trie, config, log_z, sft_batch, gfn_batch) -> torch.Tensor:
    """The objective of ``config.method`` on this step's trajectories."""
    def sft() -> torch.Tensor:
        tokens, lengths, counts = sft_batch
        action, stop = policy.path_log_probs(tokens, lengths)
        return losses.sft_loss(*place_stop(action, stop, lengths), weight=counts)

    if config.method == "sft":
        return sft()
    tokens, lengths = gfn_batch()
    action, stop = policy.path_log_probs(tokens, lengths)
    rewards = path_rewards(trie, tokens, lengths, penalty=config.penalty)
    if config.method == "tb":
        path, mask = place_stop(action, stop, lengths)
        log_r = rewards.log_stop_reward.gather(1, lengths[:, None])[:, 0] + trie.log_z
        return losses.trajectory_balance_loss(path, mask, log_r, log_z)
    if config.method == "db":
        path, mask = place_stop(action, stop, lengths)
        return losses.detailed_balance_loss(path, rewards.log_r_path, mask, config.granularity)
    gfn = losses.subtrajectory_balance_loss(
        action, stop, rewards.log_stop_reward, lengths, config.lam, config.granularity, config.normalisation
    )
    return losses.theta_mix(sft(), gfn, config.theta) if config.theta > 0 else gfn


def compare_methods(trie: Trie, configs: dict[str, ToyConfig], sample_size: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, ToyRun]:
    """Fit every config on the same finite sample of titles; returns runs by name."""
    sample = sample_titles(trie, sample_size, seed)
    return {name: fit_toy(trie, cfg, sample, progress) for name, cfg in configs.items()}


def summary_row(name: str, run: ToyRun, trie: Trie, top_k: int = 10) -> dict:
    """One table row: exact fit plus coverage / Gini / tail share of the fitted title distribution."""
    q, _ = run.policy.title_distribution()
    q = q.numpy()
    target = trie.title_log_probs().exp().numpy()
    return {
        "method": name,
        **{k: run.final[k] for k in ("kl", "kl_reverse", "js", "tv", "invalid")},
        "coverage": metrics.support_size(q, threshold=1.0 / (100 * q.size)),
        "gini": metrics.gini(q),
        "tail_share": metrics.tail_share(q, target, head_fraction=0.2),
        "config": asdict(run.config),
    }
