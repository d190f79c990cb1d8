"""Tree attention: decoder layers over "prompt + trie nodes" in one pass, and the frozen-trunk cache.

**Tree attention.** "Prompt + nodes" is one sequence: the prompt's P positions are causal and numbered
0..P-1; node n sits at position ``P + depth(n) - 1`` (where its token would be after the prompt) and
attends to the prompt, its ancestors and itself, so it sees exactly the causal context of its prefix.
The sequence grows chunk by chunk (:class:`TreePass`, a transformers ``DynamicCache`` holds the keys and
values of the positions run so far; parents come before children because trie nodes are numbered
breadth-first). The root s_0 (empty prefix) has no position of its own: its logits are those of the last
prompt position. Terminal nodes (after T) are never states, so they are never run.

Memory: the cache holds ``P + num_nodes`` rows of H floats per prompt (rows of the root and of terminal nodes
are NaN), ``4 * H`` bytes per node in float32 (2,304 B for SmolLM2-135M, 1.2 MB for the paper's 100 movies,
512 nodes); building it keeps, transiently, the keys and values of the lower layers, ``2 * m * kv_dim * 4``
bytes per node (44.5 KB for SmolLM2 with m = 29).

Assumptions, checked where cheap: decoder layers called as in transformers 5 (Llama, Qwen2: ``layer(h,
attention_mask, position_ids, cache, use_cache, position_embeddings)``), full attention on every layer,
``sdpa`` or ``eager`` attention. The lower layers run in eval mode (no dropout; their weights never change,
so a cache stays valid as long as the lower layers are untouched).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from .trie import ROOT, Trie, TrieStructure

CHUNK_NODES = 1024
"""Nodes per pass when many nodes are run without gradients (cache build, exact distributions): the
attention scores of a chunk are ``chunk x (P + nodes so far)`` per head."""


# --------------------------------------------------------------------------------------------
# The model's pieces
# --------------------------------------------------------------------------------------------


@dataclass
class DecoderParts:
    """The modules of a decoder-only LM that the tree passes call directly."""

    embed: nn.Module  # token ids -> [.., H]
    layers: nn.ModuleList  # the decoder layers, bottom to top
    rotary: nn.Module  # (x, position_ids [1, L]) -> (cos, sin)
    norm: nn.Module  # final norm
    lm_head: nn.Module  # [.., H] -> [.., V]
    attn_implementation: str


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The pieces of a Llama / Qwen2-style ``*ForCausalLM`` (peft-wrapped or not); ``ValueError`` otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(decoder, a)]
    if missing:
        raise ValueError(f"{type(base).__name__}: no {', '.join(missing)}; the frozen trunk needs a Llama/Qwen2-style decoder")
    config = base.config
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        raise ValueError(f"{type(base).__name__}: sliding-window layers are not supported by the tree attention mask")
    if config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attention implementation {config._attn_implementation!r}: the tree mask needs 'sdpa' or 'eager'")
    return DecoderParts(decoder.embed_tokens, decoder.layers, decoder.rotary_emb, decoder.norm,
                        base.get_output_embeddings(), config._attn_implementation)


@contextlib.contextmanager
def eval_mode(modules: nn.ModuleList):
    """Run ``modules`` in eval mode (no dropout), restoring each one's mode afterwards."""
    modes = [m.training for m in modules]
    modules.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


# --------------------------------------------------------------------------------------------
# Tree attention over "prompt + trie nodes"
# --------------------------------------------------------------------------------------------


class TreePass:
    """Decoder ``layers`` over the sequence "prompt + trie nodes", grown chunk by chunk with tree attention.

    The first :meth:`extend` also runs the prompt (P positions, causal, numbered 0..P-1), so one call is one
    pass through the layers (gradients flow with no reliance on the KV cache, which gradient checkpointing
    would drop); later calls attend to the cached keys and values of everything run before.
    """

    def __init__(self, parts: DecoderParts, layers: nn.ModuleList, structure: TrieStructure, prompt_inputs: Tensor):
        self.parts, self.layers, self.structure = parts, layers, structure
        self.prompt_inputs = prompt_inputs  # [P, H] inputs of the first layer in ``layers``
        self.prompt_len = prompt_inputs.shape[0]
        self.column = torch.full_like(structure.parent, -1)  # [num_nodes] sequence position of each node run
        self.length = 0  # positions run so far
        self.cache = DynamicCache()
        self.prompt_out: Tensor | None = None  # [P, H] outputs at the prompt; the last row is the root state s_0

    def _ancestors(self, nodes: Tensor) -> Tensor:
        """bool [u, length]: node i may attend to column j (the prompt, its ancestors, itself)."""
        allowed = torch.zeros(nodes.numel(), self.length, dtype=torch.bool, device=nodes.device)
        allowed[:, : self.prompt_len] = True
        rows, cur = torch.arange(nodes.numel(), device=nodes.device), nodes
        while cur.numel():
            cols = self.column[cur]
            if (cols < 0).any():
                raise ValueError(f"node {int(cur[cols < 0][0])} runs before its ancestors (the node set is not prefix-closed)")
            allowed[rows, cols] = True
            up = self.structure.parent[cur]
            rows, cur = rows[up != ROOT], up[up != ROOT]
        return allowed

    def extend(self, nodes: Tensor, inputs: Tensor) -> Tensor:
        """Run ``nodes`` [u] (not the root; each node's ancestors already run or in ``nodes``) with layer
        inputs ``inputs`` [u, H]; returns their outputs [u, H] (the first call also sets ``prompt_out``)."""
        s, start = self.structure, self.length
        positions = self.prompt_len + s.depth[nodes] - 1
        if start == 0:
            inputs = torch.cat([self.prompt_inputs, inputs])
            positions = torch.cat([torch.arange(self.prompt_len, device=nodes.device), positions])
        self.length = start + inputs.shape[0]
        self.column[nodes] = torch.arange(self.length - nodes.numel(), self.length, device=nodes.device)
        allowed = self._ancestors(nodes)
        if start == 0:
            prompt_rows = torch.ones(self.prompt_len, self.length, dtype=torch.bool, device=nodes.device).tril()
            allowed = torch.cat([prompt_rows, allowed])
        h = self._run(inputs[None], positions[None], allowed)[0]
        if start == 0:
            self.prompt_out, h = h[: self.prompt_len], h[self.prompt_len:]
        return h

    def _run(self, h: Tensor, positions: Tensor, allowed: Tensor) -> Tensor:
        """[1, r, H] through every layer; ``allowed`` [r, length] is the mask over all positions so far."""
        return run_layers(self.parts, self.layers, h, positions, allowed[None], self.cache)


def attention_mask(parts: DecoderParts, allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """The 4-D mask [B, 1, r, length] the decoder layers take, from ``allowed`` bool [B, r, length] (query i may
    attend to key j): the boolean itself for ``sdpa``, 0 / the dtype's minimum added to the scores for ``eager``."""
    if parts.attn_implementation == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def run_layers(parts: DecoderParts, layers, h: Tensor, positions: Tensor, allowed: Tensor, cache: DynamicCache | None = None) -> Tensor:
    """``h`` [B, r, H] at RoPE ``positions`` [B, r] through ``layers`` with the mask ``allowed`` bool [B, r, length]
    (length = r, or r plus what ``cache`` already holds: the keys and values of earlier positions)."""
    mask = attention_mask(parts, allowed, h.dtype)
    embeddings = parts.rotary(h, positions)
    for layer in layers:
        h = layer(h, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None,
                  position_embeddings=embeddings)
    return h


def state_nodes(trie: Trie) -> Tensor:
    """Every state but the root, ascending (breadth-first): the nodes whose edge is not T."""
    s = trie.structure
    nodes = torch.arange(1, trie.num_nodes, device=s.token.device)
    return nodes[s.token[nodes] != trie.eos_id]


@dataclass
class TrunkCache:
    """Frozen inputs of the top layers for one prompt: every prompt position and every trie state."""

    prompt_hidden: Tensor  # [P, H]
    node_hidden: Tensor  # [num_nodes, H]; NaN at the root and at terminal nodes (never run)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.prompt_hidden, self.node_hidden))


@torch.no_grad()
def build_cache(parts: DecoderParts, split: int, prompt_ids: Tensor, trie: Trie, dtype: torch.dtype = torch.float32,
                chunk_nodes: int = CHUNK_NODES) -> TrunkCache:
    """The inputs of layer ``split`` at every position of "prompt + states of ``trie``", each node run once.

    ``prompt_ids`` [P] token ids of the prompt. Lower layers ``layers[:split]`` run in eval mode, in chunks
    of ``chunk_nodes`` nodes; the result is stored in ``dtype``.
    """
    lower, s = parts.layers[:split], trie.structure
    states = state_nodes(trie)
    with eval_mode(lower), torch.autocast(prompt_ids.device.type, enabled=False):
        tree = TreePass(parts, lower, s, parts.embed(prompt_ids))
        chunks = [tree.extend(c, parts.embed(s.token[c])) for c in states.split(chunk_nodes)]
    node_hidden = tree.prompt_out.new_full((trie.num_nodes, tree.prompt_out.shape[-1]), math.nan, dtype=dtype)
    node_hidden[states] = torch.cat(chunks).to(dtype)
    return TrunkCache(tree.prompt_out.to(dtype), node_hidden)
