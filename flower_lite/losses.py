"""Training objectives in log space (docs/method.md section 5).

Inputs are per-token log-probabilities of the policy with masks; outputs are scalars with gradients.
Conventions (K = max title tokens in the batch, k = ``lengths[b]``):

* ``log_pi_action`` [batch, K]: log pi(a_t | s_t) of the title tokens;
* ``log_pi_stop`` [batch, K + 1]: log pi(T | s_t) at every state (T = termination token);
* a *path* tensor [batch, K + 1] holds a_0 .. a_{k-1}, T (``rewards.place_stop`` builds it).

Every balance loss is written through one quantity: for states i < j of a trajectory,
``residual(i, j) = A_i - A_j`` with ``A_t = log F(s_t) - sum_{m<t} log pi(a_m | s_m)``, since
``log F(s_i) + sum_{t=i}^{j-1} log pi(a_t | s_t) - log F(s_j) = A_i - A_j``. Detailed balance uses
consecutive supervised states, sub-trajectory balance all pairs, trajectory balance the pair (0, k).
With exact flows at every state (``exact_subtb_loss``, DB) the stop probabilities of incomplete titles never
enter; Flower's SubTB learns them, through ``log F^(s) = log R~(s) - log pi(T | s)``. Flow distillation is no
balance: it supervises every child of a visited state with its exact share, KL(r(. | s) || pi(. | s)).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import NORMALISATIONS


def chunk_boundaries(lengths: Tensor, num_states: int, n: int) -> Tensor:
    """Supervision granularity n: bool ``[batch, num_states]``, True at states t with t % n == 0 or t == lengths.

    State t is the prefix of t tokens; a trajectory of ``lengths[b]`` tokens has states 0..lengths[b].
    n = 1 supervises every token; n larger than every length keeps only (0, lengths): outcome only.
    """
    if n < 1:
        raise ValueError(f"granularity n must be >= 1, got {n}")
    t = torch.arange(num_states, device=lengths.device)
    return ((t % n == 0) & (t[None, :] <= lengths[:, None])) | (t[None, :] == lengths[:, None])


def sft_loss(log_pi_path: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of the ground-truth path: -mean over unmasked tokens (title and T) of log pi.

    ``weight`` [batch] counts each trajectory that many times (a repeated title, or a per-sample
    reweighting such as IFairLRS): the mean runs over weighted tokens.
    """
    mask = mask.to(log_pi_path.dtype)
    if weight is not None:
        mask = mask * weight.to(mask.dtype)[:, None]
    return -(log_pi_path * mask).sum() / mask.sum().clamp_min(1e-12)


def trajectory_balance_loss(log_pi_path: Tensor, mask: Tensor, log_reward: Tensor, log_z: Tensor) -> Tensor:
    """TB: mean over trajectories of (log Z_theta + sum_t log pi(a_t | s_t) - log R(x))^2.

    ``log_reward`` [batch] is log R of each trajectory's item; ``log_z`` a learned scalar
    (give it its own, larger learning rate).
    """
    total = (log_pi_path * mask.to(log_pi_path.dtype)).sum(dim=1)
    return (log_z + total - log_reward.to(total.dtype)).pow(2).mean()


def _pairwise_balance(a: Tensor, supervised: Tensor, subtb_lambda: float, consecutive: bool, normalisation: str) -> Tensor:
    """Weighted mean of (A_i - A_j)^2 over supervised state pairs i < j of each trajectory.

    ``a``, ``supervised``: [batch, S]. A pair (i, j) has weight subtb_lambda ** (number of supervised states
    strictly between i and j). ``consecutive`` keeps only pairs with none between (detailed balance).
    ``normalisation``: ``pairs`` divides by the number of pairs in the batch (the reference: long
    titles weigh quadratically more); ``sequence`` averages each trajectory's pairs, then trajectories.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}: expected one of {NORMALISATIONS}")
    if subtb_lambda <= 0:
        raise ValueError(f"lambda must be > 0, got {subtb_lambda}")
    a = torch.where(supervised, a, torch.zeros_like(a))  # keeps -inf/NaN of unused states out of the graph
    count = torch.cumsum(supervised.long(), dim=1)
    gap = count[:, None, :] - count[:, :, None] - 1  # [batch, i, j] supervised states strictly between
    pairs = supervised[:, :, None] & supervised[:, None, :] & (gap >= 0)
    if consecutive:
        pairs &= gap == 0
    weight = torch.where(pairs, torch.pow(torch.as_tensor(subtb_lambda, dtype=a.dtype), gap.clamp_min(0).to(a.dtype)), 0.0)
    sq = (a[:, :, None] - a[:, None, :]).pow(2) * weight
    if normalisation == "pairs":
        return sq.sum() / pairs.sum().clamp_min(1)
    per_seq = sq.sum(dim=(1, 2)) / pairs.sum(dim=(1, 2)).clamp_min(1)
    return per_seq[pairs.any(dim=(1, 2))].mean()


def _exact_flow_residuals(log_pi_path: Tensor, log_r_path: Tensor, mask: Tensor, granularity: int) -> tuple[Tensor, Tensor]:
    """``(A [batch, K + 2], supervised [batch, K + 2])`` along whole paths a_0 .. a_{k-1}, T with the exact flows
    at every state, T's terminal included: ``A_t = log F(s_t) - log Z - sum_{m<t} log pi(a_m | s_m)``, i.e. minus
    the running sum of ``log pi - log r`` (``log F(s_t) - log Z`` telescopes from the token rewards)."""
    lengths = mask.sum(dim=1)
    diff = torch.where(mask.bool(), log_pi_path - log_r_path, torch.zeros_like(log_pi_path))
    a = -torch.nn.functional.pad(torch.cumsum(diff, dim=1), (1, 0))
    return a, chunk_boundaries(lengths, a.shape[1], granularity)


def detailed_balance_loss(
    log_pi_path: Tensor, log_r_path: Tensor, mask: Tensor, granularity: int = 1
) -> Tensor:
    """DB with known flows: mean over edges of (log F(s_t) + log pi(a_t | s_t) - log F(s_{t+1}))^2.

    With exact flows ``log F(s_{t+1}) - log F(s_t) = log r(a_t | s_t)``, so this regresses log pi
    onto the token reward ``log_r_path`` [batch, K + 1] (T included). With granularity n the edges
    are chunks of n tokens (plus the last, shorter one) and the residual is the chunk's sum.
    """
    a, supervised = _exact_flow_residuals(log_pi_path, log_r_path, mask, granularity)
    return _pairwise_balance(a, supervised, 1.0, consecutive=True, normalisation="pairs")


def exact_subtb_loss(
    log_pi_path: Tensor, log_r_path: Tensor, mask: Tensor, subtb_lambda: float = 1.0, granularity: int = 1,
    normalisation: str = "pairs",
) -> Tensor:
    """Sub-trajectory balance on the exact flows: every pair of supervised states of the path (T's terminal
    included) with weight subtb_lambda ** (j - i - 1), residual
    ``log F(s_i) + sum_{t=i}^{j-1} log pi(a_t | s_t) - log F(s_j)``.

    This is Flower's objective with its internal stop terms held out of the gradient: the flows come from
    the trie instead of ``log R~(s) - log pi(T | s)``, so log pi(T | s) at an incomplete title never enters,
    and the title's own stop term, log pi(T | s_k), is the last edge. Zero exactly at pi(a | s) = r(a | s)
    along the path; consecutive pairs alone are :func:`detailed_balance_loss`.
    """
    a, supervised = _exact_flow_residuals(log_pi_path, log_r_path, mask, granularity)
    return _pairwise_balance(a, supervised, subtb_lambda, consecutive=False, normalisation=normalisation)


def flow_distillation_loss(log_pi_children: Tensor, log_r_children: Tensor, mask: Tensor) -> Tensor:
    """Flow distillation: mean over visited states s of KL(r(. | s) || pi(. | s)) over the trie children of s.

    ``log_pi_children``, ``log_r_children``, ``mask``: [batch, S, C], the children c of each state (T
    included where s is a complete title): log pi(c | s) of the policy, the exact log r(c | s) =
    log F(s·c) - log F(s), and which (state, child) pairs exist. Every child is supervised with its exact
    share, not only the one a trajectory took; 0 exactly when pi(c | s) = r(c | s) at every visited state.
    """
    mask = mask.bool()
    r = torch.where(mask, log_r_children.exp(), torch.zeros_like(log_r_children))
    gap = torch.where(mask & (r > 0), log_r_children - log_pi_children, torch.zeros_like(log_pi_children))
    per_state = (r * gap).sum(dim=-1)
    states = mask.any(dim=-1)
    return per_state[states].mean()


def subtrajectory_balance_loss(
    log_pi_action: Tensor,
    log_pi_stop: Tensor,
    log_stop_reward: Tensor,
    lengths: Tensor,
    subtb_lambda: float = 1.0,
    granularity: int = 1,
    normalisation: str = "pairs",
) -> Tensor:
    """Flower's modified sub-trajectory balance (Hu et al. 2024), every state may terminate.

    The implicit flow is ``log F^(s_t) = log R~(s_t) - log pi(T | s_t)`` with ``log_stop_reward``
    [batch, K + 1] = log R~ (see ``rewards.path_rewards``). The loss averages
    ``(log F^(s_i) + sum_{t=i}^{j-1} log pi(a_t | s_t) - log F^(s_j))^2`` over pairs of supervised
    states 0 <= i < j <= k with weight subtb_lambda ** (j - i - 1) (in chunks when granularity n > 1).
    Zero exactly when the policy is the flow of the rewards R~ (``tabular.stop_anywhere_optimum``).
    """
    k_max = log_pi_action.shape[1]
    action_mask = torch.arange(k_max, device=lengths.device)[None, :] < lengths[:, None]
    steps = torch.where(action_mask, log_pi_action, torch.zeros_like(log_pi_action))
    prefix = torch.nn.functional.pad(torch.cumsum(steps, dim=1), (1, 0))
    supervised = chunk_boundaries(lengths, k_max + 1, granularity)
    flow = torch.where(supervised, log_stop_reward.to(log_pi_stop.dtype) - log_pi_stop, torch.zeros_like(log_pi_stop))
    return _pairwise_balance(flow - prefix, supervised, subtb_lambda, consecutive=False, normalisation=normalisation)


def theta_mix(sft: Tensor, gfn: Tensor, theta: float) -> Tensor:
    """Flower's combination L = theta * L_SFT + (1 - theta) * L_GFN (paper's lambda = (1 - theta) / theta)."""
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must be in [0, 1], got {theta}")
    return theta * sft + (1.0 - theta) * gfn


# ---------------------------------------------------------------------------- preference alignment (RQ3)
# Sequence-level log-probabilities of whole titles (title tokens and T): the policy's ``log_pi_*`` and the reference's
# ``ref_*``, stored once per pair. Every loss is written through the implicit reward r = log pi(y | x) - log pi_ref(y | x).


def implicit_reward(log_pi: Tensor, ref: Tensor) -> Tensor:
    """r = log pi(y | x) - log pi_ref(y | x), elementwise (the reference is a constant: no gradient)."""
    return log_pi - ref.detach()


def dpo_loss(log_pi_chosen: Tensor, log_pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023): mean over pairs of -log σ(β (r_c - r_r)), all inputs [batch].

    ``label_smoothing`` ε (conservative DPO) treats a pair as flipped with probability ε:
    -(1 - ε) log σ(m) - ε log σ(-m) with m = β (r_c - r_r). Equals log 2 when the policy is the reference.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    m = beta * (implicit_reward(log_pi_chosen, ref_chosen) - implicit_reward(log_pi_rejected, ref_rejected))
    logsig = torch.nn.functional.logsigmoid
    return (-(1.0 - label_smoothing) * logsig(m) - label_smoothing * logsig(-m)).mean()


def softmax_dpo_loss(log_pi_chosen: Tensor, log_pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                     beta: float = 0.1, rejected_mask: Tensor | None = None) -> Tensor:
    """S-DPO (Chen et al. 2024), k rejected titles per chosen one: mean over rows of
    -log σ(-log Σ_k exp(β (r_k - r_c))).

    ``*_chosen`` [batch], ``*_rejected`` [batch, k]; ``rejected_mask`` [batch, k] (default all) drops padded
    rejected titles. k = 1 is :func:`dpo_loss`; at the reference the value is log(1 + k).
    """
    r_c = implicit_reward(log_pi_chosen, ref_chosen)
    margins = beta * (implicit_reward(log_pi_rejected, ref_rejected) - r_c[:, None])
    if rejected_mask is not None:
        margins = margins.masked_fill(~rejected_mask.bool(), float("-inf"))
    return -torch.nn.functional.logsigmoid(-torch.logsumexp(margins, dim=1)).mean()


def summed_margins_dpo_loss(log_pi_chosen: Tensor, log_pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                            beta: float = 0.1, rejected_mask: Tensor | None = None) -> Tensor:
    """"DMPO" as the authors coded it: -log σ(-β Σ_k (r_k - r_c)), the k margins summed inside one sigmoid
    (not DMPO's published objective). Shapes as :func:`softmax_dpo_loss`; k = 1 is DPO, log 2 at the reference."""
    r_c = implicit_reward(log_pi_chosen, ref_chosen)
    margins = implicit_reward(log_pi_rejected, ref_rejected) - r_c[:, None]
    if rejected_mask is not None:
        margins = margins * rejected_mask.to(margins.dtype)
    return -torch.nn.functional.logsigmoid(-beta * margins.sum(dim=1)).mean()


def rloo_loss(log_pi: Tensor, reward: Tensor, ref: Tensor, kl_coef: float = 0.05) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024) on n sampled titles per prompt, with a KL penalty to the reference.

    ``log_pi``, ``reward``, ``ref`` [batch, n >= 2]: the policy's log-probability of each sample (with gradient),
    its task reward and the reference's log-probability. The penalised reward R_i = reward_i - kl_coef (log pi_i -
    log ref_i) is a constant; each sample's advantage is R_i minus the mean of the other n - 1 samples' R, and the
    loss is -mean(A_i log pi_i). No value network: the other samples are the baseline (unbiased).
    """
    n = log_pi.shape[1]
    if n < 2:
        raise ValueError(f"rloo_loss needs n >= 2 samples per prompt for its leave-one-out baseline, got {n}")
    penalised = (reward - kl_coef * (log_pi - ref)).detach()
    advantage = penalised - (penalised.sum(dim=1, keepdim=True) - penalised) / (n - 1)
    return -(advantage * log_pi).mean()
