"""The RQ2 table: every method of the paper's comparison on one set-up (notebook 04, ``flower-lite compare``)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ...config import RQ2_METHODS, RewardSpec, TrainConfig
from .diagnostics import reward_ranking
from .methods import MethodResult, bigrec, d3, flower, ifairlrs, popularity, sasrec, sft_temperature
from .setup import RecSetup, rq2_config, rq2_setup

TABLE_KEYS = ("dgu", "mgu", "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid")
"""The exposure and diversity columns of :func:`results_table` (after hit@K / ndcg@K)."""
METHODS = RQ2_METHODS


def run_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], train: TrainConfig,
                   progress: bool = False, methods: Sequence[str] = METHODS) -> dict[str, MethodResult]:
    """The methods of the RQ2 table on one setup (default all of :data:`METHODS`): popularity, SASRec,
    BIGRec (SFT), SFT at T = 1.5, D3, IFairLRS and Flower (``train.objective`` with ``setup.reward``).
    ``new_model()`` returns the initial policy (the same weights every call); the trained methods use
    ``train`` (SFT for BIGRec and IFairLRS). Every method trains from its own copy with its own seeded
    steps, so a method's row does not depend on which others run."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: expected some of {list(METHODS)}")
    out = {}
    if "popularity" in methods:
        out["popularity"] = popularity(setup)
    if "SASRec" in methods and setup.sasrec is not None:
        out["SASRec"] = sasrec(setup)
    if {"BIGRec (SFT)", "SFT T=1.5", "D3"} & set(methods):
        sft = bigrec(setup, new_model(), train, progress=progress)
        decoded = {"BIGRec (SFT)": lambda: sft, "SFT T=1.5": lambda: sft_temperature(setup, sft, progress=progress),
                   "D3": lambda: d3(setup, sft, progress=progress)}
        out |= {name: make() for name, make in decoded.items() if name in methods}
    if "IFairLRS" in methods:
        out["IFairLRS"] = ifairlrs(setup, new_model(), train, progress=progress)
    if "Flower" in methods:
        out["Flower"] = flower(setup, new_model(), train, name="Flower", progress=progress)
    return out


def results_table(results: Sequence[MethodResult], ks: Sequence[int] = (10,), digits: int = 4) -> list[dict]:
    """Rows for :func:`flower_lite.viz.table_figure`: method, hit@K, ndcg@K, the exposure metrics."""
    keys = [f"{m}@{k}" for k in ks for m in ("hit", "ndcg")] + list(TABLE_KEYS)
    out = []
    for r in results:
        row = {"method": r.name}
        for k in keys:
            v = r.metrics[k]
            row[k] = int(v) if k in ("coverage", "invalid") else (round(v, digits) if math.isfinite(v) else v)
        out.append(row)
    return out


def rq2_table(data: str = "default", train: TrainConfig | None = None, reward: RewardSpec | None = None,
              train_rows: int | None = None, valid_rows: int = 64, test_rows: int = 128, seed: int = 0,
              threads: int | None = 1, progress: bool = True, methods: Sequence[str] = METHODS
              ) -> tuple[list[dict], dict[str, MethodResult]]:
    """The RQ2 comparison of notebook 04 in one call (``flower-lite compare``): every method of
    :func:`run_comparison` and the reward-ranking ceiling, on :func:`~.setup.rq2_setup` with the tiny
    offline policy, trained with ``train`` (default :func:`~.setup.rq2_config`: 600 steps of 16 rows,
    Flower's objective) and the reward ``reward`` (default: ``div_s``). The LLM methods are selected on
    ``valid_rows`` seeded validation rows and scored on ``test_rows`` seeded test rows. Returns the rows
    of :func:`results_table` (hit/ndcg @1, 5, 10 and the exposure metrics) and the results by method
    (``methods``: a subset of :data:`METHODS`; the ceiling row is always there).
    """
    train = train or rq2_config(seed=seed)
    setup, new_model, _ = rq2_setup(data, train_rows, valid_rows, test_rows, seed, threads=threads, reward=reward,
                                    progress=progress)
    results = run_comparison(setup, new_model, train, progress=progress, methods=methods)
    ceiling = f"R_u ceiling ({setup.reward.variant})"
    results[ceiling] = reward_ranking(ceiling, setup)
    return results_table(results.values(), ks=(1, 5, 10)), results
