"""The baselines of the paper's RQ2 (METHOD.md 7), on the pipeline of :mod:`flower_lite.recommend`.

* :func:`popularity`: the same most-counted items for everyone.
* :func:`sasrec`: SASRec as a recommender (its top-K over all items).
* :func:`bigrec`: SFT on the target titles (BIGRec), beam search with length_penalty 1.0.
* :func:`sft_temperature`: the SFT model decoded at temperature 1.5 (logits / 1.5 before the
  log-softmax of every beam step; :class:`flower_lite.decoding.TemperedLogSoftmax`).
* :func:`d3`: the SFT model decoded with length_penalty 0.0 (D3's fix of the length normalisation:
  beams are ranked by the title's total log-probability).
* :func:`ifairlrs`: SFT with IFairLRS's per-sample group weights (Jiang et al., WWW 2024, the
  in-learning reweighting). A row whose target is in popularity group g gets
  ``w_g = GP_hist(g) / GP_target(g)``: the group's share of train history interactions over its share
  of train targets, so groups that are more often the *answer* than the history suggests are
  down-weighted. The weights really reweight the samples (:func:`flower_lite.losses.sft_loss` with
  ``weight=``); the reference averaged them away (a mean of the loss over the whole batch, then
  times the weight: mean(w) * mean(loss), METHOD.md 9 item 6).

:func:`flower` trains Flower on the same pipeline and :func:`run_comparison` runs the whole RQ2
table (every method from the same initial weights, the same training budget and selection rule).

Groups are the package's one rule (:func:`flower_lite.metrics.popularity_group_ids`) on the
item-level train history counts, the groups DGU / MGU are measured on.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from . import recommend as rec
from .data import load_amazon, load_default_catalog, next_item_data_from_catalog
from .data.splits import NextItemData
from .metrics import popularity_group_ids
from .models import make_tiny_model
from .recommend import MethodResult, RecSetup, redecode, run_method, score
from .sasrec import SASRecConfig, popularity_recommend, train_sasrec
from .train import TrainConfig

__all__ = ["popularity", "sasrec", "bigrec", "sft_temperature", "d3", "ifairlrs_group_weights", "ifairlrs_weights",
           "ifairlrs", "flower", "run_comparison", "reversed_popularity", "target_fit_comparison", "rq2_data",
           "rq2_setup", "rq2_table"]

SFT_TEMPERATURE = 1.5
D3_LENGTH_PENALTY = 0.0


def _k(setup: RecSetup) -> int:
    return setup.config.decode_settings().num_return


def popularity(setup: RecSetup) -> MethodResult:
    """Every test row gets the K items with the largest train history count c(i)."""
    t0 = time.perf_counter()
    ranked = popularity_recommend(setup.counts, len(setup.data.test), _k(setup))
    return score("popularity", setup, ranked, seconds={"train": 0.0, "decode": time.perf_counter() - t0})


def sasrec(setup: RecSetup, model=None) -> MethodResult:
    """SASRec's top-K items for each test history (``model`` defaults to ``setup.sasrec``)."""
    model = model if model is not None else setup.sasrec
    if model is None:
        raise ValueError("no SASRec: pass one, or build the setup with prepare(..., sasrec=...)")
    t0 = time.perf_counter()
    ranked = model.recommend(setup.data.test.history, k=_k(setup))
    return score("SASRec", setup, ranked, seconds={"train": 0.0, "decode": time.perf_counter() - t0})


def bigrec(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, **kwargs) -> MethodResult:
    """BIGRec: SFT (``train.method`` forced to ``"sft"``), beam search with length_penalty 1.0."""
    return run_method("BIGRec (SFT)", setup, model, replace(train, method="sft"), **kwargs)


def sft_temperature(setup: RecSetup, sft: MethodResult, temperature: float = SFT_TEMPERATURE) -> MethodResult:
    """The SFT model's beam search at ``temperature`` (default 1.5)."""
    return redecode(f"SFT T={temperature:g}", setup, sft, temperature=temperature)


def d3(setup: RecSetup, sft: MethodResult) -> MethodResult:
    """D3 decoding of the SFT model: length_penalty 0.0."""
    return redecode("D3", setup, sft, length_penalty=D3_LENGTH_PENALTY)


def ifairlrs_group_weights(data: NextItemData, n_groups: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """IFairLRS group weights: (groups, ``w [n_groups]``) with ``w_g = GP_hist(g) / GP_target(g)``.

    GP_hist(g): share of the train history interactions (every history slot) on group g's items;
    GP_target(g): share of train rows whose target is in group g, among the rows whose target is in
    some group (a target never seen in a train history has none). A group with no target gets 1.
    """
    counts = data.train_history_counts()
    groups = popularity_group_ids(counts, n_groups)
    targets = np.bincount(data.train.target, minlength=data.num_items)
    hist = np.array([counts[g].sum() for g in groups], dtype=np.float64)
    tgt = np.array([targets[g].sum() for g in groups], dtype=np.float64)
    hist_share, tgt_share = hist / hist.sum(), tgt / max(tgt.sum(), 1.0)
    w = np.where(tgt_share > 0, hist_share / np.where(tgt_share > 0, tgt_share, 1.0), 1.0)
    return groups, w


def ifairlrs_weights(data: NextItemData, n_groups: int = 8) -> np.ndarray:
    """Per train row: the weight ``w_g`` of its target's group (1 for a target outside every group,
    i.e. never in a train history). float64 ``[train rows]``."""
    groups, w = ifairlrs_group_weights(data, n_groups)
    group_of = np.full(data.num_items, -1)
    for g, members in enumerate(groups):
        group_of[members] = g
    g = group_of[data.train.target]
    return np.where(g >= 0, w[np.maximum(g, 0)], 1.0)


def ifairlrs(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, **kwargs) -> MethodResult:
    """SFT with IFairLRS per-sample group weights (module docstring)."""
    weights = ifairlrs_weights(setup.data, setup.config.n_groups)
    return run_method("IFairLRS", setup, model, replace(train, method="sft"), weights=weights, **kwargs)


def flower(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, variant: str = "div_s", lam: float = 1.0,
           name: str | None = None, **kwargs) -> MethodResult:
    """Flower: ``train.method`` forced to ``"flower"`` (theta * SFT + (1 - theta) * SubTB) with the
    personalised reward ``variant`` and granularity ``train.granularity``."""
    name = name or f"Flower ({variant}, θ={train.theta:g}, n={train.granularity})"
    return run_method(name, setup, model, replace(train, method="flower"), variant=variant, lam=lam, **kwargs)


def run_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], train: TrainConfig,
                   variant: str = "div_s", lam: float = 1.0, progress: bool = False) -> dict[str, MethodResult]:
    """Every method of the RQ2 table on one setup: popularity, SASRec, BIGRec (SFT), SFT at T = 1.5,
    D3, IFairLRS and Flower. ``new_model()`` returns the initial policy (the same weights every call);
    the three trained methods use ``train`` (its ``method`` is overridden)."""
    out = {"popularity": popularity(setup)}
    if setup.sasrec is not None:
        out["SASRec"] = sasrec(setup)
    sft = bigrec(setup, new_model(), train, progress=progress)
    out[sft.name] = sft
    for r in (sft_temperature(setup, sft), d3(setup, sft), ifairlrs(setup, new_model(), train, progress=progress),
              flower(setup, new_model(), train, variant, lam, name="Flower", progress=progress)):
        out[r.name] = r
    return out


def reversed_popularity(setup: RecSetup) -> RecSetup:
    """The setup with ``log p_pop`` negated: a deliberately broken reward that rewards the tail most,
    the control of :func:`target_fit_comparison` (SASRec's scores and everything else unchanged)."""
    return replace(setup, log_p_pop=-setup.log_p_pop)


def target_fit_comparison(setup: RecSetup, new_model: Callable[[], torch.nn.Module], trains: dict[str, TrainConfig],
                          variant: str = "div_s", rows: int = 8, control: bool = True) -> dict[str, dict]:
    """Does training move the policy toward Flower's per-user target P_u? :func:`~flower_lite.recommend.target_fit`
    (KL(P_u || Q_u) and KL(Q_u || P_u) on the first ``rows`` test rows, P_u from the reward ``variant``) of the
    initial weights and of each run in ``trains`` (name: config). With ``control``, every run whose method
    is not ``sft`` is repeated on :func:`reversed_popularity` and measured against the *true* P_u: a
    term that learns the reward moves toward P_u only with the right one."""
    out = {"initial weights": rec.target_fit(setup, new_model(), variant, rows=rows)}
    for name, train in trains.items():
        runs = [(name, setup)] + ([(f"{name}, reversed popularity", reversed_popularity(setup))]
                                  if control and train.method != "sft" else [])
        for run_name, run_setup in runs:
            model = rec.train_model(run_setup, new_model(), train, variant).model
            out[run_name] = rec.target_fit(setup, model, variant, rows=rows)
    return out


def rq2_data(data: str = "default") -> tuple[NextItemData, str, str, int]:
    """``(rows, plural, singular, vocab_size)`` of an RQ2 data set: the synthetic default (``"default"``)
    or a shared Amazon category (``"Movies_and_TV"``, ...); ``vocab_size`` is the tiny tokenizer's."""
    if data == "default":
        return next_item_data_from_catalog(load_default_catalog()), *rec.CATEGORY_NOUNS["synthetic"], 512
    return load_amazon(data), *rec.CATEGORY_NOUNS[data], 2048


def rq2_setup(data: str = "default", train_rows: int | None = None, valid_rows: int | None = 64,
              test_rows: int | None = 128, seed: int = 0, sasrec_config=None, policy: Callable | None = None,
              threads: int | None = 1, pop_alpha: float = 1.0,
              decode_batch_size: int = 16) -> tuple[RecSetup, Callable[[], torch.nn.Module], list[dict]]:
    """The shared construction of an RQ2 comparison (notebook 04, ``flower-lite compare``, ``results/target_fit.py``).

    Keeps the ``train_rows`` most recent train rows of ``data`` (a name for :func:`rq2_data`), trains SASRec on them (``sasrec_config``; it is selected on the
    whole validation split, cheap for SASRec), then keeps seeded subsets of ``valid_rows`` / ``test_rows``
    rows for the LLM methods. ``policy(texts, vocab_size) -> (model, tokenizer)`` builds the initial
    policy (default: the tiny offline model with a tokenizer trained on ``texts``, the titles and 200
    history prompts). Returns ``(setup, new_model, sasrec_log)``: ``new_model()`` is a fresh copy of
    the same initial weights on every call.
    """
    full, plural, singular, vocab = rq2_data(data)
    full = rec.subsample(full, train_rows=train_rows)
    sasrec_config = sasrec_config or SASRecConfig(batch_size=256, patience=10, max_epochs=100, progress=False,
                                                  num_threads=threads, seed=seed)
    sasrec_model, sasrec_log = train_sasrec(full, sasrec_config)
    kept = rec.subsample(full, valid_rows=valid_rows, test_rows=test_rows, seed=seed)
    texts = kept.titles + rec.history_prompts(kept, "train", plural, singular)[:200]
    base, tok = policy(texts, vocab) if policy is not None else make_tiny_model(texts, vocab_size=vocab, seed=seed)
    config = rec.RecommendConfig(category=plural, singular=singular, num_threads=threads,
                                 pop_alpha=pop_alpha, decode_batch_size=decode_batch_size)
    setup = rec.prepare(kept, tok, sasrec_model.cpu(), config)
    return setup, lambda: rec.copy_model(base), sasrec_log


def rq2_table(data: str = "default", steps: int = 600, train_rows: int | None = None, valid_rows: int = 64,
              test_rows: int = 128, theta: float = 0.995, variant: str = "div_s", batch_size: int = 16,
              seed: int = 0, threads: int | None = 1, progress: bool = True, trajectories: str = "offline",
              pop_alpha: float = 1.0, loss: str = "subtb") -> tuple[list[dict], dict[str, MethodResult]]:
    """The RQ2 comparison of notebook 04 in one call (``flower-lite compare``): every method of
    :func:`run_comparison` and the reward-ranking ceiling, on :func:`rq2_setup` with the tiny offline
    policy.

    The LLM methods train ``steps`` steps of ``batch_size`` rows (learning rate 1e-2, the tiny model's),
    are selected on ``valid_rows`` seeded validation rows and scored on ``test_rows`` seeded test rows;
    ``trajectories``: Flower's GFlowNet trajectories (:class:`~flower_lite.train.TrainConfig`);
    ``pop_alpha``: the exponent of p_pop in the rewards (:class:`~flower_lite.recommend.RecommendConfig`);
    ``loss``: Flower's GFlowNet term (``TrainConfig.loss``). Returns the rows of
    :func:`~flower_lite.recommend.results_table` (hit/ndcg @1, 5, 10 and the exposure metrics) and the
    results by method.
    """
    setup, new_model, _ = rq2_setup(data, train_rows, valid_rows, test_rows, seed, threads=threads, pop_alpha=pop_alpha)
    train = TrainConfig(lr=1e-2, batch_size=batch_size, max_steps=steps, eval_every=max(1, steps // 6),
                        warmup_steps=min(20, steps // 10), theta=theta, seed=seed, save_every=10**9,
                        trajectories=trajectories, loss=loss)
    results = run_comparison(setup, new_model, train, variant, progress=progress)
    ceiling = f"R_u ceiling ({variant})"
    results[ceiling] = rec.reward_ranking(ceiling, setup, variant)
    return rec.results_table(results.values(), ks=(1, 5, 10)), results
