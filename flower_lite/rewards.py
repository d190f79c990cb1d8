"""Item rewards R(i), personalised rewards R_u(i), and the token-level rewards of a trajectory.

docs/method.md section 4. Popularity rewards are ``(c(i) + eps) ** alpha``. Personalised rewards come
from an auxiliary recommender's probabilities ``p_ui`` and are turned into *exact per-user flows*
``F_u(s)`` over the trie (``Trie.batch_log_flows``), so a prefix has the same reward on every
trajectory. The reference's trajectory-dependent token rewards are kept for parity only
(``reference_token_log_rewards``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import OFF_ITEM_PENALTY, RewardSpec
from .trie import Trie

ZERO_REWARD_FLOOR = -100.0  # log R~ given to states of zero reward so that losses stay finite


# ---------------------------------------------------------------------------- item rewards
def popularity_rewards(counts: np.ndarray | Tensor, alpha: float = 1.0, eps: float = 0.0) -> np.ndarray:
    """R(i) = (c(i) + eps) ** alpha: alpha = 0 is uniform, alpha = 1 the empirical popularity.

    ``counts`` [num_items] must be finite and >= 0. With eps = 0 an unseen item gets R = 0
    (for alpha > 0); 0 ** 0 = 1, so alpha = 0 is uniform over every item.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("counts: expected a non-empty 1-D array of item counts")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts: every count must be finite and >= 0")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return (c + eps) ** alpha


def mix_uniform(rewards: np.ndarray, beta: float) -> np.ndarray:
    """(1 - beta) R(i) / Z + beta / N: a normalised target mixed with the uniform distribution."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    r = np.asarray(rewards, dtype=np.float64)
    return (1.0 - beta) * r / r.sum() + beta / r.size


def log_popularity(counts: np.ndarray | Tensor, eps: float = 0.0, alpha: float = 1.0) -> Tensor:
    """[num_items] log p_pop(i) = alpha log (c(i) + eps) - log sum_j (c(j) + eps) ** alpha
    (alpha = 1: the empirical popularity; alpha < 1 flattens it toward uniform)."""
    r = torch.as_tensor(popularity_rewards(counts, alpha, eps))
    return r.log() - r.sum().log()


def _minmax(p: Tensor) -> tuple[Tensor, Tensor]:
    """Row min and range of p [batch, num_items]; a constant row gets range 1 (so its scores are 0)."""
    lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    span = hi - lo
    return lo, torch.where(span > 0, span, torch.ones_like(span))


def div_s_scores(p: Tensor) -> Tensor:
    """s_ui = (p_ui - mean_j p_uj) / (max_j p_uj - min_j p_uj) + 1, in [0, 2]; [batch, num_items]."""
    _, span = _minmax(p)
    return (p - p.mean(dim=1, keepdim=True)) / span + 1.0


def minmax_scores(p: Tensor) -> Tensor:
    """s'_ui = (p_ui - min_j p_uj) / (max_j p_uj - min_j p_uj), in [0, 1]; [batch, num_items]."""
    lo, span = _minmax(p)
    return (p - lo) / span


def personalised_log_rewards(
    p: Tensor, log_p_pop: Tensor, variant: str = "div_s", score_weight: float = 1.0, min_score: float = 1e-6
) -> Tensor:
    """log R_u(i) [batch, num_items] for preference rows p [batch, num_items] (each row a user).

    * ``logp``: log p_pop(i) (popularity only);
    * ``div_s`` (paper default): log p_pop(i) / s_ui, i.e. R_u(i) = p_pop(i) ** (1 / s_ui); a weight
      w = ``score_weight`` below 1 blends it geometrically with popularity,
      (1 - w) log p_pop(i) + w log p_pop(i) / s_ui;
    * ``add_log_s``: log p_pop(i) + w log s'_ui, added once per item (the reference adds it to
      every token; see ``reference_token_log_rewards``).
    Scores are clamped below at ``min_score`` so that no item's reward is exactly 0.
    """
    p = p.to(torch.float64)
    log_p_pop = log_p_pop.to(device=p.device, dtype=torch.float64).expand_as(p)
    if variant == "logp":
        return log_p_pop.clone()
    if variant == "div_s":
        divided = log_p_pop / div_s_scores(p).clamp_min(min_score)
        return divided if score_weight == 1 else (1 - score_weight) * log_p_pop + score_weight * divided
    if variant == "add_log_s":
        return log_p_pop + score_weight * minmax_scores(p).clamp_min(min_score).log()
    raise ValueError(f"unknown reward variant {variant!r}: expected 'logp', 'div_s' or 'add_log_s'")


def item_rewards(spec: RewardSpec, counts: np.ndarray | Tensor) -> np.ndarray:
    """[num_items] the popularity reward R(i) = (c(i) + pop_eps) ** pop_alpha of ``spec`` (unnormalised: the
    weights of a title trie), or 1 / R(i) when ``spec.reversed`` (proportional to exp(-log p_pop(i)))."""
    r = popularity_rewards(counts, spec.pop_alpha, spec.pop_eps)
    return 1.0 / r if spec.reversed else r


def item_log_rewards(spec: RewardSpec, counts: np.ndarray | Tensor, preferences: Tensor | None = None) -> Tensor:
    """The reward of :class:`~flower_lite.config.RewardSpec`: log p_pop(i) [num_items] from the counts c(i)
    (negated when ``spec.reversed``, the broken-reward control), or with ``preferences`` p [batch, num_items]
    the personalised log R_u(i) [batch, num_items] of ``spec.variant``."""
    log_p_pop = log_popularity(counts, spec.pop_eps, spec.pop_alpha)
    if spec.reversed:
        log_p_pop = -log_p_pop
    if preferences is None:
        return log_p_pop
    return personalised_log_rewards(preferences, log_p_pop, spec.variant, spec.score_weight)


def reference_token_log_rewards(
    log_r_pop: Tensor, mask: Tensor, end_score: Tensor, variant: str, score_weight: float = 1.0
) -> Tensor:
    """The reference's trajectory-dependent token rewards, kept for parity only (docs/method.md 4).

    ``log_r_pop`` [batch, time] are popularity token rewards along each trajectory, ``end_score``
    [batch] the score of the item the trajectory ended in (s_ui for ``div_s``, s'_ui for
    ``add_log_s``). ``div_s`` divides every token's log reward by it; ``add_log_s`` adds
    ``score_weight * log s'`` to every token, so the boost grows with the title length. The same prefix
    therefore gets different rewards on different trajectories: this is not a flow.
    """
    score = end_score.to(log_r_pop.dtype)[:, None]
    if variant == "div_s":
        out = log_r_pop / score
    elif variant == "add_log_s":
        out = log_r_pop + score_weight * score.log()
    else:
        raise ValueError(f"unknown reference variant {variant!r}: expected 'div_s' or 'add_log_s'")
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# ---------------------------------------------------------------------------- trajectory rewards
@dataclass
class ChildRewards:
    """The exact share of every child of the states of a batch of trajectories (flow distillation)."""

    nodes: Tensor  # [batch, S, C] the child nodes s_t·c (-1 where there is none)
    tokens: Tensor  # [batch, S, C] the token of each child c of state s_t (0 where there is none)
    log_r: Tensor  # [batch, S, C] log r(c | s_t) = log F(s_t·c) - log F(s_t) (per user with per-user rewards)
    mask: Tensor  # [batch, S, C] True where the child exists


@dataclass
class PathRewards:
    """Exact token-level rewards along a batch of trajectories s_0 -> ... -> s_k (then T).

    Shapes: K = max title tokens; states are t = 0..K.
    """

    nodes: Tensor  # [batch, K + 1] trie node of s_t (-1 past the end)
    log_flow: Tensor  # [batch, K + 1] log F(s_t) (per-user when rewards were given)
    log_r_action: Tensor  # [batch, K] log r(a_t | s_t) = log F(s_t·a_t) - log F(s_t); 0 past the end
    log_r_stop: Tensor  # [batch, K + 1] log r(T | s_t); -inf where s_t is not a complete title
    log_stop_reward: Tensor  # [batch, K + 1] log R~(s_t) of Flower's objective (docs/method.md 5)
    lengths: Tensor  # [batch] k, the number of title tokens
    children: ChildRewards | None = None  # every child's exact share at s_0 .. s_k (``path_rewards(children=True)``)

    @property
    def log_outcome(self) -> Tensor:
        """[batch] the outcome reward of each trajectory's title relative to the partition function,
        log R(x) - log Z (per user: log R_u(x) - log Z_u), i.e. log R~(s_k): the log-probability the
        target gives x (duplicate items pooled). TB's learned log Z_θ is relative to the exact log Z."""
        return self.log_stop_reward.gather(1, self.lengths[:, None].to(self.log_stop_reward.device))[:, 0]

    @property
    def log_r_path(self) -> Tensor:
        """[batch, K + 1] token rewards of the whole path a_0 .. a_{k-1}, T (T at position k)."""
        return place_stop(self.log_r_action, self.log_r_stop, self.lengths)[0]


def place_stop(action: Tensor, stop: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Path values a_0..a_{k-1}, T from per-action [batch, K] and per-state [batch, K + 1] values.

    Returns ``(values [batch, K + 1], mask [batch, K + 1])`` with T's value at position k = lengths.
    """
    batch, k_max = action.shape
    t = torch.arange(k_max + 1, device=action.device)
    mask = t[None, :] <= lengths[:, None]
    padded = torch.nn.functional.pad(action, (0, 1))
    at_stop = t[None, :] == lengths[:, None]
    values = torch.where(at_stop, stop, torch.where(mask, padded, torch.zeros_like(padded)))
    return values, mask


def path_rewards(
    trie: Trie,
    tokens: Tensor,
    lengths: Tensor,
    log_rewards: Tensor | None = None,
    penalty: float = OFF_ITEM_PENALTY,
    children: bool = False,
) -> PathRewards:
    """Exact token rewards for trajectories ``tokens`` [batch, K] of ``lengths`` [batch] title tokens.

    With ``log_rewards`` [batch, num_items] (one row per trajectory's user), flows are the exact
    per-user flows F_u; otherwise the trie's own flows. The stop reward of Flower's objective is
    ``log R~(s_t) = log F(s_t·T) - log Z`` at a complete title and ``log F(s_t) - log Z + penalty``
    elsewhere (states of zero flow get ``ZERO_REWARD_FLOOR``). Tokens must stay on the trie. With
    ``children`` the exact share of every child of s_0 .. s_k is computed too (:class:`ChildRewards`).
    """
    t = torch.arange(tokens.shape[1], device=tokens.device)
    mask = t[None, :] < lengths[:, None]
    nodes = trie.walk(tokens, mask)
    stop_nodes = torch.where(nodes >= 0, trie.stop_child(nodes).to(nodes.device), nodes)
    state_mask = nodes >= 0
    expected = torch.arange(tokens.shape[1] + 1, device=tokens.device)[None, :] <= lengths[:, None]
    if not torch.equal(state_mask, expected):
        bad = int(torch.nonzero((state_mask != expected).any(dim=1))[0])
        raise ValueError(f"trajectory {bad} leaves the trie: its tokens are not a prefix of any title")
    if log_rewards is None:
        log_flow, log_stop_flow = trie.log_flows_at(nodes), trie.log_flows_at(stop_nodes)
        log_z = torch.full((tokens.shape[0], 1), trie.log_z, dtype=torch.float64, device=tokens.device)
    else:
        width = nodes.shape[1]  # one range-sum pass for the states, their stop children and the root
        flows = trie.batch_log_flows(log_rewards, torch.cat([nodes, stop_nodes, torch.zeros_like(nodes[:, :1])], dim=1))
        log_flow, log_stop_flow, log_z = flows[:, :width], flows[:, width : 2 * width], flows[:, 2 * width :]
    log_flow, log_stop_flow = log_flow.to(tokens.device), log_stop_flow.to(tokens.device)
    log_z = log_z.to(tokens.device)
    neg_inf = torch.full_like(log_flow, -math.inf)
    log_r_action = torch.where(mask, log_flow[:, 1:] - log_flow[:, :-1], torch.zeros_like(log_flow[:, 1:]))
    log_r_stop = torch.where(stop_nodes >= 0, log_stop_flow - log_flow, neg_inf)
    stop_reward = torch.where(stop_nodes >= 0, log_stop_flow, log_flow + penalty) - log_z
    stop_reward = torch.where(state_mask, stop_reward.clamp_min(ZERO_REWARD_FLOOR), neg_inf)
    kids = child_rewards(trie, nodes, log_flow, log_rewards) if children else None
    return PathRewards(nodes, log_flow, log_r_action, log_r_stop, stop_reward, lengths, kids)


def child_rewards(trie: Trie, nodes: Tensor, log_flow: Tensor, log_rewards: Tensor | None = None) -> ChildRewards:
    """:class:`ChildRewards` of states ``nodes`` [batch, S] (-1: none) whose flows are ``log_flow`` [batch, S]:
    log r(c | s) = log F(s·c) - log F(s), per user when ``log_rewards`` [batch, num_items] is given."""
    child, mask = trie.children_of(nodes)  # [batch, S, C]
    if log_rewards is None:
        log_child = trie.log_flows_at(child)
    else:
        log_child = trie.batch_log_flows(log_rewards, child.flatten(1)).view(child.shape).to(log_flow.device)
    log_r = torch.where(mask, log_child - log_flow[..., None], torch.full_like(log_child, -math.inf))
    tokens = trie.structure.token[child.clamp_min(0)]
    return ChildRewards(child, torch.where(mask, tokens, torch.zeros_like(tokens)), log_r, mask)
