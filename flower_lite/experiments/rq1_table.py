"""The RQ1 table: does an objective teach a causal LM its reward? (results/README.md, notebook 03's real-model mode)

Every objective trains the same initial policy on the same target (``python results/rq1_table.py``), and every
GFlowNet objective trains a second time on the reversed popularity (the broken-reward control): an objective
learns its reward only if it ends closer to the true target than SFT *and* its control ends farther. Rows:

* ``initial``: the policy before training; ``sft``: SFT on a finite sample from the target (the paper's);
* ``subtb``: Flower as the authors ran RQ1 (modified SubTB, off-item penalty -15, no SFT term); its θ-mix;
* ``subtb, calibrated penalty``: the penalty set to the initial policy's mean log pi(T | incomplete title);
* ``subtb_exact``: SubTB on the exact flows (Flower's internal stop terms held out of the gradient);
* ``db``, ``tb`` (learned log Z), ``distill`` (flow distillation: every child of a visited state);
* with ``warm``: the GFlowNet objectives again, started from the SFT row's weights; and always the paper's
  reward-maximising baselines from the SFT weights (:data:`ALIGN_ROWS`): DPO on the authors' popularity pairs
  (:func:`~flower_lite.pairs.popularity_pairs`) and REINFORCE leave-one-out on the target probability
  (:func:`~.rq3.rloo_fit`), each beside its control (the pairs swapped; the reversed popularity's probability).

Every fit is exact: KL(P‖Q) and KL(Q‖P) of the trie-constrained title distribution Q against the true target P,
its entropy, and how many of P's 10 most popular titles are among Q's 10 most probable ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import metrics
from ..config import Objective, RewardSpec, RQ1Run
from ..distributions import stop_summary
from ..prompts import title_trie
from ..rewards import item_rewards
from ..train import Trainer, load_trainable, trainable_state
from .recipes import rq1_config
from .rq1 import RQ1_PROMPT, Target, eval_fn, load_model, load_target, rq1_policy, sft_sample, stop_token

__all__ = ["Row", "GFN_ROWS", "TABLE_ROWS", "ALIGN_ROWS", "align_row", "RQ1Bench", "prepare", "bench_setup", "fit_row", "fit_row_metrics", "rq1_table"]


@dataclass(frozen=True)
class Row:
    """One row of the table: an objective, on the true or the reversed reward, from the initial or the SFT weights."""

    name: str
    objective: Objective | None  # None: the initial policy, untrained
    calibrate: bool = False  # penalty := the initial policy's mean log pi(T | incomplete title)
    reversed: bool = False
    warm: bool = False
    align: str | None = None  # "dpo" | "rloo": a preference / reward-maximising baseline instead of an objective

    @property
    def label(self) -> str:
        return self.name + (", reversed popularity" if self.reversed else "") + (", from the SFT weights" if self.warm else "")


GFN_ROWS = (
    Row("subtb (Flower as published)", Objective("subtb")),
    Row("sft+subtb θ=0.995", Objective("subtb", theta=0.995)),
    Row("subtb, calibrated penalty", Objective("subtb"), calibrate=True),
    Row("subtb_exact (stop terms held out)", Objective("subtb_exact")),
    Row("db", Objective("db")),
    Row("tb", Objective("tb")),
    Row("distill", Objective("distill")),
)
TABLE_ROWS = (Row("initial", None), Row("sft", Objective("sft"))) + tuple(
    r for row in GFN_ROWS for r in (row, replace(row, reversed=True)))
"""The cold-start rows; :func:`rq1_table` adds the warm ones (the GFlowNet rows from the SFT weights)."""
ALIGN_ROWS = tuple(r for row in (Row("dpo", None, align="dpo", warm=True), Row("rloo", None, align="rloo", warm=True))
                   for r in (row, replace(row, reversed=True)))
"""DPO and the RL baseline from the SFT weights, each beside its broken-reward control."""
ALIGN_SETTINGS = {"beta": 0.1, "pairs_per_title": 64, "pairs_per_step": 64, "samples": 16, "kl_coef": 0.05}
"""DPO: β, the authors' pair count (6,400 for 100 titles) and pairs per step; RLOO: samples per step, KL weight."""


@dataclass
class RQ1Bench:
    """What every row shares: the target, the true trie, the policy (one frozen trunk and its cache for all
    rows), the initial trainable weights and the SFT sample."""

    run: RQ1Run
    target: Target
    tokenizer: object
    trie: object
    policy: object
    initial: dict[str, torch.Tensor]
    data: object
    stops: dict  # stop_summary of the initial policy
    seconds_to_prepare: float


def prepare(run: RQ1Run, seed: int = 0) -> RQ1Bench:
    """Load the model, build the trie and the policy (and the trunk's cache), measure the initial stop log-probs."""
    start = time.perf_counter()
    target = load_target(run.data, run.titles)
    model, tokenizer = load_model(run.model, target)
    trie = title_trie(tokenizer, target.titles, target.counts, stop=stop_token(run))
    policy = rq1_policy(run, model, tokenizer, trie)
    stops = stop_summary(trie, policy.stop_log_probs(RQ1_PROMPT, trie))
    data = sft_sample(target, run.sample_size, seed)
    return RQ1Bench(run, target, tokenizer, trie, policy, trainable_state(policy.module), data, stops,
                    time.perf_counter() - start)


def bench_setup(bench: RQ1Bench) -> dict:
    """The size of what every row shares: titles, trie nodes, the frozen trunk's stored states (bytes, None for the
    whole-model policy) and the seconds to load and build it all."""
    caches = getattr(bench.policy, "caches", {})
    return {"titles": len(bench.target.titles), "trie_nodes": bench.trie.num_nodes,
            "cache_bytes": sum(c.nbytes for c in caches.values()) if caches else None,
            "seconds_to_prepare": round(bench.seconds_to_prepare, 1)}


def fit_row(bench: RQ1Bench, row: Row, steps: int, start: dict[str, torch.Tensor], seed: int = 0,
            eval_every: int | None = None, progress: bool = False, **overrides) -> tuple[dict, list[dict]]:
    """Train ``row`` from the trainable weights ``start``; returns (its table row, its evaluation history)."""
    load_trainable(bench.policy.module, start)
    t0 = time.perf_counter()
    history: list[dict] = []
    if row.align is not None:
        history = align_row(bench, row, steps, seed, overrides.get("lr", rq1_config(Objective("sft")).lr))
    elif row.objective is not None:
        objective = row.objective
        if row.calibrate:
            objective = replace(objective, penalty=round(bench.stops["internal_mean"], 2))
        spec = replace(RewardSpec(variant="logp", pop_eps=0.0), reversed=row.reversed)
        train_trie = bench.trie.reweight(item_rewards(spec, bench.target.counts))
        config = rq1_config(objective, steps, seed=seed, **{"eval_every": eval_every or max(1, steps // 4), **overrides})
        trainer = Trainer(bench.policy, bench.tokenizer, train_trie, config, bench.data,
                          eval_fn=eval_fn(bench.trie, bench.target), progress=progress, desc=row.label)
        history = trainer.run().history
    return {"run": row.label, "penalty": objective.penalty if row.objective is not None and row.objective.loss == "subtb" else None,
            **fit_row_metrics(bench), "seconds": round(time.perf_counter() - t0, 1)}, history


def align_row(bench: RQ1Bench, row: Row, steps: int, seed: int, lr: float) -> list[dict]:
    """Train ``row.align`` (``dpo`` or ``rloo``, :data:`ALIGN_SETTINGS`) on the policy in place; its log per step."""
    from ..pairs import popularity_pairs
    from .rq3 import rloo_fit, title_preference_fit

    p = bench.trie.title_log_probs().exp()  # the target over titles, in the trie's order
    settings = ALIGN_SETTINGS
    if row.align == "rloo":
        reward = bench.trie.reweight(item_rewards(RewardSpec(variant="logp", pop_eps=0.0, reversed=True),
                                                  bench.target.counts)).title_log_probs().exp() if row.reversed else p
        return rloo_fit(bench.policy, bench.trie, RQ1_PROMPT, reward, steps, settings["samples"], settings["kl_coef"], lr, seed)
    rng = np.random.default_rng(seed)
    chosen, rejected = popularity_pairs(p.cpu().numpy(), settings["pairs_per_title"] * p.numel(), rng)
    if row.reversed:
        chosen, rejected = rejected, chosen
    return title_preference_fit(bench.policy, bench.trie, RQ1_PROMPT, chosen, rejected, "dpo", settings["beta"], lr, steps,
                                settings["pairs_per_step"], seed)


def fit_row_metrics(bench: RQ1Bench) -> dict:
    """Exact fit of the trie-constrained distribution Q to the true target P (module docstring)."""
    _, _, q = bench.policy.item_distributions(RQ1_PROMPT, bench.trie)
    p = bench.trie.title_log_probs().exp().cpu().numpy()
    q = q.cpu().numpy()
    top_p, top_q = set(np.argsort(-p)[:10].tolist()), set(np.argsort(-q)[:10].tolist())
    return {"kl": metrics.kl_divergence(p, q), "kl_reverse": metrics.kl_divergence(q, p), "entropy": metrics.entropy(q),
            "top10_overlap": len(top_p & top_q)}


def rq1_table(run: RQ1Run, steps: int = 200, seed: int = 0, warm: bool = True, rows=TABLE_ROWS, progress: bool = False,
              only=None, on_row=None, **overrides) -> tuple[list[dict], dict[str, list[dict]], RQ1Bench]:
    """Every row of ``rows`` (:data:`TABLE_ROWS`), then from the SFT row's weights the GFlowNet rows again (with
    ``warm``) and :data:`ALIGN_ROWS`, on ``run``'s model and target: ``(table rows, histories by row label, the shared
    bench)``. ``only``: the row names to keep (each with its control, cold and warm; the others are skipped, so every
    kept row is the same fit as in the whole table). ``on_row(row)`` is called with each table row as it is done (a
    long table can then show and keep its rows before it ends)."""
    keep = _row_filter(rows, only, warm)
    bench = prepare(run, seed)
    table, histories, sft_state = [], {}, None

    def fit(row: Row, start: dict, **more) -> None:
        out, histories[row.label] = fit_row(bench, row, steps, start, seed, progress=progress, **{**overrides, **more})
        table.append(out)
        if on_row is not None:
            on_row(out)

    for row in filter(keep, rows):
        fit(row, bench.initial)
        if row.name == "sft":
            sft_state = trainable_state(bench.policy.module)
    if sft_state is None:
        return table, histories, bench
    warm_rows = [replace(r, warm=True) for r in rows if warm and r.objective is not None and r.objective.gfn]
    for row in filter(keep, warm_rows):
        fit(row, sft_state, warmup_steps=0)
    for row in filter(keep, ALIGN_ROWS):
        fit(row, sft_state)
    return table, histories, bench


def _row_filter(rows, only, warm: bool):
    """The predicate of ``rq1_table``'s ``only``: an unknown name is an error, and so are rows from the SFT weights
    without the SFT row they start from."""
    if only is None:
        return lambda row: True
    known = list(dict.fromkeys(r.name for r in (*rows, *ALIGN_ROWS)))
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"unknown RQ1 rows {unknown}; choose among {known}")
    from_sft = {r.name for r in ALIGN_ROWS} | {r.name for r in rows if warm and r.objective is not None and r.objective.gfn}
    if "sft" not in only and from_sft & set(only):
        raise ValueError(f"the rows {sorted(from_sft & set(only))} start from the SFT weights: add 'sft' to the rows"
                         + (", or leave out the GFlowNet rows from them (warm=False, --no-warm)" if warm else ""))
    only = set(only)
    return lambda row: row.name in only
