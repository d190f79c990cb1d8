"""RQ2 set-up: the pieces every method of one next-item comparison shares (notebooks 04 and 05, ``flower-lite compare``).

1. :func:`subsample` (optional) cuts a :class:`~flower_lite.data.splits.NextItemData` to a size a
   CPU can train on: the most recent train rows, and fixed seeded subsets of valid and test.
2. :func:`history_prompts`: one BIGRec/D3-style prompt per row, built from the row's own history.
3. :func:`preference_rows`: SASRec's p_ui for every row of a split, computed once. The preference
   row of a sample is always that sample's own row: train samples read train rows, validation
   samples read validation rows (the reference's validation loss looked up the wrong users' rows,
   docs/method.md 8). :func:`prepare` stacks the train and valid rows into one table and gives
   every :class:`~flower_lite.train.FitData` row the index of its own preference row.
4. :func:`reward_fn`: the ``log_rewards_fn`` of :class:`~flower_lite.train.Trainer`, i.e. the
   :class:`~flower_lite.config.RewardSpec`'s ``log R_u(i)`` per row; the trainer turns it into exact
   per-user flows F_u(s) over the trie (docs/method.md 3-4).
5. :func:`rq2_setup` builds all of it from a data-set name and a policy factory; :func:`rq2_config` is
   the training recipe of the trained methods.

Popularity and groups. The popularity c(i) is item-level: :meth:`NextItemData.train_history_counts`,
the number of train history windows item i appears in (docs/method.md 4). It gives ``p_pop`` of the
rewards (smoothed by ``RewardSpec.pop_eps`` so that items never seen in a train history keep a small
reward and stay reachable), the trie's own flows (the same ``(c + eps) ** alpha``), and the 8
popularity groups of DGU / MGU. The paper's group shares are title-level
(``NextItemData.title_history_counts``: duplicate titles pool their items' counts); the two differ only
on titles shared by several items. The trie holds every catalogue item (not only the train-history
titles, as the reference's), so a test target never seen in a train history can still be recommended.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...config import DecodeSettings, RecommendConfig, RewardSpec  # noqa: F401  (DecodeSettings: re-exported)
from ...data import load_amazon, load_bigrec, load_default_catalog, load_movielens_100k, next_item_data_from_catalog
from ...data.splits import NextItemData, Split
from ...models import make_tiny_model
from ...prompts import build_prompt, title_trie
from ...rewards import item_log_rewards, item_rewards
from ...sasrec import SASRecConfig, train_sasrec
from ...threads import num_threads
from ...train import FitData
from ...trie import Trie
from ..recipes import FLOWER, rq2_config  # noqa: F401  (the recipes of this experiment)

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


@dataclass
class RecSetup:
    """Everything the methods of one comparison share (built once by :func:`prepare`).

    ``preferences`` [train rows + valid rows, N] float32: SASRec's p_ui, train rows first;
    ``offsets[split]`` is the index of the split's first row in it (train 0, valid len(train)).
    ``reward``: the reward Flower trains on (its popularity part also weighs the trie).
    """

    data: NextItemData
    tokenizer: object
    trie: Trie
    config: RecommendConfig
    reward: RewardSpec
    prompts: dict[str, list[str]]
    counts: np.ndarray  # [N] item-level c(i) from the train histories
    sasrec: object | None = None
    preferences: Tensor | None = None
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def log_p_pop(self) -> Tensor:
        """[N] log p_pop(i) of ``reward`` (p_pop ∝ (c(i) + pop_eps) ** pop_alpha; negated when reversed)."""
        return item_log_rewards(self.reward, self.counts)

    def fit_data(self, split: str, weights: np.ndarray | None = None) -> FitData:
        """Rows of ``split`` for :func:`~flower_lite.train.fit`; ``reward_rows`` point at each row's own
        preference row (``offsets[split] + row``)."""
        s = self.data.splits()[split]
        rows = None if split not in self.offsets else self.offsets[split] + np.arange(len(s))
        return FitData(self.prompts[split], s.target, reward_rows=rows, weights=weights)


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


def reward_fn(setup: RecSetup, reward: RewardSpec | None = None) -> Callable[[np.ndarray], Tensor]:
    """The ``log_rewards_fn`` of the trainer: preference-row indices ``[B]`` -> log R_u(i) ``[B, N]`` float64.

    Row b is :func:`~flower_lite.rewards.item_log_rewards` of ``reward`` (default ``setup.reward``) on
    preference row ``keys[b]`` (``logp`` needs no preferences). The trainer gathers exact per-user flows
    F_u(s) = sum of R_u(i) below s from it, so along item i's path the token rewards
    r_u(a|s) = F_u(s·a) / F_u(s) multiply to R_u(i) / Z_u.
    """
    reward = reward or setup.reward
    if reward.variant == "logp":
        log_p_pop = item_log_rewards(reward, setup.counts)
        return lambda keys: log_p_pop.expand(len(keys), -1)
    if setup.preferences is None:
        raise ValueError(f"reward variant {reward.variant!r} needs SASRec preferences: pass sasrec= to prepare()")
    p_rows, counts = setup.preferences, setup.counts
    return lambda keys: item_log_rewards(reward, counts, p_rows[torch.as_tensor(np.asarray(keys, dtype=np.int64))])


def prepare(data: NextItemData, tokenizer, sasrec=None, config: RecommendConfig | None = None,
            reward: RewardSpec | None = None) -> RecSetup:
    """Build the shared pieces: prompts of every split, item-level popularity, the title trie of every
    catalogue item (T = ``config.stop``, weights R(i) = (c(i) + pop_eps) ** pop_alpha of ``reward``) and, with
    ``sasrec``, the train and valid preference rows stacked in one table (train first)."""
    config, reward = config or RecommendConfig(), reward or RewardSpec()
    counts = data.train_history_counts()
    prompts = {s: history_prompts(data, s, config.category, config.singular) for s in ("train", "valid", "test")}
    trie = title_trie(tokenizer, data.titles, item_rewards(replace(reward, reversed=False), counts), config.max_title_tokens,
                      config.stop)
    setup = RecSetup(data, tokenizer, trie, config, reward, prompts, counts, sasrec)
    if sasrec is not None:
        with num_threads(config.num_threads):
            setup.preferences = torch.cat([preference_rows(sasrec, data, "train"), preference_rows(sasrec, data, "valid")])
        setup.offsets = {"train": 0, "valid": len(data.train)}
    return setup


# ---------------------------------------------------------------------------- one call
def rq2_data(data: str = "default") -> tuple[NextItemData, str, str, int]:
    """``(rows, plural, singular, vocab_size)`` of an RQ2 data set: the synthetic default (``"default"``), a
    shared Amazon category (``"Movies_and_TV"``, ...) or a folder in the BIGRec layout (``items.tsv`` and
    the three split CSVs, :func:`~flower_lite.data.load_bigrec`); ``vocab_size`` is the tiny tokenizer's."""
    if data == "default":
        return next_item_data_from_catalog(load_default_catalog()), *CATEGORY_NOUNS["synthetic"], 512
    if data == "movielens":
        return next_item_data_from_catalog(load_movielens_100k()), *CATEGORY_NOUNS["synthetic"], 2048
    if data in CATEGORY_NOUNS:
        return load_amazon(data), *CATEGORY_NOUNS[data], 2048
    if Path(data).expanduser().is_dir():
        return load_bigrec(Path(data).expanduser()), "items", "item", 2048
    raise ValueError(f"unknown data set {data!r}: expected default, movielens, {', '.join(c for c in CATEGORY_NOUNS if c != 'synthetic')} "
                     "or a folder in the BIGRec layout (items.tsv, train/valid/test.csv)")


def tiny_policy(seed: int = 0, **tiny) -> Callable[[list[str], int], tuple]:
    """The default policy factory of :func:`rq2_setup`: the tiny offline model with a tokenizer trained on the texts."""
    return lambda texts, vocab_size: make_tiny_model(texts, vocab_size=vocab_size, seed=seed, **tiny)


def rq2_setup(data: str = "default", train_rows: int | None = None, valid_rows: int | None = 64,
              test_rows: int | None = 128, seed: int = 0, sasrec_config: SASRecConfig | None = None,
              policy: Callable[[list[str], int], tuple] | None = None, threads: int | None = 1,
              reward: RewardSpec | None = None, decode_batch_size: int = 16, prompt_texts: int = 200,
              progress: bool = False, stop: str = "eos") -> tuple[RecSetup, Callable[[], torch.nn.Module], list[dict]]:
    """The shared construction of an RQ2 comparison (notebooks 04 and 05, ``flower-lite compare``, the tests,
    ``bench/memory_cpu.py``, ``results/target_fit.py``).

    Keeps the ``train_rows`` most recent train rows of ``data`` (a name for :func:`rq2_data`), trains SASRec
    on them (``sasrec_config``; it is selected on the whole validation split, cheap for SASRec;
    ``max_epochs=0`` keeps it untrained), then keeps seeded subsets of ``valid_rows`` / ``test_rows`` rows
    for the LLM methods. ``policy(texts, vocab_size) -> (model, tokenizer)`` builds the initial policy
    (default :func:`tiny_policy`); ``texts`` are the titles and the first ``prompt_texts`` train prompts.
    ``progress`` shows the default SASRec's training bar; ``stop`` is the trie's T. Returns ``(setup, new_model, sasrec_log)``:
    ``new_model()`` is a fresh copy of the same initial weights on every call.
    """
    full, plural, singular, vocab = rq2_data(data)
    full = subsample(full, train_rows=train_rows)
    sasrec_config = sasrec_config or SASRecConfig(batch_size=256, patience=10, max_epochs=100, progress=progress,
                                                  num_threads=threads, seed=seed)
    sasrec_model, sasrec_log = train_sasrec(full, sasrec_config)
    kept = subsample(full, valid_rows=valid_rows, test_rows=test_rows, seed=seed)
    texts = kept.titles + history_prompts(kept, "train", plural, singular)[:prompt_texts]
    base, tok = (policy or tiny_policy(seed))(texts, vocab)
    config = RecommendConfig(category=plural, singular=singular, num_threads=threads, decode_batch_size=decode_batch_size,
                             stop=stop)
    setup = prepare(kept, tok, sasrec_model.cpu(), config, reward)
    return setup, lambda: copy.deepcopy(base), sasrec_log
