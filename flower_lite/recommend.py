"""Next-item recommendation with an LLM on the title trie: SFT (BIGRec) and Flower (METHOD.md 4, 6, 7, 8).

The pipeline of the paper's RQ2 / RQ4, in short functions:

1. :func:`subsample` (optional) cuts a :class:`~flower_lite.data.splits.NextItemData` to a size a
   CPU can train on: the most recent train rows, and fixed seeded subsets of valid and test.
2. :func:`history_prompts`: one BIGRec/D3-style prompt per row, built from the row's own history.
3. :func:`preference_rows`: SASRec's p_ui for every row of a split, computed once. The preference
   row of a sample is always that sample's own row: train samples read train rows, validation
   samples read validation rows (the reference's validation loss looked up the wrong users' rows,
   METHOD.md 9 item 4). :func:`prepare` stacks the train and valid rows into one table and gives
   every :class:`~flower_lite.train.FitData` row the index of its own preference row.
4. :func:`reward_fn`: the ``log_rewards_fn`` of :class:`~flower_lite.train.Trainer`, i.e.
   ``log R_u(i)`` per row through :func:`~flower_lite.rewards.personalised_log_rewards`; the
   trainer turns it into exact per-user flows F_u(s) over the trie (METHOD.md 3-4).
5. :func:`run_method`: train SFT or Flower with :func:`~flower_lite.train.fit` on the train split,
   keep the weights with the best *validation* loss (the test split is never looked at while
   training), decode the test split with trie-constrained beam search (10 beams, 10 returned;
   20 when @20 is asked for) and score it with :func:`~flower_lite.metrics.evaluate`.

Diagnostics: :func:`reward_ranking` ranks the test rows by R_u itself (what a policy that reached
Flower's target exactly would return under D3 decoding), :func:`target_fit` measures KL(P_u || Q_u)
between the per-user target and a policy's exact constrained distribution, and
:func:`exposure_by_group` gives the GP_data / GP_rec shares for the exposure plot.

Popularity and groups. The popularity c(i) is item-level: :meth:`NextItemData.train_history_counts`,
the number of train history windows item i appears in (METHOD.md 4). It gives ``p_pop`` of the
rewards (smoothed by ``pop_eps`` so that items never seen in a train history keep a small reward
and stay reachable), the trie's own flows, and the 8 popularity groups of DGU / MGU. The paper's
group shares are title-level (``NextItemData.title_history_counts``: duplicate titles pool their
items' counts); the two differ only on titles shared by several items.

The trie holds every catalogue item (not only the train-history titles, as the reference's), so a
test target never seen in a train history can still be recommended.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import decoding, metrics
from .data.splits import NextItemData, Split
from .prompts import MAX_TITLE_TOKENS, build_prompt, title_trie
from .rewards import log_popularity, personalised_log_rewards
from .train import FitData, TrainConfig, Trainer
from .trie import Trie

__all__ = [
    "INSTRUCTION", "CATEGORY_NOUNS", "METRIC_KEYS", "RecommendConfig", "DecodeSettings", "RecSetup",
    "MethodResult", "instruction", "subsample", "history_prompts", "preference_rows", "reward_fn",
    "prepare", "decode", "score", "train_model", "run_method", "redecode", "reward_ranking", "results_table",
    "exposure_by_group", "target_fit", "copy_model",
]

INSTRUCTION = "Given a list of {plural} the user recently enjoyed, write a new {singular} the user may enjoy."
"""The task instruction. The reference wrote "... write a new <category> the user may buy" with the
plural category ("a new movies") and "buy" after a list of enjoyed items; here the plural names the
history and the singular the answer."""

CATEGORY_NOUNS = {
    "Movies_and_TV": ("movies and TV shows", "movie or TV show"),
    "Video_Games": ("video games", "video game"),
    "CDs_and_Vinyl": ("CDs and vinyl records", "CD or vinyl record"),
    "synthetic": ("movies", "movie"),
}
"""(plural, singular) nouns of the data sets' categories."""

METRIC_KEYS = ("dgu", "mgu", "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid")
"""The non-ranking keys of :func:`flower_lite.metrics.evaluate` (plus ``hit@K`` / ``ndcg@K``)."""


# ---------------------------------------------------------------------------- configuration
@dataclass
class DecodeSettings:
    """Trie-constrained beam search (METHOD.md 6): BIGRec uses length_penalty 1.0, D3 0.0."""

    num_beams: int = 10
    num_return: int = 10
    length_penalty: float = 1.0
    temperature: float = 1.0
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the trie's longest path (title + T)


@dataclass
class RecommendConfig:
    """Settings shared by every method of one comparison.

    ``ks``: the K of hit@K / ndcg@K; when max(ks) > 10 the beam search keeps max(ks) beams and
    returns as many titles (the paper's @20). ``pop_eps`` smooths p_pop(i) ∝ (c(i) + eps) ** pop_alpha;
    ``pop_alpha`` = 1 (the paper) is the empirical popularity, below 1 a flatter one.
    ``n_groups``: popularity groups of DGU / MGU. ``max_title_tokens``: the longest title path
    (title tokens + T) the trie accepts (a small tokenizer may need more than 64). ``num_threads``: torch CPU threads while
    training and decoding (restored afterwards); None keeps the current setting.
    """

    category: str = "movies"
    singular: str | None = None
    ks: tuple[int, ...] = (1, 3, 5, 10)
    pop_eps: float = 1.0
    pop_alpha: float = 1.0
    n_groups: int = 8
    decode_batch_size: int = 16
    max_title_tokens: int = MAX_TITLE_TOKENS
    num_threads: int | None = None

    def decode_settings(self, **overrides) -> DecodeSettings:
        """Beam-search settings of this comparison: 10 beams / 10 returned, or max(ks) if larger."""
        k = max(10, max(self.ks))
        return replace(DecodeSettings(num_beams=k, num_return=k, batch_size=self.decode_batch_size), **overrides)


@dataclass
class RecSetup:
    """Everything the methods of one comparison share (built once by :func:`prepare`).

    ``preferences`` [train rows + valid rows, N] float32: SASRec's p_ui, train rows first;
    ``offsets[split]`` is the index of the split's first row in it (train 0, valid len(train)).
    """

    data: NextItemData
    tokenizer: object
    trie: Trie
    config: RecommendConfig
    prompts: dict[str, list[str]]
    counts: np.ndarray  # [N] item-level c(i) from the train histories
    log_p_pop: Tensor  # [N] log p_pop(i) with p_pop ∝ (c(i) + pop_eps) ** pop_alpha
    sasrec: object | None = None
    preferences: Tensor | None = None
    offsets: dict[str, int] = field(default_factory=dict)

    def fit_data(self, split: str, weights: np.ndarray | None = None) -> FitData:
        """Rows of ``split`` for :func:`~flower_lite.train.fit`; ``reward_rows`` point at each row's own
        preference row (``offsets[split] + row``)."""
        s = self.data.splits()[split]
        rows = None if split not in self.offsets else self.offsets[split] + np.arange(len(s))
        return FitData(self.prompts[split], s.target, reward_rows=rows, weights=weights)


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


class _threads:
    """``torch.set_num_threads(n)`` inside the block (None: unchanged), restored afterwards."""

    def __init__(self, n: int | None):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


# ---------------------------------------------------------------------------- data and prompts
def _take(split: Split, rows: np.ndarray) -> Split:
    return Split([split.history[r] for r in rows], split.target[rows], split.user[rows], split.timestamp[rows])


def _subset_rows(n: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def subsample(data: NextItemData, train_rows: int | None = None, valid_rows: int | None = None,
              test_rows: int | None = None, seed: int = 0) -> NextItemData:
    """A smaller copy of ``data`` with the same catalogue: the ``train_rows`` most recent train rows
    (the train split is chronological, so these are the closest in time to valid and test) and fixed,
    seeded random subsets of ``valid_rows`` / ``test_rows`` rows (kept in their original order).
    None keeps a split whole. Popularity and groups are then computed on the kept train rows.
    """
    rng = np.random.default_rng(seed)
    n_train = len(data.train)
    train = np.arange(n_train) if train_rows is None else np.arange(max(0, n_train - train_rows), n_train)
    valid = _subset_rows(len(data.valid), valid_rows, rng)
    test = _subset_rows(len(data.test), test_rows, rng)
    return NextItemData(data.name, data.titles, _take(data.train, train), _take(data.valid, valid), _take(data.test, test))


def instruction(category: str, singular: str | None = None) -> str:
    """:data:`INSTRUCTION` for a plural ``category`` (e.g. "movies"); ``singular`` defaults to the
    category without a final "s"."""
    if singular is None:
        singular = category[:-1] if category.endswith("s") and not category.endswith("ss") else category
    return INSTRUCTION.format(plural=category, singular=singular)


def history_prompts(data: NextItemData, split: str, category: str, singular: str | None = None) -> list[str]:
    """One prompt per row of ``split``: :func:`~flower_lite.prompts.build_prompt` with
    :func:`instruction` and the titles of the row's own history (oldest first)."""
    text = instruction(category, singular)
    titles = data.titles
    return [build_prompt(text, [titles[i] for i in h], category) for h in data.splits()[split].history]


# ---------------------------------------------------------------------------- personalised rewards
def preference_rows(sasrec, data: NextItemData, split: str, rows: Sequence[int] | None = None,
                    batch_size: int = 1024) -> Tensor:
    """SASRec's p_ui for every row of ``split`` (or only ``rows``): float32 ``[rows, N]``, row r from
    history r of that split. Each row is a softmax over all N items (sums to 1); 4 N bytes per row.
    """
    histories = data.splits()[split].history
    if rows is not None:
        histories = [histories[r] for r in rows]
    out = [sasrec.predict_proba(histories[lo:lo + batch_size]).float() for lo in range(0, len(histories), batch_size)]
    return torch.cat(out) if out else torch.empty(0, data.num_items)


def reward_fn(p_rows: Tensor, log_p_pop: Tensor, variant: str = "div_s", lam: float = 1.0
              ) -> Callable[[np.ndarray], Tensor]:
    """The ``log_rewards_fn`` of the trainer: preference-row indices ``[B]`` -> log R_u(i) ``[B, N]`` float64.

    Row b is ``personalised_log_rewards(p_rows[keys[b]], log_p_pop, variant, lam)`` (``logp``,
    ``div_s``: log p_pop(i) / s_ui, ``add_log_s``: log p_pop(i) + lam log s'_ui once per item). The
    trainer gathers exact per-user flows F_u(s) = sum of R_u(i) below s from it, so along item i's
    path the token rewards r_u(a|s) = F_u(s·a) / F_u(s) multiply to R_u(i) / Z_u.
    """
    personalised_log_rewards(p_rows[:1], log_p_pop, variant, lam)  # fail early on a bad variant

    def log_rewards(keys: np.ndarray) -> Tensor:
        idx = torch.as_tensor(np.asarray(keys, dtype=np.int64))
        return personalised_log_rewards(p_rows[idx], log_p_pop, variant, lam)

    return log_rewards


def prepare(data: NextItemData, tokenizer, sasrec=None, config: RecommendConfig | None = None) -> RecSetup:
    """Build the shared pieces: prompts of every split, item-level popularity, the title trie of every
    catalogue item (T = EOS, weights c(i) + pop_eps) and, with ``sasrec``, the train and valid
    preference rows stacked in one table (train first)."""
    config = config or RecommendConfig()
    counts = data.train_history_counts()
    prompts = {s: history_prompts(data, s, config.category, config.singular) for s in ("train", "valid", "test")}
    trie = title_trie(tokenizer, data.titles, counts.astype(np.float64) + config.pop_eps, config.max_title_tokens)
    log_p_pop = log_popularity(counts, config.pop_eps, config.pop_alpha)
    setup = RecSetup(data, tokenizer, trie, config, prompts, counts, log_p_pop, sasrec)
    if sasrec is not None:
        with _threads(config.num_threads):
            setup.preferences = torch.cat([preference_rows(sasrec, data, "train"), preference_rows(sasrec, data, "valid")])
        setup.offsets = {"train": 0, "valid": len(data.train)}
    return setup


# ---------------------------------------------------------------------------- decode and score
def score(name: str, setup: RecSetup, ranked: list[list[int]], **extra) -> MethodResult:
    """:func:`~flower_lite.metrics.evaluate` of test lists against the test targets, item-level counts."""
    cfg = setup.config
    m = metrics.evaluate(ranked, setup.data.test.target, setup.counts, setup.data.titles, cfg.ks, cfg.n_groups)
    return MethodResult(name, {k: float(v) for k, v in m.items()}, ranked, **extra)


def decode(model: torch.nn.Module, setup: RecSetup, settings: DecodeSettings | None = None, split: str = "test"
           ) -> list[list[int]]:
    """Trie-constrained beam search on the prompts of ``split``: ranked distinct catalogue items per row."""
    s = settings or setup.config.decode_settings()
    model.eval()
    with _threads(setup.config.num_threads):
        return decoding.recommend(model, setup.tokenizer, setup.prompts[split], setup.trie, num_beams=s.num_beams,
                                  num_return=s.num_return, length_penalty=s.length_penalty, temperature=s.temperature,
                                  max_new_tokens=s.max_new_tokens or setup.trie.max_path_length, batch_size=s.batch_size)


class _SelectingTrainer(Trainer):
    """A :class:`Trainer` that keeps, in memory, the trainable weights of the evaluation with the best
    validation loss (so no checkpoint file is needed to select on validation)."""

    best_state: dict[str, Tensor] | None = None

    def _early_stopping(self, record: dict) -> bool:
        stop = super()._early_stopping(record)
        if "valid_loss" in record and self.best_step == self.step and record["valid_loss"] == self.best_valid:
            self.best_state = {k: v.clone() for k, v in self._trainable_state().items()}
        return stop


def train_model(setup: RecSetup, model: torch.nn.Module, train: TrainConfig, variant: str = "div_s", lam: float = 1.0,
                weights: np.ndarray | None = None, output_dir=None, progress: bool = False):
    """Fit ``model`` on the train split (SFT, or Flower with per-user rewards ``variant``) and load the
    weights of the best validation loss. Returns the :class:`~flower_lite.train.TrainResult`.

    Flower needs ``setup.preferences`` (a SASRec) unless ``variant == "logp"``; IFairLRS-style
    ``weights`` [train rows] reweight the SFT term per sample.
    """
    log_rewards_fn = None
    if train.method != "sft":
        if setup.preferences is not None:
            log_rewards_fn = reward_fn(setup.preferences, setup.log_p_pop, variant, lam)
        elif variant == "logp":
            pop = setup.log_p_pop
            log_rewards_fn = lambda keys: pop.expand(len(keys), -1)  # noqa: E731
        else:
            raise ValueError(f"reward variant {variant!r} needs SASRec preferences: pass sasrec= to prepare()")
    with _threads(setup.config.num_threads):
        trainer = _SelectingTrainer(model, setup.tokenizer, setup.trie, train, setup.fit_data("train", weights),
                                    setup.fit_data("valid"), log_rewards_fn=log_rewards_fn, output_dir=output_dir,
                                    progress=progress)
        result = trainer.run()
    if trainer.best_state is not None:
        result.model.load_state_dict(trainer.best_state, strict=False)
    return result


def run_method(name: str, setup: RecSetup, model: torch.nn.Module, train: TrainConfig, *, variant: str = "div_s",
               lam: float = 1.0, weights: np.ndarray | None = None, decode_settings: DecodeSettings | None = None,
               output_dir=None, progress: bool = False) -> MethodResult:
    """Train (``train.method``: ``sft`` = BIGRec, ``flower`` = theta * SFT + (1 - theta) * SubTB with
    reward ``variant``, supervision granularity ``train.granularity``), select on validation, decode
    the test split and evaluate. ``model`` is trained in place."""
    t0 = time.perf_counter()
    result = train_model(setup, model, train, variant, lam, weights, output_dir, progress)
    t1 = time.perf_counter()
    ranked = decode(result.model, setup, decode_settings)
    t2 = time.perf_counter()
    return score(name, setup, ranked, model=result.model, history=result.history, best_step=result.best_step,
                 seconds={"train": t1 - t0, "decode": t2 - t1})


def redecode(name: str, setup: RecSetup, trained: MethodResult, **settings) -> MethodResult:
    """Decode an already trained method again with other settings (e.g. ``temperature=1.5``,
    ``length_penalty=0.0``) and score it; the model is shared, not copied."""
    t0 = time.perf_counter()
    ranked = decode(trained.model, setup, setup.config.decode_settings(**settings))
    return score(name, setup, ranked, model=trained.model, history=trained.history, best_step=trained.best_step,
                 seconds={"train": 0.0, "decode": time.perf_counter() - t0})


def results_table(results: Sequence[MethodResult], ks: Sequence[int] = (10,), digits: int = 4) -> list[dict]:
    """Rows for :func:`flower_lite.viz.table_figure`: method, hit@K, ndcg@K, the exposure metrics."""
    keys = [f"{m}@{k}" for k in ks for m in ("hit", "ndcg")] + ["dgu", "mgu", "coverage", "gini", "tail_share", "word_entropy", "ttr", "invalid"]
    out = []
    for r in results:
        row = {"method": r.name}
        for k in keys:
            v = r.metrics[k]
            row[k] = int(v) if k in ("coverage", "invalid") else (round(v, digits) if math.isfinite(v) else v)
        out.append(row)
    return out


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy (for training several methods from the same initial weights)."""
    return copy.deepcopy(model)


def reward_ranking(name: str, setup: RecSetup, variant: str = "div_s", lam: float = 1.0) -> MethodResult:
    """The test rows' top-K items by the personalised reward R_u(i) itself (SASRec on the test histories).

    A policy that matches Flower's target exactly, pi(i | u) = R_u(i) / Z_u, ranks titles this way
    under beam search with length_penalty 0 (D3), up to beam-search errors and duplicate titles
    (which pool their items' rewards): the ceiling of what the reward ``variant`` can give.
    """
    if setup.sasrec is None and variant != "logp":
        raise ValueError("reward_ranking needs setup.sasrec")
    k = setup.config.decode_settings().num_return
    t0 = time.perf_counter()
    if variant == "logp":
        p = torch.zeros(len(setup.data.test), setup.data.num_items)
    else:
        with _threads(setup.config.num_threads):
            p = preference_rows(setup.sasrec, setup.data, "test")
    log_r = personalised_log_rewards(p, setup.log_p_pop, variant, lam)
    ranked = torch.topk(log_r, k, dim=1).indices.tolist()
    return score(name, setup, ranked, seconds={"train": 0.0, "decode": time.perf_counter() - t0})


def exposure_by_group(setup: RecSetup, results: Sequence[MethodResult]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(GP_data [G], {method: GP_rec [G]}) of :func:`flower_lite.metrics.group_unfairness`, for
    :func:`flower_lite.viz.exposure_by_group_figure`; groups from the item-level train counts."""
    gp_rec = {}
    gp_data = None
    for r in results:
        gu = metrics.group_unfairness(r.ranked, setup.counts, setup.config.n_groups)
        gp_data, gp_rec[r.name] = gu["gp_data"], gu["gp_rec"]
    return gp_data, gp_rec


def target_fit(setup: RecSetup, model: torch.nn.Module, variant: str = "div_s", lam: float = 1.0, rows: int = 8,
               split: str = "test") -> dict[str, float]:
    """How close the policy is to Flower's per-user target, on the first ``rows`` rows of ``split``.

    For each row u: P_u(t) = F_u(t·T) / Z_u over distinct titles t (the reward ``variant``, exact flows;
    duplicate titles pool their items) and Q_u(t), the exact distribution of trie-constrained sampling
    at temperature 1 (:func:`flower_lite.decoding.constrained_item_distribution`). Returns the means
    over rows of ``kl`` = KL(P_u || Q_u) and ``kl_reverse`` = KL(Q_u || P_u) (nats). Needs SASRec rows
    of ``split`` (computed here) unless ``variant == "logp"``. Cost: one teacher-forced pass over the
    catalogue's titles per row.
    """
    data = setup.data.splits()[split]
    n = min(rows, len(data))
    if variant == "logp":
        p = torch.zeros(n, setup.data.num_items)
    else:
        with _threads(setup.config.num_threads):
            p = preference_rows(setup.sasrec, setup.data, split, rows=range(n))
    log_r = personalised_log_rewards(p, setup.log_p_pop, variant, lam)
    trie = setup.trie
    terminals = trie.terminal_nodes
    log_f = trie.batch_log_flows(log_r, terminals.expand(n, -1))
    target = (log_f - torch.logsumexp(log_f, dim=1, keepdim=True)).exp().numpy()
    model.eval()
    kl, rkl = [], []
    with _threads(setup.config.num_threads):
        for r in range(n):
            q = decoding.constrained_item_distribution(model, setup.tokenizer, setup.prompts[split][r], trie).numpy()
            kl.append(metrics.kl_divergence(target[r], q))
            rkl.append(metrics.kl_divergence(q, target[r]))
    return {"kl": float(np.mean(kl)), "kl_reverse": float(np.mean(rkl))}
