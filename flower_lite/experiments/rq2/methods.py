"""RQ2 methods: training, decoding and scoring on one :class:`~.setup.RecSetup`, and the paper's baselines (results/README.md, RQ2).

* :func:`run_method`: train with :func:`~flower_lite.train.fit` on the train split (the weights of the
  best *validation* loss are kept; the test split is never looked at while training), decode the test
  split with trie-constrained beam search (10 beams, 10 returned; 20 when @20 is asked for) and score
  it with :func:`~flower_lite.metrics.evaluate`.
* :func:`popularity`: the same most-counted items for everyone. :func:`sasrec`: SASRec's top-K.
* :func:`bigrec`: SFT on the target titles (BIGRec), beam search with length_penalty 1.0.
* :func:`sft_temperature`: the SFT model decoded at temperature 1.5 (logits / 1.5 before the
  log-softmax of every beam step; :class:`flower_lite.decoding.TemperedLogSoftmax`).
* :func:`d3`: the SFT model decoded with length_penalty 0.0 (D3's fix of the length normalisation:
  beams are ranked by the title's total log-probability).
* :func:`ifairlrs`: SFT with IFairLRS's per-sample group weights (Jiang et al., WWW 2024, the
  in-learning reweighting). A row whose target is in popularity group g gets
  ``w_g = GP_hist(g) / GP_target(g)``: the group's share of train history interactions over its share
  of train targets. The weights really reweight the samples (:func:`flower_lite.losses.sft_loss` with
  ``weight=``); the reference averaged them away (mean(w) * mean(loss), docs/method.md 8).
* :func:`flower`: Flower's objective with the setup's personalised reward.

Groups are the package's one rule (:func:`flower_lite.metrics.popularity_group_ids`) on the
item-level train history counts, the groups DGU / MGU are measured on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from ... import beam_search, metrics
from ...config import Objective, RewardSpec, TrainConfig
from ...data.splits import NextItemData
from ...sasrec import popularity_recommend
from ...threads import num_threads
from ...train import TrainResult, Trainer
from .setup import FLOWER, DecodeSettings, RecSetup, reward_fn

SFT_TEMPERATURE = 1.5
D3_LENGTH_PENALTY = 0.0


@dataclass
class MethodResult:
    """One method's test metrics, its ranked lists [rows][K] and, for trained methods, the model."""

    name: str
    metrics: dict[str, float]
    ranked: list[list[int]]
    model: torch.nn.Module | None = None
    history: list[dict] = field(default_factory=list)
    best_step: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def row(self, keys: Sequence[str] | None = None) -> dict:
        """``{"method": name, **metrics}`` restricted to ``keys`` (default: all)."""
        keys = list(self.metrics) if keys is None else keys
        return {"method": self.name, **{k: self.metrics[k] for k in keys}}


# ---------------------------------------------------------------------------- train, decode, score
def score(name: str, setup: RecSetup, ranked: list[list[int]], **extra) -> MethodResult:
    """:func:`~flower_lite.metrics.evaluate` of test lists against the test targets, item-level counts."""
    cfg = setup.config
    m = metrics.evaluate(ranked, setup.data.test.target, setup.counts, setup.data.titles, cfg.ks, cfg.n_groups)
    return MethodResult(name, {k: float(v) for k, v in m.items()}, ranked, **extra)


def decode(model: torch.nn.Module, setup: RecSetup, settings: DecodeSettings | None = None, split: str = "test",
           progress: str | None = None) -> list[list[int]]:
    """Trie-constrained beam search on the prompts of ``split``: ranked distinct catalogue items per row
    (``progress``: the label of a progress bar, e.g. the method's name)."""
    return decode_many(model, setup, [settings or setup.config.decode_settings()], split, progress)[0]


def decode_many(model: torch.nn.Module, setup: RecSetup, settings: Sequence[DecodeSettings], split: str = "test",
                progress: str | None = None) -> list[list[list[int]]]:
    """:func:`decode` under several settings that differ only in length penalty and temperature (BIGRec, D3 and
    SFT at T = 1.5 decode one model): each prompt runs through the model once for all of them
    (:func:`flower_lite.beam_search.recommend_settings`)."""
    first = settings[0]
    if any(replace(s, length_penalty=first.length_penalty, temperature=first.temperature) != first for s in settings):
        raise ValueError("decode_many shares one prompt pass: the settings may differ in length_penalty and temperature only")
    model.eval()
    with num_threads(setup.config.num_threads):
        return beam_search.recommend_settings(
            model, setup.tokenizer, setup.prompts[split], setup.trie,
            [beam_search.BeamSetting(s.length_penalty, s.temperature) for s in settings], num_beams=first.num_beams,
            num_return=first.num_return, max_new_tokens=first.max_new_tokens or setup.trie.max_path_length,
            batch_size=first.batch_size, progress=progress)


def train_model(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, reward: RewardSpec | None = None,
                weights: np.ndarray | None = None, output_dir=None, progress: bool = False, name: str | None = None
                ) -> TrainResult:
    """Fit ``model`` on the train split with ``train.objective`` (the reward ``reward``, default
    ``setup.reward``, for a GFlowNet term) and end with the weights of the best validation loss.

    ``div_s`` / ``add_log_s`` need ``setup.preferences`` (a SASRec); IFairLRS-style ``weights``
    [train rows] reweight the SFT term per sample. ``name`` labels the progress bar.
    """
    log_rewards_fn = reward_fn(setup, reward) if train.objective.gfn else None
    with num_threads(setup.config.num_threads):
        trainer = Trainer(model, setup.tokenizer, setup.trie, replace(train, select_best=True),
                          setup.fit_data("train", weights), setup.fit_data("valid"), log_rewards_fn=log_rewards_fn,
                          output_dir=output_dir, progress=progress, desc=name)
        return trainer.run()


def run_method(name: str, setup: RecSetup, model: torch.nn.Module, train: TrainConfig, *, reward: RewardSpec | None = None,
               weights: np.ndarray | None = None, decode_settings: DecodeSettings | None = None,
               output_dir=None, progress: bool = False) -> MethodResult:
    """Train (:func:`train_model`), select on validation, decode the test split and evaluate. ``model`` is
    trained in place."""
    t0 = time.perf_counter()
    result = train_model(setup, model, train, reward, weights, output_dir, progress, name)
    t1 = time.perf_counter()
    ranked = decode(result.model, setup, decode_settings, progress=f"decode {name}" if progress else None)
    t2 = time.perf_counter()
    return score(name, setup, ranked, model=result.model, history=result.history, best_step=result.best_step,
                 seconds={"train": t1 - t0, "decode": t2 - t1})


def redecode(name: str, setup: RecSetup, trained: MethodResult, progress: bool = False, **settings) -> MethodResult:
    """Decode an already trained method again with other settings (e.g. ``temperature=1.5``,
    ``length_penalty=0.0``) and score it; the model is shared, not copied."""
    t0 = time.perf_counter()
    ranked = decode(trained.model, setup, setup.config.decode_settings(**settings), progress=f"decode {name}" if progress else None)
    return score(name, setup, ranked, model=trained.model, history=trained.history, best_step=trained.best_step,
                 seconds={"train": 0.0, "decode": time.perf_counter() - t0})


# ---------------------------------------------------------------------------- the methods of the paper's table
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
    """BIGRec: SFT (``train.objective`` replaced by ``sft``), beam search with length_penalty 1.0."""
    return run_method("BIGRec (SFT)", setup, model, replace(train, objective=Objective("sft")), **kwargs)


def sft_family(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, temperature: float = SFT_TEMPERATURE,
               progress: bool = False, output_dir=None, names: Sequence[str] | None = None) -> dict[str, MethodResult]:
    """BIGRec (SFT), the SFT model at ``temperature`` (1.5) and D3 (length_penalty 0.0): one SFT training, and
    one beam search whose prompt passes serve all three decodings (:func:`decode_many`); ``names`` keeps only
    some of the three (``"BIGRec (SFT)"``, ``"SFT T=1.5"``, ``"D3"``; default all)."""
    t0 = time.perf_counter()
    result = train_model(setup, model, replace(train, objective=Objective("sft")), output_dir=output_dir,
                         progress=progress, name="BIGRec (SFT)")
    t1 = time.perf_counter()
    base = setup.config.decode_settings()
    family = {"BIGRec (SFT)": base, f"SFT T={temperature:g}": replace(base, temperature=temperature),
              "D3": replace(base, length_penalty=D3_LENGTH_PENALTY)}
    names = [n for n in family if names is None or n in names]
    if not names:
        raise ValueError(f"sft_family: none of {list(family)} asked for")
    settings = [family[n] for n in names]
    lists = decode_many(result.model, setup, settings, progress=f"decode {', '.join(names)}" if progress else None)
    seconds = {"train": t1 - t0, "decode": time.perf_counter() - t1}
    return {name: score(name, setup, ranked, model=result.model, history=result.history, best_step=result.best_step,
                        seconds=seconds) for name, ranked in zip(names, lists)}


def sft_temperature(setup: RecSetup, sft: MethodResult, temperature: float = SFT_TEMPERATURE, progress: bool = False
                    ) -> MethodResult:
    """The SFT model's beam search at ``temperature`` (default 1.5)."""
    return redecode(f"SFT T={temperature:g}", setup, sft, progress, temperature=temperature)


def d3(setup: RecSetup, sft: MethodResult, progress: bool = False) -> MethodResult:
    """D3 decoding of the SFT model: length_penalty 0.0."""
    return redecode("D3", setup, sft, progress, length_penalty=D3_LENGTH_PENALTY)


def ifairlrs_group_weights(data: NextItemData, n_groups: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """IFairLRS group weights: (groups, ``w [n_groups]``) with ``w_g = GP_hist(g) / GP_target(g)``.

    GP_hist(g): share of the train history interactions (every history slot) on group g's items;
    GP_target(g): share of train rows whose target is in group g, among the rows whose target is in
    some group (a target never seen in a train history has none). A group with no target gets 1.
    """
    counts = data.train_history_counts()
    groups = metrics.popularity_group_ids(counts, n_groups)
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
    return run_method("IFairLRS", setup, model, replace(train, objective=Objective("sft")), weights=weights, **kwargs)


def flower(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, reward: RewardSpec | None = None,
           name: str | None = None, **kwargs) -> MethodResult:
    """Flower: ``train.objective`` (a GFlowNet loss, by default mixed with SFT; an ``sft`` objective is
    replaced by :data:`~.setup.FLOWER`) with the personalised ``reward`` (default ``setup.reward``)."""
    reward = reward or setup.reward
    if not train.objective.gfn:
        train = replace(train, objective=FLOWER)
    o = train.objective
    name = name or f"Flower ({reward.variant}, {'' if o.loss == 'subtb' else o.loss + ', '}θ={o.theta:g}, n={o.granularity})"
    return run_method(name, setup, model, train, reward=reward, **kwargs)
