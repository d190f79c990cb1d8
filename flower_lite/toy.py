"""Fitting the tabular policy to a target with any objective (``config.Objective``): SFT, TB, DB, SubTB or a θ-mix.

The target is the trie's own reward distribution P(title) = F(title·T) / Z. SFT sees only a finite
sample of titles drawn from P (as in the paper's RQ1), so it learns the sample's empirical
distribution; the GFlowNet objectives see exact flows, so they can reach P itself. Notebook 02
teaches this; ``flower-lite demo`` runs it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .config import ToyConfig
from .objective import PathLogProbs, objective_loss
from .rewards import path_rewards
from .tabular import TabularPolicy
from .threads import num_threads, small_work_threads
from .trie import Trajectories, Trie

__all__ = ["ToyConfig", "ToyRun", "distribution_fit", "draw_target_sample", "fit_toy", "compare_methods", "summary_row"]


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


def draw_target_sample(trie: Trie, num: int, seed: int) -> np.ndarray:
    """Draw ``num`` title indices (into ``trie.terminal_nodes``) from the target P(title) = F / Z: SFT's data."""
    p = trie.title_log_probs().exp().numpy()
    return np.random.default_rng(seed).choice(p.size, size=num, p=p / p.sum())


def _stack(a: Trajectories, b: Trajectories) -> Trajectories:
    width = max(a.tokens.shape[1], b.tokens.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    return Trajectories(torch.cat([pad(a.tokens), pad(b.tokens)]), torch.cat([a.lengths, b.lengths]))


def fit_toy(trie: Trie, config: ToyConfig, sample: np.ndarray | None = None, progress: bool = True) -> ToyRun:
    """Fit a fresh ``TabularPolicy`` to the trie's target with ``config.objective``.

    ``sample`` holds the title indices SFT (and the SFT term of a θ-mix) trains on; by default
    ``draw_target_sample(trie, 1000, config.seed)``. The policy may stop early (write T at an
    incomplete title) only under ``subtb``, whose stop terms need log pi(T | s) at every state. TB's
    learned log Z_θ is relative to the exact log Z (``objective`` module) and starts at log Z_θ = 0,
    i.e. at -log Z. Tiny tensors: the fit runs on one thread (:mod:`flower_lite.threads`).
    """
    with num_threads(small_work_threads()):
        return _fit_toy(trie, config, sample, progress)


def _fit_toy(trie: Trie, config: ToyConfig, sample: np.ndarray | None, progress: bool) -> ToyRun:
    objective = config.objective
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    policy = TabularPolicy(trie, early_stop=objective.loss == "subtb")
    log_z = torch.nn.Parameter(torch.full((), -trie.log_z, dtype=torch.float64))
    groups = [{"params": policy.parameters(), "lr": config.lr}]
    if objective.loss == "tb":
        groups.append({"params": [log_z], "lr": config.log_z_lr})
    opt = torch.optim.Adam(groups)
    target = trie.title_log_probs().exp().numpy()
    sample = draw_target_sample(trie, 1000, config.seed) if sample is None else np.asarray(sample)
    sft_titles, sft_counts = torch.unique(torch.as_tensor(sample), return_counts=True)
    sft_paths = trie.title_trajectories(sft_titles)
    catalog = trie.title_trajectories(torch.arange(trie.terminal_nodes.numel()))
    run = ToyRun(config, policy)

    def along(traj: Trajectories) -> PathLogProbs:
        return PathLogProbs(*policy.path_log_probs(traj.tokens, traj.lengths), traj.lengths)

    def gfn_trajectories() -> Trajectories:
        if config.trajectories == "catalog":
            return catalog
        sampled = Trajectories(*policy.sample(config.batch_size, gen))
        sampled.tokens.clamp_min_(0)
        return _stack(catalog, sampled) if config.trajectories == "catalog+on_policy" else sampled

    bar = tqdm(total=config.steps, desc=f"toy {objective.name}", disable=not progress)  # ends full at steps/steps
    for step in range(config.steps + 1):
        gfn = rewards = None
        if objective.gfn:
            traj = gfn_trajectories()
            gfn = along(traj)
            rewards = path_rewards(trie, traj.tokens, traj.lengths, penalty=objective.penalty,
                                   children=objective.loss == "distill")
            if rewards.children is not None:  # log pi of the edge into every child of the visited states
                gfn.children = policy.log_probs()[0][rewards.children.nodes.clamp_min(0)]
        sft = along(sft_paths) if objective.sft_weight > 0 else None
        loss, _ = objective_loss(objective, sft, gfn, rewards, log_z, sft_weight=sft_counts)
        if step % config.eval_every == 0 or step == config.steps:
            run.history.append({"step": step, "loss": loss.item(), **distribution_fit(target, policy)})
        if step == config.steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    return run


def compare_methods(trie: Trie, configs: dict[str, ToyConfig], sample_size: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, ToyRun]:
    """Fit every config on the same finite sample of titles; returns runs by name."""
    sample = draw_target_sample(trie, sample_size, seed)
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
