"""The RQ2 table: every method of the paper's comparison on one set-up (notebook 04, ``flower-lite compare``)."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, Sequence

import torch

from ...config import RQ2_METHODS, Objective, RewardSpec, RQ2Run, TrainConfig
from ...metrics import EXPOSURE_KEYS, paired_difference, paired_exposure_difference, per_row_gains
from .diagnostics import reward_ranking
from .lm import run_config, run_setup
from .methods import MethodResult, decode, flower, ifairlrs, popularity, sasrec, score, sft_family, train_model
from .setup import RecSetup

TABLE_KEYS = ("dgu", "mgu", "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid")
"""The exposure and diversity columns of :func:`results_table` (after hit@K / ndcg@K)."""
METHODS = RQ2_METHODS


Candidates = Objective | Sequence[Objective]
"""One Flower row of a comparison: an objective, or several (a θ grid) of which validation keeps one."""


def run_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], train: TrainConfig,
                   progress: bool = False, methods: Sequence[str] = METHODS, objectives: Sequence[Candidates] = ()
                   ) -> dict[str, MethodResult]:
    """The methods of the RQ2 table on one setup (default all of :data:`METHODS`): popularity, SASRec,
    BIGRec (SFT), SFT at T = 1.5, D3, IFairLRS and Flower (``train.objective`` with ``setup.reward``).
    ``new_model()`` returns the initial policy (the same weights every call); the trained methods use
    ``train`` (SFT for BIGRec and IFairLRS). Every method trains from its own copy with its own seeded
    steps, so a method's row does not depend on which others run. ``objectives`` adds one Flower row per
    objective (e.g. ``Objective("distill")``, ``Objective("db", theta=0.995)``), named ``Flower (<objective>)``; an
    entry that is a sequence of objectives (a θ grid) trains each and keeps the one :func:`select_on_validation`
    picks."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: expected some of {list(METHODS)}")
    out = {}
    if "popularity" in methods:
        out["popularity"] = popularity(setup)
    if "SASRec" in methods and setup.sasrec is not None:
        out["SASRec"] = sasrec(setup)
    if {"BIGRec (SFT)", "SFT T=1.5", "D3"} & set(methods):
        out |= sft_family(setup, new_model(), train, progress=progress, names=methods)
    if "IFairLRS" in methods:
        out["IFairLRS"] = ifairlrs(setup, new_model(), train, progress=progress)
    if "Flower" in methods:
        out["Flower"] = flower(setup, new_model(), train, name="Flower", progress=progress)
    for o in objectives:
        if isinstance(o, Objective):
            name = f"Flower ({o.name})"
            out[name] = flower(setup, new_model(), replace(train, objective=o), name=name, progress=progress)
        else:
            result = select_on_validation(setup, new_model, train, o, progress)
            out[result.name] = result
    return out


SELECTION_KEY = "ndcg@10"
"""What :func:`select_on_validation` maximises on the validation rows (finer-grained than hit@10 on few rows)."""


def select_on_validation(setup: RecSetup, new_model: Callable[[], torch.nn.Module], train: TrainConfig,
                         candidates: Sequence[Objective], progress: bool = False) -> MethodResult:
    """Train Flower with every objective of ``candidates`` (e.g. ``sft+db`` at θ = 0.99, 0.995, 0.999), decode the
    validation rows with each, and keep the one with the largest validation NDCG@10 (ties: the first); only that
    one decodes the test rows. The row is named ``Flower (<objective>, θ on valid of a, b, c)`` and its
    ``history`` ends with ``{"selection": [{"objective", "valid_ndcg@10", "valid_hit@10"}, ...]}``."""
    if not candidates or not all(o.gfn for o in candidates):
        raise ValueError(f"select_on_validation needs GFlowNet objectives to choose from, got {list(candidates)}")
    targets = setup.data.valid.target
    trained, scores = [], []
    for o in candidates:
        t0 = time.perf_counter()
        result = train_model(setup, new_model(), replace(train, objective=o), progress=progress, name=f"Flower ({o.name})")
        ranked = decode(result.model, setup, split="valid", progress=f"validate {o.name}" if progress else None)
        gains = per_row_gains(ranked, targets, 10)
        scores.append({"objective": o.name, **{f"valid_{k}": float(v.mean()) for k, v in gains.items()}})
        trained.append((result, time.perf_counter() - t0))
    best = max(range(len(candidates)), key=lambda i: (scores[i][f"valid_{SELECTION_KEY}"], -i))
    result = trained[best][0]
    grid = ", ".join(f"{o.theta:g}" for o in candidates)
    name = f"Flower ({candidates[best].name}, θ on valid of {grid})"
    t0 = time.perf_counter()
    ranked = decode(result.model, setup, progress=f"decode {name}" if progress else None)
    return score(name, setup, ranked, model=result.model, history=result.history + [{"selection": scores}],
                 best_step=result.best_step, seconds={"train": sum(s for _, s in trained), "decode": time.perf_counter() - t0})


BASELINE = "BIGRec (SFT)"
PAIRED_KEYS = ("hit@10", "ndcg@10", *EXPOSURE_KEYS)


def paired_to(results: dict[str, MethodResult], setup: RecSetup, baseline: str = BASELINE, keys: Sequence[str] = PAIRED_KEYS,
              resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per method (the baseline excepted), for each ``key``: the difference to ``baseline`` on the same test rows,
    its paired bootstrap 95% interval and randomization p-value, as ``{"d_hit@10", "d_hit@10_lo", "d_hit@10_hi",
    "p_hit@10", ...}``. ``hit@K`` / ``ndcg@K``: the mean per-row difference
    (:func:`~flower_lite.metrics.paired_difference`); the exposure metrics (DGU, MGU, coverage, Gini, tail share):
    the list-level difference, recomputed on each resample of the rows
    (:func:`~flower_lite.metrics.paired_exposure_difference`)."""
    if baseline not in results:
        return {}
    targets = setup.data.test.target
    base = results[baseline]
    listed = [k for k in keys if k in EXPOSURE_KEYS]
    gains = lambda ranked, key: per_row_gains(ranked, targets, int(key.split("@")[1]))[key]  # noqa: E731
    base_gains = {key: gains(base.ranked, key) for key in keys if key not in EXPOSURE_KEYS}
    out = {}
    for name, r in results.items():
        if name == baseline:
            continue
        diffs = paired_exposure_difference(r.ranked, base.ranked, setup.counts, listed, resamples, seed,
                                           n_groups=setup.config.n_groups) if listed else {}
        for key, b in base_gains.items():
            diffs[key] = paired_difference(gains(r.ranked, key), b, resamples, seed)
        row = {}
        for key in keys:
            d = diffs[key]
            row |= {f"d_{key}": d["diff"], f"d_{key}_lo": d["lo"], f"d_{key}_hi": d["hi"], f"p_{key}": d["p"]}
        out[name] = row
    return out


def results_table(results: Sequence[MethodResult], ks: Sequence[int] = (10,), digits: int = 4,
                  paired: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """Rows for :func:`flower_lite.viz.table_figure`: method, hit@K, ndcg@K, the exposure metrics, for the
    methods in ``paired`` (:func:`paired_to`) the paired differences to the baseline, and for a row chosen among
    candidates (:func:`select_on_validation`) their validation scores (``selection``)."""
    keys = [f"{m}@{k}" for k in ks for m in ("hit", "ndcg")] + list(TABLE_KEYS)
    out = []
    for r in results:
        row = {"method": r.name}
        for k in keys:
            v = r.metrics[k]
            row[k] = int(v) if k in ("coverage", "invalid") else (round(v, digits) if math.isfinite(v) else v)
        row |= {k: round(v, digits) for k, v in (paired or {}).get(r.name, {}).items()}
        if r.history and "selection" in r.history[-1]:  # select_on_validation's scores of every candidate
            row["selection"] = [{k: round(v, digits) if isinstance(v, float) else v for k, v in s.items()}
                                for s in r.history[-1]["selection"]]
        out.append(row)
    return out


def rq2_table(run: RQ2Run | None = None, train: TrainConfig | None = None, reward: RewardSpec | None = None,
              progress: bool = True, methods: Sequence[str] = METHODS, objectives: Sequence[Candidates] = ()
              ) -> tuple[list[dict], dict[str, MethodResult]]:
    """The RQ2 comparison of notebook 04 in one call (``flower-lite compare``): every method of
    :func:`run_comparison` (``methods``: a subset of :data:`METHODS`, plus one Flower row per ``objectives``) and
    the reward-ranking ceiling, on :func:`~.lm.run_setup` of ``run`` (default: the tiny offline model on the
    synthetic data), trained with ``train`` (default :func:`~.lm.run_config`: Flower's objective) and the reward
    ``reward`` (default ``div_s``). The LLM methods are selected on ``run.valid_rows`` seeded validation rows and
    scored on ``run.test_rows`` seeded test rows. Returns the rows of :func:`results_table` (hit/ndcg @1, 5, 10,
    the exposure metrics, and every row's paired difference to BIGRec (SFT) in hit@10 and ndcg@10) and the
    results by method.
    """
    run = run or RQ2Run()
    train = train or run_config(run, seed=run.seed)
    setup, new_model, _ = run_setup(run, reward, progress)
    results = run_comparison(setup, new_model, train, progress=progress, methods=methods, objectives=objectives)
    ceiling = f"R_u ceiling ({setup.reward.variant})"
    results[ceiling] = reward_ranking(ceiling, setup)
    paired = paired_to(results, setup, seed=run.seed)
    return results_table(results.values(), ks=(1, 5, 10), paired=paired), results


SEED_KEYS = ("hit@5", "hit@10", "ndcg@5", "ndcg@10", "dgu", "mgu", "coverage", "gini", "tail_share",
             *(f"d_{k}" for k in PAIRED_KEYS))
"""The columns :func:`~flower_lite.metrics.seed_summary` aggregates (the paired differences to BIGRec (SFT) included:
accuracy and exposure, :data:`PAIRED_KEYS`)."""
