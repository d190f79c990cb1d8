"""Preference alignment from a reference policy (the paper's RQ3): DPO-style training on stored reference log-probs.

A preference row is a prompt, its chosen title and k rejected titles (:mod:`flower_lite.pairs` draws them). The
reference's sequence log-probabilities log pi_ref(title + T | prompt) are computed once, when the pairs are built
(:func:`preference_pairs`), and stored on them; training never runs the reference again. The policy starts from
the reference's weights (start = reference, as the paper) and minimises one of the preference losses of
:mod:`flower_lite.losses`:

* ``dpo``: :func:`~flower_lite.losses.dpo_loss` on the first rejected title (RosePO is this loss on
  :func:`~flower_lite.pairs.popularity_negatives`);
* ``sdpo``: :func:`~flower_lite.losses.softmax_dpo_loss` over the k rejected titles;
* ``dmpo_as_coded``: :func:`~flower_lite.losses.summed_margins_dpo_loss` (the authors' DMPO code).

The reward-maximising baseline in the role of the paper's PPO is REINFORCE leave-one-out
(:func:`~flower_lite.losses.rloo_loss`, :func:`rloo_fit`): n titles sampled per step from the trie-constrained
policy, each one's advantage its KL-penalised reward minus the mean of the others'. It needs no value network (a
critic as large as the policy would double the cost on a CPU for a one-step episode) and its baseline is unbiased;
Ahmadian et al. (2024) report it on par with or above PPO for LLM fine-tuning. With one prompt (RQ1) the
constrained title distribution is exact (:meth:`~flower_lite.trunk.CachedTrunkPolicy.title_log_probs`), so the
sampled titles' log-probabilities are exact, and the reference's are computed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import check_fields, setting
from ..losses import dpo_loss, rloo_loss, softmax_dpo_loss, summed_margins_dpo_loss
from ..pairs import popularity_negatives, uniform_negatives
from ..train import batch_indices
from ..tree_attention import eval_mode
from ..trie import Trie

PREFERENCE_LOSSES = ("dpo", "sdpo", "dmpo_as_coded")


def sequence_log_probs(policy, trie: Trie, prompts: Sequence[str], items: Sequence[int], constrained: bool = False
                       ) -> Tensor:
    """log pi(title + T | prompt) of catalogue ``items`` [rows] after ``prompts`` [rows], float32 [rows], with gradients
    when enabled: one teacher-forced pass of ``policy`` (any policy of the training loop's protocol:
    :class:`~flower_lite.rollout.LMPolicy`, :class:`~flower_lite.trunk.CachedTrunkPolicy`,
    :class:`~flower_lite.row_trunk.RowTrunkPolicy` whose stored rows hold these (prompt, title) pairs).
    ``constrained``: the log-probability under trie-constrained sampling instead, every step renormalised over the
    trie children of its state (what the RL baseline samples from)."""
    items = torch.as_tensor(np.asarray(items, dtype=np.int64), device=trie.device)
    traj = trie.item_trajectories(items)
    batch = policy.prompts(list(prompts))
    if not constrained:
        log_pi, log_stop = policy.log_probs(batch, [traj], trie.eos_id)[0][:2]
        return log_pi.sum(dim=1) + log_stop.gather(1, traj.lengths.to(log_stop.device)[:, None]).squeeze(1)
    nodes = trie.walk(traj.tokens, traj.mask)  # [rows, K + 1]: s_0 .. s_k, -1 past the end
    child, real = trie.children_of(nodes)
    tokens = torch.where(real, trie.structure.token[child.clamp_min(0)], torch.zeros_like(child))
    log_pi, log_stop, log_children = policy.log_probs(batch, [traj], trie.eos_id, [tokens])[0]
    real = real.to(log_children.device)
    norm = torch.logsumexp(log_children.masked_fill(~real[:, : log_children.shape[1]], -math.inf), dim=-1)  # [rows, K + 1]
    lengths = traj.lengths.to(log_pi.device)
    steps = torch.arange(log_pi.shape[1], device=log_pi.device)[None, :] < lengths[:, None]
    title = (log_pi - torch.where(steps, norm[:, :-1], torch.zeros_like(log_pi))).sum(dim=1)
    return title + (log_stop - norm).gather(1, lengths[:, None]).squeeze(1)


@dataclass
class PreferencePairs:
    """Preference rows and the reference's stored log-probabilities: ``chosen`` [rows] and ``rejected`` [rows, k]
    item ids after ``prompts``; ``ref_chosen`` [rows] and ``ref_rejected`` [rows, k]: log pi_ref(title + T | prompt),
    float32, no gradient."""

    prompts: list[str]
    chosen: np.ndarray
    rejected: np.ndarray
    ref_chosen: Tensor
    ref_rejected: Tensor

    def __len__(self) -> int:
        return len(self.prompts)


def preference_pairs(reference, trie: Trie, prompts: Sequence[str], chosen: np.ndarray, rejected: np.ndarray,
                     batch_size: int = 32) -> PreferencePairs:
    """Pairs of ``prompts``, ``chosen`` [rows] and ``rejected`` [rows] or [rows, k] item ids, with the log-probs of
    the policy ``reference`` computed here, once, in batches of ``batch_size`` rows."""
    chosen, rejected = np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)
    rejected = rejected[:, None] if rejected.ndim == 1 else rejected
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"preference_pairs: {len(prompts)} prompts, {len(chosen)} chosen and {len(rejected)} rejected rows")
    if (rejected == chosen[:, None]).any():
        raise ValueError("preference_pairs: a rejected item equals its row's chosen item")
    k = rejected.shape[1]
    items = np.concatenate([chosen[:, None], rejected], axis=1).ravel()
    repeated = [p for p in prompts for _ in range(k + 1)]
    step = batch_size * (k + 1)
    with torch.no_grad():
        ref = torch.cat([sequence_log_probs(reference, trie, repeated[lo:lo + step], items[lo:lo + step]).cpu()
                         for lo in range(0, len(items), step)]).view(len(prompts), k + 1)
    return PreferencePairs(list(prompts), chosen, rejected, ref[:, 0].contiguous(), ref[:, 1:].contiguous())


def preference_loss(name: str, pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float) -> Tensor:
    """The loss ``name`` (one of :data:`PREFERENCE_LOSSES`) on sequence log-probs: chosen [rows], rejected [rows, k]."""
    if name == "dpo":
        return dpo_loss(pi_c, pi_r[:, 0], ref_c, ref_r[:, 0], beta)
    if name == "sdpo":
        return softmax_dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
    if name == "dmpo_as_coded":
        return summed_margins_dpo_loss(pi_c, pi_r, ref_c, ref_r, beta)
    raise ValueError(f"unknown preference loss {name!r}: expected one of {PREFERENCE_LOSSES}")


def _check_loss(loss: str) -> None:
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {loss!r}: expected one of {PREFERENCE_LOSSES}")


def _step(optimizer, value: Tensor, pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, step: int) -> dict:
    """One optimizer step on ``value``; the log entry: the loss and the mean margin r_c - mean_k r_k."""
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    margin = ((pi_c - ref_c) - (pi_r - ref_r).mean(dim=1)).mean().detach()
    return {"step": step + 1, "loss": value.detach().item(), "margin": margin.item()}


def align(policy, trie: Trie, pairs: PreferencePairs, loss: str = "dpo", beta: float = 0.3, lr: float = 1e-4,
          steps: int = 100, batch_size: int = 8, seed: int = 0, progress: str | None = None) -> list[dict]:
    """Train ``policy`` (started from the reference) on ``pairs`` with ``loss``: AdamW on its trainable weights,
    seeded batches, each step one pass over the batch's chosen and rejected titles (``progress``: the label of a
    progress bar). Returns the log per step."""
    _check_loss(loss)
    params = [p for p in policy.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    k = pairs.rejected.shape[1]
    policy.module.train()
    log = []
    for step in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
        rows = batch_indices(len(pairs), batch_size, step, seed)
        items = np.concatenate([pairs.chosen[rows, None], pairs.rejected[rows]], axis=1).ravel()
        lp = sequence_log_probs(policy, trie, [pairs.prompts[i] for i in rows for _ in range(k + 1)], items)
        lp = lp.view(len(rows), k + 1)
        ref_c, ref_r = pairs.ref_chosen[rows].to(lp.device), pairs.ref_rejected[rows].to(lp.device)
        value = preference_loss(loss, lp[:, 0], lp[:, 1:], ref_c, ref_r, beta)
        log.append(_step(optimizer, value, lp[:, 0], lp[:, 1:], ref_c, ref_r, step))
    policy.module.eval()
    return log


def rloo_fit(policy, trie, prompt: str, rewards: Tensor, steps: int = 100, samples: int = 8, kl_coef: float = 0.05,
             lr: float = 1e-3, seed: int = 0) -> list[dict]:
    """Reward maximisation on one prompt (RQ1's RL baseline): ``policy`` (a :class:`~flower_lite.trunk.CachedTrunkPolicy`
    or :class:`~flower_lite.rollout.LMPolicy` on ``trie``) started from the reference, ``rewards`` [num_titles] each title's
    reward (RQ1: its target probability). Each step samples ``samples`` titles from the exact trie-constrained
    distribution and takes one AdamW step on :func:`~flower_lite.losses.rloo_loss`. Returns the log per step: the
    expected reward Σ q R and KL(q ‖ q_ref) of the distribution the step started from."""
    if samples < 2:
        raise ValueError(f"rloo_fit needs samples >= 2 per step (leave-one-out baseline), got {samples}")
    rewards = torch.as_tensor(rewards, dtype=torch.float64, device=policy.device)
    if rewards.shape != (int(trie.terminal_nodes.numel()),):
        raise ValueError(f"rewards: expected one per title ({int(trie.terminal_nodes.numel())}), got {tuple(rewards.shape)}")
    with torch.no_grad():
        _, ref = policy.title_log_probs(prompt, trie)  # the reference, once
    params = [p for p in policy.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    log = []
    for step in range(steps):
        _, log_q = policy.title_log_probs(prompt, trie)
        q = log_q.detach().exp()
        idx = torch.multinomial(q.cpu().float(), samples, replacement=True, generator=generator).to(log_q.device)
        value = rloo_loss(log_q[idx][None], rewards[idx][None], ref[idx][None], kl_coef)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        log.append({"step": step + 1, "expected_reward": float((q * rewards).sum()),
                    "kl_to_reference": float((q * (log_q.detach() - ref)).sum())})
    return log


def title_preference_fit(policy, trie, prompt: str, chosen: np.ndarray, rejected: np.ndarray, loss: str = "dpo",
                         beta: float = 0.1, lr: float = 1e-3, steps: int = 100, batch_size: int = 64, seed: int = 0
                         ) -> list[dict]:
    """Preference training on one prompt (RQ1's DPO baseline): ``chosen`` [pairs] and ``rejected`` [pairs] or
    [pairs, k] title indices (``trie.terminal_nodes`` order); ``policy`` a :class:`~flower_lite.trunk.CachedTrunkPolicy`
    or :class:`~flower_lite.rollout.LMPolicy`. The reference's log pi(title + T | prompt) of every title are computed
    once; each step scores only its batch's distinct titles (:func:`sequence_log_probs`: on the frozen trunk, one pass
    of the top layers over the states on their paths, not over the whole trie). Returns the log per step (loss, mean
    margin)."""
    _check_loss(loss)
    chosen = torch.as_tensor(np.asarray(chosen, dtype=np.int64))
    rejected = torch.as_tensor(np.asarray(rejected, dtype=np.int64))
    rejected = rejected[:, None] if rejected.ndim == 1 else rejected
    with torch.no_grad():
        ref, _ = policy.title_log_probs(prompt, trie)  # the reference, once
    items = trie.title_first_item().to(trie.device)
    params = [p for p in policy.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    log = []
    for step in range(steps):
        rows = torch.as_tensor(batch_indices(len(chosen), batch_size, step, seed))
        c, r = chosen[rows], rejected[rows]
        titles, where = torch.unique(torch.cat([c, r.flatten()]), return_inverse=True)
        with eval_mode(torch.nn.ModuleList([policy.module])):  # as the reference: no dropout
            log_p = sequence_log_probs(policy, trie, [prompt] * titles.numel(), items[titles.to(trie.device)])
        log_p = log_p[where.to(log_p.device)]
        pi_c, pi_r = log_p[: c.numel()], log_p[c.numel():].view(r.shape)
        c, r = c.to(ref.device), r.to(ref.device)
        value = preference_loss(loss, pi_c, pi_r, ref[c], ref[r], beta)
        log.append(_step(optimizer, value, pi_c, pi_r, ref[c], ref[r], step))
    return log


# ---------------------------------------------------------------------------- RQ3 on the RQ2 set-up
ALIGNERS: dict[str, tuple[str, str | None, int]] = {
    "S-DPO": ("sdpo", "uniform", 3),
    "DMPO (as coded)": ("dmpo_as_coded", "uniform", 3),
    "RosePO": ("dpo", "popularity", 1),
    "RLOO": ("rloo", None, 4),
}
"""Aligner -> (loss, rejected items, k): S-DPO and the authors' DMPO on 3 uniform catalogue items other than the
target, RosePO on one item drawn in proportion to its history popularity (docs/method.md 5); RLOO, the
reward-maximising baseline, on k = 4 titles sampled per prompt (:func:`rloo_align`)."""


@dataclass(frozen=True)
class AlignConfig:
    """Preference training on the RQ2 rows (the paper's lr 1e-6 is for full fine-tuning; LoRA on the top layers
    needs more)."""

    beta: float = setting(0.3, "β of the preference loss (the paper's)", minimum=1e-9)
    lr: float = setting(1e-4, "AdamW learning rate of the aligned weights", minimum=0.0)
    steps: int = setting(100, "optimizer steps", minimum=1)
    batch_size: int = setting(8, "preference rows per step", minimum=1)
    rows: int | None = setting(None, "the most recent train rows that give pairs (default: all)", minimum=1)
    seed: int = setting(0, "seed of the rejected items and the batches")

    def __post_init__(self) -> None:
        check_fields(self)


def rejected_items(setup, negatives: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rejected items [train rows, k] for the train targets of an RQ2 ``setup``: ``uniform`` (k distinct other items)
    or ``popularity`` (one, in proportion to the train history counts c(i))."""
    targets = np.asarray(setup.data.train.target)
    if negatives == "uniform":
        return uniform_negatives(targets, setup.data.num_items, k, rng)
    if negatives == "popularity":
        return popularity_negatives(targets, setup.counts, rng)[:, None]
    raise ValueError(f"unknown rejected items {negatives!r}: expected uniform or popularity")


def on_pairs(policy, setup, prompts: Sequence[str], chosen: np.ndarray, rejected: np.ndarray, cache_dir=None):
    """``policy`` able to score the pairs' titles: a :class:`~flower_lite.row_trunk.RowTrunkPolicy` gets the stored
    lower-layer states of every (prompt, chosen) and (prompt, rejected) row (computed once, in ``cache_dir``, each
    prompt's lower layers once for its k + 1 titles: tree attention); a plain model becomes an
    :class:`~flower_lite.rollout.LMPolicy`."""
    from ..rollout import LMPolicy
    from ..row_trunk import RowTrunkPolicy, row_states, trie_rows

    if not isinstance(policy, RowTrunkPolicy):
        return LMPolicy(policy, setup.tokenizer)
    k = rejected.shape[1]
    items = np.concatenate([chosen[:, None], rejected], axis=1).ravel()
    rows = trie_rows(setup.tokenizer, [p for p in prompts for _ in range(k + 1)], items, setup.trie)
    return policy.with_states(row_states(policy.module, list(dict.fromkeys(rows)), policy.split, cache_dir))


def align_from(name: str, setup, start_policy, aligner: str, config: AlignConfig = AlignConfig(), cache_dir=None,
               progress: bool = False):
    """Align ``start_policy`` (a start method's trained policy; start = reference) with ``aligner`` (one of
    :data:`ALIGNERS`) on pairs of the most recent ``config.rows`` train rows (chosen: the target), then decode the test
    rows and score them as an RQ2 method (:class:`~.rq2.methods.MethodResult`, its history the alignment log)."""
    from .rq2.methods import decode, score

    if aligner not in ALIGNERS:
        raise ValueError(f"unknown aligner {aligner!r}: expected one of {list(ALIGNERS)}")
    loss, negatives, k = ALIGNERS[aligner]
    if loss == "rloo":
        module, log = rloo_align(setup, start_policy, config, samples=k, progress=name if progress else None)
        ranked = decode(module, setup, progress=f"decode {name}" if progress else None)
        return score(name, setup, ranked, model=module, history=log)
    rng = np.random.default_rng(config.seed)
    rejected = rejected_items(setup, negatives, k, rng)
    n = len(rejected) if config.rows is None else min(config.rows, len(rejected))
    prompts, chosen = setup.prompts["train"][-n:], np.asarray(setup.data.train.target)[-n:]
    policy = on_pairs(start_policy, setup, prompts, chosen, rejected[-n:], cache_dir)
    pairs = preference_pairs(policy, setup.trie, prompts, chosen, rejected[-n:])
    log = align(policy, setup.trie, pairs, loss, config.beta, config.lr, config.steps, config.batch_size, config.seed,
                name if progress else None)
    ranked = decode(policy.module, setup, progress=f"decode {name}" if progress else None)
    return score(name, setup, ranked, model=policy.module, history=log)


RLOO_KL = 0.05
"""The KL weight of the RQ3 RL baseline (:func:`rloo_align`)."""


def sampled_items(trie: Trie, traj) -> Tensor:
    """The catalogue item of each sampled title [batch] (a duplicate title: its lowest item id)."""
    tokens, lengths = traj.tokens.to(trie.device), traj.lengths.to(trie.device)
    nodes = trie.walk(tokens, traj.mask.to(trie.device))
    title = torch.searchsorted(trie.terminal_nodes, trie.stop_child(nodes.gather(1, lengths[:, None]).squeeze(1)))
    return trie.title_first_item().to(trie.device)[title]


def rloo_align(setup, start_policy, config: AlignConfig = AlignConfig(), samples: int = 4, kl_coef: float = RLOO_KL,
               progress: str | None = None):
    """The RQ3 RL baseline (the role of the paper's PPO): REINFORCE leave-one-out from ``start_policy``'s weights.
    Each step samples ``samples`` trie-constrained titles for each of ``config.batch_size`` train prompts (each
    prompt run once for its samples); a title's reward is its SASRec preference p_ui, min-max normalised over the
    row's catalogue (the paper's PPO reward), and its KL penalty compares the policy's log-probability with the
    start's. Both are the log-probabilities of trie-constrained sampling, the distribution the titles are drawn
    from, so the gradient is the policy gradient of what is sampled. On the per-row trunk
    (:class:`~flower_lite.row_trunk.RowTrunkPolicy`) the sampled (prompt, title) rows get their lower-layer states
    once per step (tree attention: each prompt once) and the top layers score them, the reference being the
    start's top-layer weights put back for one pass; a plain model runs whole, beside a frozen copy as the
    reference. Returns the trained module and its log per step (loss, mean reward, mean log pi - log pi_ref of the
    samples); ``progress``: the label of a progress bar."""
    import copy

    from ..rollout import LMPolicy
    from ..row_trunk import RowTrunkPolicy, row_states, trie_rows
    from ..train import load_trainable, trainable_state

    if setup.preferences is None:
        raise ValueError("the RL baseline's reward is SASRec's p_ui: build the set-up with a SASRec")
    module = getattr(start_policy, "module", start_policy)
    sampler = LMPolicy(module, setup.tokenizer)
    on_rows = isinstance(start_policy, RowTrunkPolicy)
    if on_rows:
        start_weights = trainable_state(module)
    else:
        reference = LMPolicy(copy.deepcopy(module).eval().requires_grad_(False), setup.tokenizer)
    train_rows = len(setup.data.train)
    first = 0 if config.rows is None else max(0, train_rows - config.rows)
    prefs = setup.preferences[setup.offsets.get("train", 0):][:train_rows].double()
    low, high = prefs.min(dim=1, keepdim=True).values, prefs.max(dim=1, keepdim=True).values
    scaled = (prefs - low) / (high - low).clamp_min(1e-12)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    log = []
    for step in tqdm(range(config.steps), desc=progress, disable=progress is None, leave=False):
        rows = first + batch_indices(train_rows - first, config.batch_size, step, config.seed)
        distinct = [setup.prompts["train"][r] for r in rows]
        prompts = [p for p in distinct for _ in range(samples)]
        module.eval()  # sampling and the reference without dropout
        with torch.no_grad():
            traj = sampler.sample(sampler.prompts(distinct), setup.trie, 1.0, generator, setup.trie.max_path_length,
                                  repeats=samples)
        items = sampled_items(setup.trie, traj).cpu()
        reward = scaled[torch.as_tensor(np.repeat(rows, samples)), items].view(len(rows), samples)
        if on_rows:
            stored = trie_rows(setup.tokenizer, prompts, items.numpy(), setup.trie)
            policy = start_policy.with_states(row_states(module, list(dict.fromkeys(stored)), start_policy.split))
            with torch.no_grad():
                now = trainable_state(module)
                load_trainable(module, start_weights)
                ref = sequence_log_probs(policy, setup.trie, prompts, items.numpy(), constrained=True)
                load_trainable(module, now)
        else:
            policy = sampler
            with torch.no_grad():
                ref = sequence_log_probs(reference, setup.trie, prompts, items.numpy(), constrained=True)
        module.train()
        lp = sequence_log_probs(policy, setup.trie, prompts, items.numpy(), constrained=True).view(len(rows), samples)
        ref = ref.view(len(rows), samples)
        value = rloo_loss(lp, reward.to(lp), ref, kl_coef)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        log.append({"step": step + 1, "loss": value.detach().item(), "reward": float(reward.mean()),
                    "kl": float((lp.detach() - ref).mean())})
    module.eval()
    return module, log


def start_policy(new_policy, start) -> object:
    """A fresh policy from ``new_policy()`` carrying the trained weights of ``start`` (an RQ2 method's result)."""
    from ..train import load_trainable, trainable_state

    policy = new_policy()
    load_trainable(getattr(policy, "module", policy), trainable_state(start.model))
    return policy


def rq3_table(run=None, train=None, config: AlignConfig = AlignConfig(), aligners: Sequence[str] = tuple(ALIGNERS),
              objectives: Sequence = (), progress: bool = True) -> tuple[list[dict], dict, object]:
    """RQ3 on an RQ2 set-up (:func:`~.rq2.lm.run_setup` of ``run``): BIGRec (SFT), Flower and Flower with each of
    ``objectives`` train as in RQ2 (``train``); every ``aligner`` then starts from each of them (start = reference).
    Returns the rows (:func:`~.rq2.compare.results_table`; an aligned row carries its paired difference to its own
    start in HR@10 and NDCG@10), the results by name and the set-up (:class:`~.rq2.setup.RecSetup`)."""
    from ..config import RQ2Run
    from .rq2.compare import paired_to, results_table, run_comparison
    from .rq2.lm import run_config, run_setup

    run = run or RQ2Run()
    train = train or run_config(run, seed=run.seed)
    setup, new_policy, _ = run_setup(run, progress=progress)
    starts = run_comparison(setup, new_policy, train, progress=progress, methods=["popularity", "BIGRec (SFT)", "Flower"],
                            objectives=objectives)
    results, paired = dict(starts), {}
    for start_name, start in starts.items():
        if start.model is None:
            continue
        for aligner in aligners:
            name = f"{aligner} from {start_name}"
            policy = start_policy(new_policy, start)
            results[name] = align_from(name, setup, policy, aligner, config, run.cache_dir if run.pretrained else None,
                                       progress)
            pair = {start_name: start, name: results[name]}
            paired[name] = paired_to(pair, setup, baseline=start_name, seed=run.seed)[name]
    return results_table(results.values(), ks=(5, 10), paired=paired), results, setup
