"""The one objective of flower_lite: ``L = θ L_SFT + (1 - θ) L_GFN`` (docs/method.md 5).

Both training loops, the tabular toy (:func:`flower_lite.toy.fit_toy`) and the causal-LM trainer
(:class:`flower_lite.train.Trainer`), compute the policy's log-probabilities along their trajectories
(:class:`PathLogProbs`) and the exact rewards along them (:class:`~flower_lite.rewards.PathRewards`), then
call :func:`objective_loss` with an :class:`~flower_lite.config.Objective`. Nothing else assembles a loss.

Conventions (``losses`` module docstring): K = max title tokens, ``action`` [batch, K] is
log pi(a_t | s_t), ``stop`` [batch, K + 1] is log pi(T | s_t) at every state, ``lengths`` [batch] the
number of title tokens k. TB's outcome reward is ``PathRewards.log_outcome`` = log R(x) - log Z, so the
learned log Z_θ is relative to the exact partition function (its optimum is 0 for every user).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from . import losses
from .config import Objective
from .rewards import PathRewards, place_stop

__all__ = ["Objective", "PathLogProbs", "objective_loss", "gfn_loss"]


@dataclass
class PathLogProbs:
    """The policy along a batch of trajectories s_0 -> ... -> s_k, then T."""

    action: Tensor  # [batch, K] log pi(a_t | s_t); 0 past the end
    stop: Tensor  # [batch, K + 1] log pi(T | s_t)
    lengths: Tensor  # [batch] k, the number of title tokens
    children: Tensor | None = None  # [batch, K + 1, C] log pi(c | s_t) of the children of ``PathRewards.children``

    def path(self) -> tuple[Tensor, Tensor]:
        """(values [batch, K + 1], mask [batch, K + 1]): log pi of a_0 .. a_{k-1}, T (T at position k)."""
        return place_stop(self.action, self.stop, self.lengths.to(self.action.device))


def gfn_loss(objective: Objective, paths: PathLogProbs, rewards: PathRewards, log_z: Tensor | None = None) -> Tensor:
    """The GFlowNet loss ``objective.loss`` (tb, db, subtb, subtb_exact or distill) on trajectories with exact rewards.

    ``log_z``: TB's learned log Z_θ (a scalar tensor), relative to the exact log Z (module docstring).
    """
    action, o = paths.action, objective
    lengths = paths.lengths.to(action.device)
    as_policy = lambda x: x.to(action.device, action.dtype)  # noqa: E731  (rewards are float64)
    if o.loss == "subtb":
        return losses.subtrajectory_balance_loss(action, paths.stop, as_policy(rewards.log_stop_reward), lengths,
                                                 o.subtb_lambda, o.granularity, o.normalisation)
    path, mask = paths.path()
    if o.loss == "tb":
        if log_z is None:
            raise ValueError("trajectory balance needs the learned log Z (log_z)")
        return losses.trajectory_balance_loss(path, mask, as_policy(rewards.log_outcome), log_z)
    if o.loss == "db":
        return losses.detailed_balance_loss(path, as_policy(rewards.log_r_path), mask, o.granularity)
    if o.loss == "subtb_exact":
        return losses.exact_subtb_loss(path, as_policy(rewards.log_r_path), mask, o.subtb_lambda, o.granularity,
                                       o.normalisation)
    if o.loss == "distill":
        if paths.children is None or rewards.children is None:
            raise ValueError("flow distillation needs every child's log pi and exact share (path_rewards(children=True))")
        kids = rewards.children
        return losses.flow_distillation_loss(paths.children, as_policy(kids.log_r), kids.mask.to(action.device))
    raise ValueError(f"{o.loss!r} is not a GFlowNet loss")


def objective_loss(objective: Objective, sft: PathLogProbs | None, gfn: PathLogProbs | None = None,
                   rewards: PathRewards | None = None, log_z: Tensor | None = None,
                   sft_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """``L = θ L_SFT + (1 - θ) L_GFN`` (``sft`` alone for ``objective.loss == "sft"``, L_GFN alone at θ = 0).

    ``sft``: the policy along the SFT targets (teacher-forced titles; None when θ = 0 and nothing is
    logged); ``sft_weight`` [batch] counts each target that many times (a repeated title, IFairLRS).
    ``gfn`` / ``rewards``: the GFlowNet trajectories and their exact rewards; ``log_z`` for TB.
    Returns ``(loss, {"sft": L_SFT, "gfn": L_GFN})`` with the terms that were computed, as floats.
    """
    parts: dict[str, float] = {}
    sft_term = None
    if sft is not None:
        sft_term = losses.sft_loss(*sft.path(), weight=sft_weight)
        parts["sft"] = sft_term.item()
    if not objective.gfn:
        if sft_term is None:
            raise ValueError("the sft objective needs the SFT targets' log-probabilities")
        return sft_term, parts
    if gfn is None or rewards is None:
        raise ValueError(f"the {objective.loss} objective needs trajectories and their rewards")
    gfn_term = gfn_loss(objective, gfn, rewards, log_z)
    parts["gfn"] = gfn_term.item()
    if objective.theta == 0:
        return gfn_term, parts
    if sft_term is None:
        raise ValueError(f"θ = {objective.theta} mixes in SFT: pass the SFT targets' log-probabilities")
    return losses.theta_mix(sft_term, gfn_term, objective.theta), parts
