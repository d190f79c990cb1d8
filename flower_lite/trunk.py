"""A frozen trunk: train only the top decoder layers of a causal LM, on cached trie states (CPU-friendly).

With the lower ``m`` decoder layers frozen, the hidden state entering layer m at a position depends only on
the token prefix up to it, i.e. on (prompt, trie state s) (METHOD.md section 2: a state is a node of the
title trie). So it is computed **once per prompt and per trie node** (:func:`build_cache`), and every later
pass runs only the top ``k`` layers, the final norm and the LM head on cached states:

* a batch of trajectories s_0 -> s_1 -> ... -> s_k (section 5) visits a prefix-closed set of nodes; the top
  layers run once over "prompt + those nodes" (:meth:`CachedTrunkPolicy.log_probs`, gradients into the
  trainable top layers) and give log pi(a_t | s_t) on every edge and log pi(T | s_t) at every state;
* the exact item distributions (section 6) need the logits of every state once: the cost grows with the
  number of trie nodes, not with the summed title lengths (:meth:`CachedTrunkPolicy.item_distributions`);
* constrained on-policy sampling walks the trie depth by depth, each step one top-layer pass over the
  states the batch has just reached (:meth:`CachedTrunkPolicy.sample`).

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
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from .models import LoraSettings, apply_lora
from .prompts import encode_prompts
from .trie import ROOT, Trajectories, Trie, TrieStructure

CHUNK_NODES = 1024
"""Nodes per pass when many nodes are run without gradients (cache build, exact distributions): the
attention scores of a chunk are ``chunk x (P + nodes so far)`` per head."""


# --------------------------------------------------------------------------------------------
# The model's pieces and freezing
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


def freeze_trunk(model: nn.Module, top_layers: int, lora: LoraSettings | None = None) -> nn.Module:
    """Freeze everything but the top ``top_layers`` decoder layers (in place); returns the model to train.

    With ``lora``: LoRA adapters (``models.apply_lora``, ``lora.target_modules``) on those layers only, the
    returned model is the peft wrapper and only the adapters train. Without: every weight of those layers
    trains. Embeddings, the (tied) LM head, the final norm and the lower layers are frozen either way.
    """
    if hasattr(model, "peft_config"):
        raise ValueError("the model already has peft adapters: pass the bare transformers model")
    layers = decoder_parts(model).layers
    if not 1 <= top_layers <= len(layers):
        raise ValueError(f"top_layers must be in 1..{len(layers)}, got {top_layers}")
    top = range(len(layers) - top_layers, len(layers))
    if lora is not None:  # the full names of the targeted modules of the top layers
        full_name = {id(m): n for n, m in model.named_modules()}
        names = tuple(full_name[id(m)] for i in top for n, m in layers[i].named_modules() if n.split(".")[-1] in lora.target_modules)
        return apply_lora(model, replace(lora, target_modules=names))
    model.requires_grad_(False)
    for i in top:
        layers[i].requires_grad_(True)
    return model


@contextlib.contextmanager
def _eval_mode(modules: nn.ModuleList):
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
        if self.parts.attn_implementation == "sdpa":
            mask = allowed[None, None]
        else:  # eager adds the mask to the scores
            mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill(~allowed, torch.finfo(h.dtype).min)[None, None]
        embeddings = self.parts.rotary(h, positions)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True, position_embeddings=embeddings)
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
    with _eval_mode(lower), torch.autocast(prompt_ids.device.type, enabled=False):
        tree = TreePass(parts, lower, s, parts.embed(prompt_ids))
        chunks = [tree.extend(c, parts.embed(s.token[c])) for c in states.split(chunk_nodes)]
    node_hidden = tree.prompt_out.new_full((trie.num_nodes, tree.prompt_out.shape[-1]), math.nan, dtype=dtype)
    node_hidden[states] = torch.cat(chunks).to(dtype)
    return TrunkCache(tree.prompt_out.to(dtype), node_hidden)


# --------------------------------------------------------------------------------------------
# The policy on cached states
# --------------------------------------------------------------------------------------------


def _segment_log_softmax(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """log-softmax of ``values`` [E] within each segment (``segment`` [E] in 0..num_segments-1)."""
    peak = values.new_full((num_segments,), -math.inf).scatter_reduce(0, segment, values, reduce="amax")
    total = values.new_zeros(num_segments).index_add_(0, segment, (values - peak[segment]).exp())
    return values - (peak + total.log())[segment]


def _path_sums(structure: TrieStructure, edge: Tensor) -> Tensor:
    """[num_nodes] sum of ``edge`` [num_nodes] (the value of the edge into each node) from the root down."""
    total = torch.zeros_like(edge)
    for d in range(1, len(structure.depth_start) - 1):  # children have larger ids: one depth at a time
        n = torch.arange(int(structure.depth_start[d]), int(structure.depth_start[d + 1]), device=edge.device)
        total[n] = total[structure.parent[n]] + edge[n]
    return total


class CachedTrunkPolicy:
    """The policy pi(a | s) of a causal LM with frozen lower layers, on one title trie (see the module doc).

    ``CachedTrunkPolicy(model, tokenizer, trie, top_layers=1, lora=LoraSettings(r=16))`` freezes ``model``
    (:func:`freeze_trunk`; ``module`` is the model to train and save, a peft wrapper with ``lora``) and builds
    one :class:`TrunkCache` per distinct prompt string, lazily. Its methods give what the full model gives
    (``rollout.teacher_forced``, ``distributions.exact_item_distribution``, ``distributions.constrained_item_distribution``;
    sampling: the distribution of ``rollout.sample_on_policy``) up to float rounding, without running the lower
    layers again. The methods are those of ``rollout.LMPolicy`` (``module``, ``bind``, ``prompts``,
    ``log_probs``, ``sample``, ``item_distributions``), so ``train.Trainer`` takes either.

    ``cache_dtype`` stores the cache (``torch.bfloat16`` halves it); ``compute_dtype=torch.bfloat16`` runs the
    top layers and the LM head under CPU/CUDA autocast (weights and gradients stay float32).
    """

    def __init__(self, model: nn.Module, tokenizer, trie: Trie, top_layers: int = 1, lora: LoraSettings | None = None,
                 cache_dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None,
                 chunk_nodes: int = CHUNK_NODES):
        self.module = freeze_trunk(model, top_layers, lora)
        self.parts = decoder_parts(self.module)
        self.split = len(self.parts.layers) - top_layers
        self.top = self.parts.layers[self.split:]
        self.tokenizer, self.cache_dtype, self.compute_dtype, self.chunk_nodes = tokenizer, cache_dtype, compute_dtype, chunk_nodes
        weight = next(self.top.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.trie = trie.to(self.device)
        self.caches: dict[str, TrunkCache] = {}

    # ------------------------------------------------------------------ caching and the top layers
    def cache(self, prompt: str) -> TrunkCache:
        """The cache of ``prompt``, built on first use (one pass of the lower layers over P + states positions)."""
        if prompt not in self.caches:
            ids = encode_prompts(self.tokenizer, [prompt])["input_ids"][0].to(self.device)
            self.caches[prompt] = build_cache(self.parts, self.split, ids, self.trie, self.cache_dtype, self.chunk_nodes)
        return self.caches[prompt]

    def _top_pass(self, prompt: str) -> tuple[TreePass, Tensor]:
        """A :class:`TreePass` of the top layers for ``prompt`` and the cached node states [num_nodes, H]."""
        cache = self.cache(prompt)
        tree = TreePass(self.parts, self.top, self.trie.structure, cache.prompt_hidden.to(self.dtype))
        return tree, cache.node_hidden

    def _head(self, h: Tensor) -> Tensor:
        """Float32 logits [.., V] of top-layer outputs [.., H] (final norm, LM head)."""
        return self.parts.lm_head(self.parts.norm(h)).float()

    def _autocast(self):
        """Autocast to ``compute_dtype``; without one, whatever autocast the caller runs (e.g. ``accelerate``'s)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _check_trie(self, trie: Trie) -> None:
        """``ValueError`` unless ``trie`` has the token structure the caches were built on (rewards may differ)."""
        s, t = self.trie.structure, trie.structure
        if s is not t and not (trie.num_nodes == self.trie.num_nodes and torch.equal(s.token, t.token.to(self.device))
                               and torch.equal(s.parent, t.parent.to(self.device))):
            raise ValueError("this CachedTrunkPolicy caches the states of another trie: build one per trie")

    def node_logits(self, prompt: str, nodes: Tensor) -> Tensor:
        """Float32 logits [u, V] at distinct states ``nodes`` [u] (a prefix-closed set, the root allowed),
        from one pass of the top layers over "prompt + nodes"; with gradients when enabled."""
        with self._autocast():
            tree, hidden = self._top_pass(prompt)
            inner = nodes[nodes != ROOT]
            out = torch.cat([tree.extend(inner, hidden[inner].to(self.dtype)), tree.prompt_out[-1:]])
            row = torch.where(nodes == ROOT, -1, (nodes != ROOT).cumsum(0) - 1)  # the root: the last prompt position
            return self._head(out[row])

    # ------------------------------------------------------------------ the policy protocol (rollout.LMPolicy's)
    def bind(self, forward_module: nn.Module) -> None:
        """Accept the model as ``accelerate`` prepared it: it must be ``module`` itself (one process; the tree
        passes call the layers directly, so a DDP wrapper would never synchronise gradients)."""
        if forward_module is not self.module:
            raise ValueError("CachedTrunkPolicy trains in one process: the prepared model must be the policy's module")

    def prompts(self, texts: list[str]) -> list[str]:
        """The prompt batch of the protocol: the texts themselves (each is tokenised once, with its cache)."""
        return list(texts)

    def log_probs(self, prompts: list[str], trajs: list[Trajectories], eos_id: int | None = None,
                  child_tokens: list[Tensor | None] | None = None) -> list[tuple[Tensor, ...]]:
        """Per trajectory set: (log pi(a_t | s_t) [B, K], log pi(T | s_t) [B, K + 1]), 0 past the end; for a set
        given ``child_tokens`` [B, K + 1, C] (the trie children of its states) also log pi(c | s_t) [B, K + 1, C].

        Row b of every set continues ``prompts[b]``; all sets of one prompt share one top-layer pass over the
        union of their states, with gradients when enabled. Every state must be a trie node (``ValueError``
        otherwise); ``eos_id``, if given, must be the trie's T.
        """
        eos = self.trie.eos_id
        if eos_id is not None and eos_id != eos:
            raise ValueError(f"eos_id {eos_id} is not the trie's termination token {eos}")
        walks = [self._states(t) for t in trajs]  # [B, K + 1] states, -1 past the end
        kids = child_tokens or [None] * len(trajs)
        out = [(torch.zeros(t.tokens.shape, device=self.device), torch.zeros(w.shape, device=self.device))
               + (() if c is None else (torch.zeros(c.shape, device=self.device),)) for t, w, c in zip(trajs, walks, kids)]
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([b for b, p in enumerate(prompts) if p == prompt], device=self.device)
            nodes = torch.unique(torch.cat([w[rows][w[rows] >= 0] for w in walks]))
            logits = self.node_logits(prompt, nodes)
            log_z = logits.logsumexp(-1)
            row_of = torch.full((self.trie.num_nodes,), -1, dtype=torch.long, device=self.device)
            row_of[nodes] = torch.arange(nodes.numel(), device=self.device)
            for traj, w, c, parts in zip(trajs, walks, kids, out):
                r = row_of[w[rows].clamp_min(0)]  # [b, K + 1] logits row of each state
                tokens, mask = traj.tokens.to(self.device)[rows], traj.mask.to(self.device)[rows]
                a = logits[r[:, :-1], tokens] - log_z[r[:, :-1]]
                parts[0][rows] = torch.where(mask, a, 0.0)
                parts[1][rows] = torch.where(w[rows] >= 0, logits[r, eos] - log_z[r], 0.0)
                if c is not None:  # every child of every state: log pi(c | s)
                    parts[2][rows] = logits[r[..., None], c.to(self.device)[rows]] - log_z[r][..., None]
        return out

    def _states(self, traj: Trajectories) -> Tensor:
        """States s_0 .. s_k of each trajectory [B, K + 1] (-1 past the end); ``ValueError`` off the trie."""
        tokens, mask = traj.tokens.to(self.device), traj.mask.to(self.device)
        states = self.trie.walk(tokens, mask)
        valid = torch.arange(states.shape[1], device=self.device) <= traj.lengths.to(self.device)[:, None]
        off = valid & ((states < 0) | (self.trie.structure.token[states.clamp_min(0)] == self.trie.eos_id))
        if off.any():
            row = int(off.any(1).nonzero()[0])
            raise ValueError(f"trajectory {row} leaves the trie: {tokens[row, : int(traj.lengths[row])].tolist()}")
        return states

    @torch.no_grad()
    def sample(self, prompts: list[str], trie: Trie, temperature: float = 1.0, generator: torch.Generator | None = None,
               max_new_tokens: int = 64) -> Trajectories:
        """One title per prompt from pi restricted to the trie (softmax(logits / temperature) over the
        children of each state), the distribution of ``rollout.sample_on_policy``; ends with T on a complete title.

        Rows are drawn prompt by prompt (distinct prompts in order of first appearance), step by step: each
        step is one top-layer pass over the distinct states the rows have just reached, and the LM head is
        applied to the children's tokens only (the draws differ from ``sample_on_policy``'s for one seed).
        """
        self._check_trie(trie)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        tokens = torch.zeros(len(prompts), max_new_tokens, dtype=torch.long, device=self.device)
        lengths = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor([b for b, p in enumerate(prompts) if p == prompt], device=self.device)
            tokens[rows], lengths[rows] = self._sample_prompt(prompt, rows.numel(), temperature, generator, max_new_tokens)
        return Trajectories(tokens[:, : int(lengths.max())], lengths)

    def _sample_prompt(self, prompt: str, batch: int, temperature: float, generator: torch.Generator | None,
                       max_new_tokens: int) -> tuple[Tensor, Tensor]:
        """(tokens [batch, max_new_tokens], lengths [batch]) of ``batch`` titles sampled after ``prompt``."""
        s, eos = self.trie.structure, self.trie.eos_id
        nodes = torch.zeros(batch, dtype=torch.long, device=self.device)
        tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        active = torch.arange(batch, device=self.device)  # rows that have not written T yet
        with self._autocast():
            tree, hidden = self._top_pass(prompt)
            tree.extend(nodes[:0], hidden[:0].to(self.dtype))  # the prompt alone
            h = tree.prompt_out[-1:].expand(batch, -1)  # [active, H] top-layer outputs at the rows' states
            for t in range(max_new_tokens):
                children, logits = self._child_logits(h, nodes[active])
                pick = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)
                nxt = children.gather(1, pick).squeeze(1)
                going = s.token[nxt] != eos
                tokens[active[going], t] = s.token[nxt[going]]
                lengths[active[going]] += 1
                nodes[active[going]] = nxt[going]
                active = active[going]
                if active.numel() == 0:
                    return tokens, lengths
                new, inverse = torch.unique(nodes[active], return_inverse=True)  # all at depth t + 1: never run before
                h = tree.extend(new, hidden[new].to(self.dtype))[inverse]
        raise ValueError(f"a sampled title did not end within max_new_tokens={max_new_tokens}")

    def _child_logits(self, h: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """The children of states ``nodes`` [b] (node ids [b, C], padded with a real child) and their float32
        logits [b, C] (-inf on padding) from top-layer outputs ``h`` [b, H]: only the LM-head rows of the
        children's tokens, not the whole vocabulary."""
        s, head = self.trie.structure, self.parts.lm_head
        lo, count = s.child_lo[nodes], s.child_hi[nodes] - s.child_lo[nodes]
        offset = torch.arange(int(count.max()), device=self.device)
        real = offset < count[:, None]
        children = torch.where(real, lo[:, None] + offset, lo[:, None])
        child_tokens = s.token[children]
        logits = torch.einsum("bh,bch->bc", self.parts.norm(h), head.weight[child_tokens])
        if head.bias is not None:
            logits = logits + head.bias[child_tokens]
        return children, logits.float().masked_fill(~real, -math.inf)

    @torch.no_grad()
    def stop_log_probs(self, prompt: str, trie: Trie) -> Tensor:
        """log pi(T | s) at every state after ``prompt``: float64 [num_nodes], NaN at terminal nodes (as
        ``distributions.stop_log_probs``), from one pass of the top layers over every state."""
        self._check_trie(trie)
        out = torch.full((self.trie.num_nodes,), math.nan, dtype=torch.float64)
        with self._autocast(), _eval_mode(self.top):
            tree, hidden = self._top_pass(prompt)
            for i, chunk in enumerate(state_nodes(self.trie).split(self.chunk_nodes)):
                h = tree.extend(chunk, hidden[chunk].to(self.dtype))
                if i == 0:
                    chunk, h = torch.cat([chunk.new_tensor([ROOT]), chunk]), torch.cat([tree.prompt_out[-1:], h])
                logits = self._head(h).double()
                out[chunk.cpu()] = (logits[:, self.trie.eos_id] - logits.logsumexp(-1)).cpu()
        return out

    @torch.no_grad()
    def item_distributions(self, prompt: str, trie: Trie, temperature: float = 1.0) -> tuple[Tensor, float, Tensor]:
        """Exact title distributions after ``prompt``, from one pass of the top layers over every state.

        Returns (p_title float64 [num_titles]: the unconstrained model's probability of writing each title
        then T, in ``trie.terminal_nodes`` order; invalid_mass = 1 - p_title.sum(); p_constrained float64
        [num_titles]: constrained sampling at ``temperature``), as ``distributions.exact_item_distribution`` and
        ``distributions.constrained_item_distribution``. The top layers run in eval mode (no dropout).
        """
        self._check_trie(trie)
        s = self.trie.structure
        edge_pi = torch.zeros(self.trie.num_nodes, dtype=torch.float64, device=self.device)  # log pi(token[n] | parent[n])
        edge_q = torch.zeros_like(edge_pi)  # log q(token[n] | parent[n]), renormalised over the siblings
        with self._autocast(), _eval_mode(self.top):
            tree, hidden = self._top_pass(prompt)
            for i, chunk in enumerate(state_nodes(self.trie).split(self.chunk_nodes)):
                out = tree.extend(chunk, hidden[chunk].to(self.dtype))
                if i == 0:
                    chunk, out = torch.cat([chunk.new_tensor([ROOT]), chunk]), torch.cat([tree.prompt_out[-1:], out])
                logits = self._head(out)
                counts = s.child_hi[chunk] - s.child_lo[chunk]
                seg = torch.repeat_interleave(torch.arange(chunk.numel(), device=self.device), counts)
                edges = s.child_lo[chunk][seg] + torch.arange(seg.numel(), device=self.device) - (counts.cumsum(0) - counts)[seg]
                values = logits[seg, s.token[edges]].double()
                edge_pi[edges] = values - logits.logsumexp(-1).double()[seg]
                edge_q[edges] = _segment_log_softmax(values / temperature, seg, chunk.numel())
        terminals = self.trie.terminal_nodes
        p_title = _path_sums(s, edge_pi)[terminals].exp()
        return p_title, float(1.0 - p_title.sum()), _path_sums(s, edge_q)[terminals].exp()
