"""The RQ2 table: every method of the paper's comparison on one set-up (notebook 04, ``flower-lite compare``)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import torch

from ...config import RQ2_METHODS, Objective, RewardSpec, RQ2Run, TrainConfig
from ...metrics import paired_difference, per_row_gains
from .diagnostics import reward_ranking
from .lm import run_config, run_setup
from .methods import MethodResult, flower, ifairlrs, popularity, sasrec, sft_family
from .setup import RecSetup

TABLE_KEYS = ("dgu", "mgu", "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid")
"""The exposure and diversity columns of :func:`results_table` (after hit@K / ndcg@K)."""
METHODS = RQ2_METHODS


def run_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], train: TrainConfig,
                   progress: bool = False, methods: Sequence[str] = METHODS, objectives: Sequence[Objective] = ()
                   ) -> dict[str, MethodResult]:
    """The methods of the RQ2 table on one setup (default all of :data:`METHODS`): popularity, SASRec,
    BIGRec (SFT), SFT at T = 1.5, D3, IFairLRS and Flower (``train.objective`` with ``setup.reward``).
    ``new_model()`` returns the initial policy (the same weights every call); the trained methods use
    ``train`` (SFT for BIGRec and IFairLRS). Every method trains from its own copy with its own seeded
    steps, so a method's row does not depend on which others run. ``objectives`` adds one Flower row per
    objective (e.g. ``Objective("distill")``, ``Objective("db", theta=0.995)``), named ``Flower (<objective>)``."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: expected some of {list(METHODS)}")
    out = {}
    if "popularity" in methods:
        out["popularity"] = popularity(setup)
    if "SASRec" in methods and setup.sasrec is not None:
        out["SASRec"] = sasrec(setup)
    if {"BIGRec (SFT)", "SFT T=1.5", "D3"} & set(methods):
        family = sft_family(setup, new_model(), train, progress=progress)
        out |= {name: r for name, r in family.items() if name in methods}
    if "IFairLRS" in methods:
        out["IFairLRS"] = ifairlrs(setup, new_model(), train, progress=progress)
    if "Flower" in methods:
        out["Flower"] = flower(setup, new_model(), train, name="Flower", progress=progress)
    for o in objectives:
        name = f"Flower ({o.name})"
        out[name] = flower(setup, new_model(), replace(train, objective=o), name=name, progress=progress)
    return out


BASELINE = "BIGRec (SFT)"
PAIRED_KEYS = ("hit@10", "ndcg@10")


def paired_to(results: dict[str, MethodResult], setup: RecSetup, baseline: str = BASELINE, keys: Sequence[str] = PAIRED_KEYS,
              resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per method (the baseline excepted), for each ``key`` (``hit@K`` / ``ndcg@K``): the mean per-row difference to
    ``baseline`` on the same test rows, its paired bootstrap 95% interval and randomization p-value
    (:func:`~flower_lite.metrics.paired_difference`), as ``{"d_hit@10", "d_hit@10_lo", "d_hit@10_hi", "p_hit@10", ...}``."""
    if baseline not in results:
        return {}
    targets = setup.data.test.target
    gains = {name: {} for name in results}
    for name, r in results.items():
        for key in keys:
            k = int(key.split("@")[1])
            gains[name][key] = per_row_gains(r.ranked, targets, k)[key]
    out = {}
    for name in results:
        if name == baseline:
            continue
        row = {}
        for key in keys:
            d = paired_difference(gains[name][key], gains[baseline][key], resamples, seed)
            row |= {f"d_{key}": d["diff"], f"d_{key}_lo": d["lo"], f"d_{key}_hi": d["hi"], f"p_{key}": d["p"]}
        out[name] = row
    return out


def results_table(results: Sequence[MethodResult], ks: Sequence[int] = (10,), digits: int = 4,
                  paired: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """Rows for :func:`flower_lite.viz.table_figure`: method, hit@K, ndcg@K, the exposure metrics and, for the
    methods in ``paired`` (:func:`paired_to`), the paired differences to the baseline."""
    keys = [f"{m}@{k}" for k in ks for m in ("hit", "ndcg")] + list(TABLE_KEYS)
    out = []
    for r in results:
        row = {"method": r.name}
        for k in keys:
            v = r.metrics[k]
            row[k] = int(v) if k in ("coverage", "invalid") else (round(v, digits) if math.isfinite(v) else v)
        row |= {k: round(v, digits) for k, v in (paired or {}).get(r.name, {}).items()}
        out.append(row)
    return out


def rq2_table(run: RQ2Run | None = None, train: TrainConfig | None = None, reward: RewardSpec | None = None,
              progress: bool = True, methods: Sequence[str] = METHODS, objectives: Sequence[Objective] = ()
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
