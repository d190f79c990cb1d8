"""RQ2 diagnostics: what the reward itself ranks, exposure by popularity group, and whether training moves a
policy toward Flower's per-user target, beside a broken-reward control (notebook 04, ``results/target_fit.py``)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from ... import distributions, metrics
from ...config import RewardSpec, TrainConfig
from ...rewards import item_log_rewards
from ...threads import num_threads
from .methods import MethodResult, score, train_model
from .setup import RecSetup, preference_rows


def _test_log_rewards(setup: RecSetup, reward: RewardSpec, split: str, rows: int | None = None) -> torch.Tensor:
    """log R_u(i) [rows, N] of ``reward`` for the first ``rows`` rows of ``split`` (SASRec on their histories)."""
    n = len(setup.data.splits()[split]) if rows is None else min(rows, len(setup.data.splits()[split]))
    if reward.variant == "logp":
        return item_log_rewards(reward, setup.counts).expand(n, -1)
    if setup.sasrec is None:
        raise ValueError(f"the reward variant {reward.variant!r} needs setup.sasrec")
    with num_threads(setup.config.num_threads):
        p = preference_rows(setup.sasrec, setup.data, split, rows=None if rows is None else range(n))
    return item_log_rewards(reward, setup.counts, p)


def reward_ranking(name: str, setup: RecSetup, reward: RewardSpec | None = None) -> MethodResult:
    """The test rows' top-K items by the personalised reward R_u(i) itself (SASRec on the test histories).

    A policy that matches Flower's target exactly, pi(i | u) = R_u(i) / Z_u, ranks titles this way
    under beam search with length_penalty 0 (D3), up to beam-search errors and duplicate titles
    (which pool their items' rewards): the ceiling of what the reward (default ``setup.reward``) can give.
    """
    k = setup.config.decode_settings().num_return
    t0 = time.perf_counter()
    log_r = _test_log_rewards(setup, reward or setup.reward, "test")
    ranked = torch.topk(log_r, k, dim=1).indices.tolist()
    return score(name, setup, ranked, seconds={"train": 0.0, "decode": time.perf_counter() - t0})


def exposure_by_group(setup: RecSetup, results: Sequence[MethodResult]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(GP_data [G], {method: GP_rec [G]}) of :func:`flower_lite.metrics.group_unfairness`, for
    :func:`flower_lite.viz.exposure_by_group_figure`; groups from the item-level train counts."""
    gp_rec = {}
    gp_data = None
    for r in results:
        gu = metrics.group_unfairness(r.ranked, setup.counts, setup.config.n_groups)
        gp_data, gp_rec[r.name] = gu["gp_data"], gu["gp_rec"]
    return gp_data, gp_rec


def target_fit(setup: RecSetup, model: torch.nn.Module, reward: RewardSpec | None = None, rows: int = 8,
               split: str = "test") -> dict[str, float]:
    """How close the policy is to Flower's per-user target, on the first ``rows`` rows of ``split``.

    For each row u: P_u(t) = F_u(t·T) / Z_u over distinct titles t (``reward``, default ``setup.reward``,
    exact flows; duplicate titles pool their items) and Q_u(t), the exact distribution of trie-constrained
    sampling at temperature 1 (:func:`flower_lite.distributions.constrained_item_distribution`). Returns the
    means over rows of ``kl`` = KL(P_u || Q_u) and ``kl_reverse`` = KL(Q_u || P_u) (nats). Cost: one
    teacher-forced pass over the catalogue's titles per row.
    """
    log_r = _test_log_rewards(setup, reward or setup.reward, split, rows)
    n, trie = log_r.shape[0], setup.trie
    log_f = trie.batch_log_flows(log_r, trie.terminal_nodes.expand(n, -1))
    target = (log_f - torch.logsumexp(log_f, dim=1, keepdim=True)).exp().numpy()
    model.eval()
    kl, rkl = [], []
    with num_threads(setup.config.num_threads):
        for r in range(n):
            q = distributions.constrained_item_distribution(model, setup.tokenizer, setup.prompts[split][r], trie).numpy()
            kl.append(metrics.kl_divergence(target[r], q))
            rkl.append(metrics.kl_divergence(q, target[r]))
    return {"kl": float(np.mean(kl)), "kl_reverse": float(np.mean(rkl))}


def reversed_popularity(setup: RecSetup) -> RecSetup:
    """The setup with ``log p_pop`` negated (``RewardSpec.reversed``): a deliberately broken reward that
    rewards the tail most, the control of :func:`target_fit_comparison` (SASRec's scores unchanged)."""
    return replace(setup, reward=replace(setup.reward, reversed=not setup.reward.reversed))


def target_fit_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], trains: dict[str, TrainConfig],
                          rows: int = 8, control: bool = True) -> dict[str, dict]:
    """Does training move the policy toward Flower's per-user target P_u? :func:`target_fit` (KL(P_u || Q_u)
    and KL(Q_u || P_u) on the first ``rows`` test rows, P_u from ``setup.reward``) of the initial weights and
    of each run in ``trains`` (name: config). With ``control``, every run with a GFlowNet term is repeated on
    :func:`reversed_popularity` and measured against the *true* P_u: a term that learns the reward moves
    toward P_u only with the right one."""
    out = {"initial weights": target_fit(setup, new_model(), rows=rows)}
    for name, train in trains.items():
        runs = [(name, setup)] + ([(f"{name}, reversed popularity", reversed_popularity(setup))]
                                  if control and train.objective.gfn else [])
        for run_name, run_setup in runs:
            model = train_model(run_setup, new_model(), train).model
            out[run_name] = target_fit(setup, model, rows=rows)
    return out
