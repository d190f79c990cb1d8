"""The per-row frozen trunk: next-item training rows (prompt + target title) with the lower layers computed once.

RQ2 (docs/method.md 7) trains on rows whose prompt is the user's own history, so the states of
:mod:`flower_lite.trunk` (one prompt, every trie node) become one path per row: the row's prompt and its target
title s_0 -> s_1 -> ... -> s_k. With the lower ``m`` decoder layers frozen, the input of layer m at every position
of [prompt + title] depends only on the row's tokens, so it is computed **once per (model, rows, split layer)**
(:func:`row_states`) and kept on disk, memory-mapped, in a folder named by a hash of what defines it; every
method, θ and ablation of a comparison reads the same folder. Rows that share a prompt (RQ3's chosen and
rejected titles) run as one sequence with tree attention, the prompt once (:func:`compute_states`). A training
step then runs only the top ``k`` layers (:class:`RowTrunkPolicy`), with gradients into them:

* rows are batched with the prompts LEFT-padded and the titles right-padded, so the root state s_0 (the last
  prompt position) sits in one column for every row and state s_t in the column t after it; RoPE positions count
  real tokens only (the row gives the same log-probs alone and inside a batch);
* every top layer but the last runs over all positions; the last one needs only the keys and values at the
  prompt positions (two projections, no attention, no MLP) and the full layer at the k + 1 state positions,
  and the final norm and the LM head run at those positions only (:func:`top_pass`);
* log pi(a_t | s_t), log pi(T | s_t) and, for flow distillation, log pi(c | s_t) of every trie child are the
  full-vocabulary log-softmax at the state positions: exactly what ``rollout.teacher_forced`` gives from the
  full model, so every objective of :class:`~flower_lite.config.Objective` trains with teacher-forced
  trajectories (the rows' targets, ``TrainConfig.trajectories="offline"``) and the exact per-user flows.

Precision of the stored states: float32 by default. The lower layers' outputs then equal the full model's to
the last bit of its own forward pass, and the cached log-probabilities equal the full model's to ~1e-5
(``tests/test_row_trunk.py``); bfloat16 (``dtype=torch.bfloat16``) halves the folder (SmolLM2: 1,152 B per
position instead of 2,304) at a log-probability error of ~1e-2, measured in the same test file.

Memory: 4 H bytes per position in float32: 5,000 Movies & TV rows of ~105 tokens with SmolLM2 (H = 576) are
1.2 GB on disk, read through the page cache; a step reads its 16 rows (~4 MB).
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .models import LoraSettings
from .rollout import log_probs_along, log_probs_at
from .tree_attention import DecoderParts, decoder_parts, eval_mode, run_layers
from .trie import Trajectories, Trie
from .trunk import freeze_trunk

FORMAT = 1
"""Version of the folder layout; part of the key, so a new layout never reads an old folder."""


# --------------------------------------------------------------------------------------------
# Rows: prompt tokens + title tokens
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One training row: the prompt's token ids (special tokens as the tokenizer adds them) and the target
    title's one tokenization (T excluded: the state after the last title token is s_k, which predicts T)."""

    prompt: tuple[int, ...]
    title: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.title)


def trie_rows(tokenizer, prompts: Sequence[str], items: Sequence[int], trie: Trie) -> list[Row]:
    """The :class:`Row` of each (prompt, target item): ``tokenizer(prompt)`` and the item's trie path."""
    paths = trie.structure.paths.cpu()
    lengths = (trie.structure.path_length.cpu() - 1).tolist()
    ids = tokenizer(list(prompts))["input_ids"]
    return [Row(tuple(p), tuple(paths[i, : lengths[i]].tolist())) for p, i in zip(ids, items)]


# --------------------------------------------------------------------------------------------
# The stored states
# --------------------------------------------------------------------------------------------


def model_fingerprint(parts: DecoderParts, split: int) -> str:
    """sha256 of what the lower layers compute with: the embedding and layers ``[:split]`` (names, dtypes, bytes)."""
    h = hashlib.sha256()
    for module in (parts.embed, *parts.layers[:split]):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def rows_key(fingerprint: str, split: int, rows: Sequence[Row], dtype: torch.dtype) -> str:
    """The folder name of a cache: sha256 of the layout version, the model, the split layer, the dtype and every row."""
    h = hashlib.sha256(f"{FORMAT}:{fingerprint}:{split}:{dtype}:{len(rows)}".encode())
    for r in rows:
        h.update(np.asarray([len(r.prompt), len(r.title), *r.prompt, *r.title], dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


@dataclass
class RowStates:
    """The inputs of the first trainable layer at every position of every row, memory-mapped.

    ``hidden`` [total positions, H] (float32, or bfloat16 stored as its 16 bits); row r occupies
    ``hidden[offsets[r] : offsets[r + 1]]``: its ``prompt_len[r]`` prompt positions then its title positions.
    """

    rows: list[Row]
    hidden: np.ndarray  # [positions, H] float32, or uint16 holding bfloat16 bits
    offsets: np.ndarray  # [rows + 1] int64
    dtype: torch.dtype
    split: int
    folder: Path | None = None

    def __post_init__(self) -> None:
        self.index = {r: i for i, r in enumerate(self.rows)}
        self.prompt_len = np.fromiter((len(r.prompt) for r in self.rows), dtype=np.int64, count=len(self.rows))

    @property
    def nbytes(self) -> int:
        return int(self.hidden.nbytes)

    def row(self, r: int) -> Tensor:
        """Row ``r``'s stored states [positions, H] as a float32 tensor (a copy out of the mapped file)."""
        block = torch.from_numpy(np.array(self.hidden[self.offsets[r] : self.offsets[r + 1]]))
        return (block.view(torch.bfloat16) if self.dtype == torch.bfloat16 else block).float()


def prompt_groups(rows: Sequence[Row]) -> list[list[int]]:
    """Indices of ``rows`` grouped by prompt, in order of first appearance (RQ3's pair rows share one prompt)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, row in enumerate(rows):
        groups.setdefault(row.prompt, []).append(r)
    return list(groups.values())


def _tree_sequences(rows: Sequence[Row], groups: Sequence[list[int]]
                    ) -> tuple[Tensor, Tensor, Tensor, list[list[tuple[int, int]]]]:
    """One left-padded sequence per prompt group: the prompt once, then each row's title (tree attention).

    Returns ``ids`` [B, width], RoPE ``positions`` [B, width], ``allowed`` bool [B, width, width] and, per group, each
    row's title columns ``(start, end)``. A title token sees the prompt and the earlier tokens of its own title and
    sits at the position it has in its own row, so every state equals the row's own causal pass; a group of one row
    is that pass exactly. A padding column sees only itself (never an empty row, which would give NaN)."""
    seqs, spans = [], []
    for group in groups:
        prompt = list(rows[group[0]].prompt)
        seq, seg, pos, cols = prompt[:], [-1] * len(prompt), list(range(len(prompt))), []
        for j, r in enumerate(group):
            title = list(rows[r].title)
            cols.append((len(seq), len(seq) + len(title)))
            seq += title
            seg += [j] * len(title)
            pos += range(len(prompt), len(prompt) + len(title))
        seqs.append((seq, seg, pos))
        spans.append(cols)
    width = max(len(s) for s, _, _ in seqs)
    pad = [width - len(s) for s, _, _ in seqs]
    ids = torch.tensor([[0] * p + s for p, (s, _, _) in zip(pad, seqs)])
    seg = torch.tensor([[-2] * p + g for p, (_, g, _) in zip(pad, seqs)])
    positions = torch.tensor([[0] * p + q for p, (_, _, q) in zip(pad, seqs)])
    col = torch.arange(width)
    real = seg > -2
    same = (seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None])  # key is the prompt, or the query's own title
    causal = (col[:, None] >= col[None, :])[None]
    allowed = (causal & same & real[:, None, :] & real[:, :, None]) | torch.eye(width, dtype=torch.bool)
    spans = [[(pad[b] + a, pad[b] + e) for a, e in cols] for b, cols in enumerate(spans)]
    return ids, positions, allowed, spans


@torch.no_grad()
def compute_states(parts: DecoderParts, split: int, rows: Sequence[Row], out: np.ndarray, offsets: np.ndarray,
                   batch_tokens: int = 4096, progress: str | None = None) -> None:
    """Write the inputs of layer ``split`` at every position of ``rows`` into ``out`` [positions, H] (float32 or
    bfloat16 bits), ``offsets`` [rows + 1] giving each row's slice. Rows that share a prompt run as one sequence,
    the prompt once and each title attending to it alone (:func:`_tree_sequences`), so RQ3's pairs (one prompt, the
    chosen and k rejected titles) cost one prompt pass instead of k + 1. Sequences run in batches of about
    ``batch_tokens`` padded tokens, longest first (little padding), through the embedding and ``layers[:split]``
    in eval mode."""
    lower = parts.layers[:split]
    device = next(parts.embed.parameters()).device
    groups = prompt_groups(rows)
    length = [len(rows[g[0]].prompt) + sum(len(rows[r].title) for r in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda g: -length[g])
    batches, start = [], 0
    while start < len(order):
        size = max(1, batch_tokens // length[order[start]])
        batches.append([groups[g] for g in order[start : start + size]])
        start += size
    bf16 = out.dtype == np.uint16
    with eval_mode(lower), torch.autocast(device.type, enabled=False):
        for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False):
            ids, positions, allowed, spans = _tree_sequences(rows, batch)
            ids, positions, allowed = ids.to(device), positions.to(device), allowed.to(device)
            h = run_layers(parts, lower, parts.embed(ids), positions, allowed) if split else parts.embed(ids)
            for b, group in enumerate(batch):
                first = spans[b][0][0] - len(rows[group[0]].prompt)
                for r, (a, e) in zip(group, spans[b]):
                    block = torch.cat([h[b, first : spans[b][0][0]], h[b, a:e]]).float().cpu()
                    out[offsets[r] : offsets[r + 1]] = (block.to(torch.bfloat16).view(torch.uint16) if bf16 else block).numpy()


def row_states(model: nn.Module, rows: Sequence[Row], split: int, cache_dir: str | Path | None = None,
               dtype: torch.dtype = torch.float32, batch_tokens: int = 4096, progress: str | None = None) -> RowStates:
    """The :class:`RowStates` of ``rows`` below layer ``split`` of ``model``, read from ``cache_dir/<key>`` when a
    folder with the same key exists, else computed (:func:`compute_states`) and written there atomically (a
    temporary folder, then a rename). The key (:func:`rows_key`) hashes the lower layers' weights, the split, the
    dtype and every row's tokens, so a changed row, model or split never reads a stale folder. Without
    ``cache_dir`` the states stay in memory."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"row states are stored in float32 or bfloat16, not {dtype}")
    parts, rows = decoder_parts(model), list(rows)
    if not 0 <= split < len(parts.layers):
        raise ValueError(f"split must be in 0..{len(parts.layers) - 1}, got {split}")
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    width, np_dtype = parts.embed.weight.shape[1], (np.float32 if dtype == torch.float32 else np.uint16)
    if cache_dir is None:
        hidden = np.empty((int(offsets[-1]), width), dtype=np_dtype)
        compute_states(parts, split, rows, hidden, offsets, batch_tokens, progress)
        return RowStates(rows, hidden, offsets, dtype, split)
    folder = Path(cache_dir).expanduser() / rows_key(model_fingerprint(parts, split), split, rows, dtype)
    if not (folder / "meta.json").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=np_dtype, shape=(int(offsets[-1]), width))
        compute_states(parts, split, rows, hidden, offsets, batch_tokens, progress)
        hidden.flush()
        del hidden
        np.save(tmp / "offsets.npy", offsets)
        meta = {"format": FORMAT, "rows": len(rows), "positions": int(offsets[-1]), "hidden": width, "split": split,
                "dtype": str(dtype)}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if folder.exists():  # an unfinished folder of an interrupted run
            shutil.rmtree(folder)
        tmp.rename(folder)
    try:
        hidden = np.load(folder / "hidden.npy", mmap_mode="r")
        stored = np.load(folder / "offsets.npy")
    except (OSError, ValueError) as err:
        raise ValueError(f"corrupt row-state cache {folder} ({err}): delete the folder to compute it again") from None
    if not np.array_equal(stored, offsets) or hidden.shape != (int(offsets[-1]), width):
        raise ValueError(f"row-state cache {folder} does not match its rows: delete the folder to compute it again")
    return RowStates(rows, hidden, offsets, dtype, split, folder)


# --------------------------------------------------------------------------------------------
# The top layers over a batch of rows
# --------------------------------------------------------------------------------------------


class _PromptKeys:
    """A stand-in for a transformers cache in one attention call: the prompt's keys and values, computed
    outside the layer, are put before those of the positions the layer runs (``update`` is all attention calls)."""

    def __init__(self, keys: Tensor, values: Tensor):
        self.keys, self.values = keys, values

    def update(self, keys: Tensor, values: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


def _keys_values(layer: nn.Module, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Keys (rotated) and values [B, heads, r, head_dim] of a Llama/Qwen2 decoder ``layer`` at inputs ``h`` [B, r, H]."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    keys, values = attn.k_proj(x).view(shape).transpose(1, 2), attn.v_proj(x).view(shape).transpose(1, 2)
    rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    _, keys = rotary(keys, keys, cos, sin)
    return keys, values


def top_pass(parts: DecoderParts, top: nn.ModuleList, hidden: Tensor, prompt_len: Tensor, title_len: Tensor) -> Tensor:
    """Top-layer outputs [B, K + 1, H] at the states s_0 .. s_K of a batch of rows.

    ``hidden`` [B, P + K, H]: each row's stored states with its prompt left-padded to P columns and its title
    right-padded to K (``prompt_len`` [B], ``title_len`` [B] real tokens), so s_0 is column P - 1 and s_t column
    P + t - 1. The last top layer runs only at those K + 1 columns, over the keys and values of every column.
    """
    batch, width, _ = hidden.shape
    P = width - int(title_len.max()) if title_len.numel() else width
    col = torch.arange(width, device=hidden.device)
    real = (col[None] >= P - prompt_len[:, None]) & (col[None] < P + title_len[:, None])
    positions = (col[None] - (P - prompt_len[:, None])).clamp_min(0)
    causal = col[:, None] >= col[None, :]
    allowed = (causal[None] & real[:, None, :] & real[:, :, None]) | torch.eye(width, dtype=torch.bool, device=hidden.device)
    h = run_layers(parts, top[:-1], hidden, positions, allowed)
    last, q = top[-1], slice(P - 1, width)
    cos, sin = parts.rotary(h, positions)
    keys, values = _keys_values(last, h[:, : P - 1], cos[:, : P - 1], sin[:, : P - 1])
    return run_layers(parts, top[-1:], h[:, q], positions[:, q], allowed[:, q], _PromptKeys(keys, values))


class RowTrunkPolicy:
    """The policy pi(a | s) of a causal LM with frozen lower layers on next-item rows (see the module doc).

    ``RowTrunkPolicy(model, tokenizer, trie, states, top_layers=2, lora=LoraSettings(r=16))`` freezes ``model``
    (:func:`~flower_lite.trunk.freeze_trunk`; ``module`` is the model to train, a peft wrapper with ``lora``) and
    reads the rows' lower-layer states from ``states`` (:func:`row_states` of the same model below the same
    layer; several policies share one). It answers ``train.Trainer``'s calls (``module``, ``bind``, ``prompts``,
    ``log_probs``) for trajectories along the rows' own targets; on-policy or catalogue trajectories would visit
    states that were never stored and are refused.
    """

    def __init__(self, model: nn.Module, tokenizer, trie: Trie, states: RowStates, top_layers: int = 2,
                 lora: LoraSettings | None = None):
        self.module = freeze_trunk(model, top_layers, lora)
        self.parts = decoder_parts(self.module)
        self.split = len(self.parts.layers) - top_layers
        if states.split != self.split:
            raise ValueError(f"the row states were computed below layer {states.split}; top_layers={top_layers} needs {self.split}")
        self.top = self.parts.layers[self.split:]
        self.tokenizer, self.trie, self.states = tokenizer, trie, states
        weight = next(self.top.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self._prompt_ids: dict[str, tuple[int, ...]] = {}

    def with_states(self, states: RowStates) -> "RowTrunkPolicy":
        """This policy (the same module and weights) reading other stored rows, e.g. RQ3's preference rows
        (:func:`row_states` of this module below the same layer)."""
        if states.split != self.split:
            raise ValueError(f"the row states were computed below layer {states.split}; this policy splits at {self.split}")
        other = copy.copy(self)
        other.states, other._prompt_ids = states, dict(self._prompt_ids)
        return other

    def bind(self, forward_module: nn.Module) -> None:
        """Accept the model as ``accelerate`` prepared it: it must be ``module`` itself (one process)."""
        if forward_module is not self.module:
            raise ValueError("RowTrunkPolicy trains in one process: the prepared model must be the policy's module")

    def prompts(self, texts: list[str]) -> list[str]:
        """The prompt batch of the protocol: the texts themselves."""
        return list(texts)

    def _row(self, prompt: str, title: tuple[int, ...]) -> int:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = tuple(self.tokenizer(prompt)["input_ids"])
        r = self.states.index.get(Row(self._prompt_ids[prompt], title))
        if r is None:
            raise ValueError("a trajectory is not a stored row (prompt + target title): the per-row trunk trains on "
                             "the rows' own targets only (trajectories='offline'); store the row with row_states()")
        return r

    def log_probs(self, prompts: list[str], trajs: list[Trajectories], eos_id: int | None = None,
                  child_tokens: list[Tensor | None] | None = None) -> list[tuple[Tensor, ...]]:
        """Per trajectory set: (log pi(a_t | s_t) [B, K], log pi(T | s_t) [B, K + 1]) and, given ``child_tokens``
        [B, K + 1, C], log pi(c | s_t) [B, K + 1, C]; 0 past each title's end; gradients into the top layers."""
        eos = self.trie.eos_id if eos_id is None else eos_id
        kids = child_tokens or [None] * len(trajs)
        return [self._set_log_probs(prompts, t, eos, c) for t, c in zip(trajs, kids)]

    def _set_log_probs(self, prompts: list[str], traj: Trajectories, eos: int, children: Tensor | None) -> tuple[Tensor, ...]:
        lengths = traj.lengths.cpu()
        tokens = traj.tokens.cpu()
        rows = [self._row(p, tuple(tokens[b, : int(lengths[b])].tolist())) for b, p in enumerate(prompts)]
        hidden, prompt_len, title_len = self._batch(rows)
        out = top_pass(self.parts, self.top, hidden, prompt_len, title_len)
        logits = self.parts.lm_head(self.parts.norm(out)).float()  # [B, K + 1, V]
        K = traj.tokens.shape[1]
        logits = logits[:, : K + 1]
        action, stop = log_probs_along(logits, traj.tokens.to(self.device), traj.mask.to(self.device), eos)
        if children is None:
            return action, stop
        return action, stop, log_probs_at(logits, children.to(self.device)[:, : K + 1])

    def _batch(self, rows: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """The stored states of ``rows`` [B, P + K, H] (prompts left-padded, titles right-padded) and their lengths."""
        s = self.states
        prompt_len = torch.tensor([int(s.prompt_len[r]) for r in rows])
        title_len = torch.tensor([len(s.rows[r].title) for r in rows])
        P, K = int(prompt_len.max()), int(title_len.max())
        blocks = [s.row(r) for r in rows]
        hidden = torch.zeros(len(rows), P + K, blocks[0].shape[-1])
        for b, block in enumerate(blocks):
            p = int(prompt_len[b])
            hidden[b, P - p : P + int(title_len[b])] = block
        return hidden.to(self.device, self.dtype), prompt_len.to(self.device), title_len.to(self.device)

    def sample(self, *args, **kwargs):
        raise ValueError("the per-row trunk stores the rows' target titles only: train it with trajectories='offline'")

    def item_distributions(self, *args, **kwargs):
        raise ValueError("the per-row trunk has no exact item distribution: decode the trained module instead")
