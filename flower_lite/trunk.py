"""A frozen trunk: train only the top decoder layers of a causal LM, on cached trie states (CPU-friendly).

With the lower ``m`` decoder layers frozen, the hidden state entering layer m at a position depends only on
the token prefix up to it, i.e. on (prompt, trie state s) (docs/method.md section 2: a state is a node of the
title trie). So it is computed **once per prompt and per trie node** (:func:`build_cache`), and every later
pass runs only the top ``k`` layers, the final norm and the LM head on cached states:

* a batch of trajectories s_0 -> s_1 -> ... -> s_k (section 5) visits a prefix-closed set of nodes; the top
  layers run once over "prompt + those nodes" (:meth:`CachedTrunkPolicy.log_probs`, gradients into the
  trainable top layers) and give log pi(a_t | s_t) on every edge and log pi(T | s_t) at every state;
* the exact item distributions (section 6) need the logits of every state once: the cost grows with the
  number of trie nodes, not with the summed title lengths (:meth:`CachedTrunkPolicy.item_distributions`);
* constrained on-policy sampling walks the trie depth by depth, each step one top-layer pass over the
  states the batch has just reached (:meth:`CachedTrunkPolicy.sample`).

The tree attention that runs "prompt + trie nodes" in one pass, the cache and their memory are in
:mod:`flower_lite.tree_attention`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from .distributions import state_title_log_probs
from .models import LoraSettings, apply_lora
from .prompts import encode_prompts
from .tree_attention import CHUNK_NODES, TreePass, TrunkCache, build_cache, decoder_parts, eval_mode, state_nodes
from .trie import ROOT, Trajectories, Trie


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


# --------------------------------------------------------------------------------------------
# The policy on cached states
# --------------------------------------------------------------------------------------------


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

    def _state_outputs(self, prompt: str):
        """Top-layer outputs at every state after ``prompt``, chunk by chunk: yields (nodes [c], outputs [c, H]),
        the root first. Run it under ``_autocast`` and ``eval_mode(self.top)``."""
        tree, hidden = self._top_pass(prompt)
        for i, chunk in enumerate(state_nodes(self.trie).split(self.chunk_nodes)):
            out = tree.extend(chunk, hidden[chunk].to(self.dtype))
            if i == 0:
                chunk, out = torch.cat([chunk.new_tensor([ROOT]), chunk]), torch.cat([tree.prompt_out[-1:], out])
            yield chunk, out

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
        head = self.parts.lm_head
        children, real = self.trie.children_of(nodes)
        children = torch.where(real, children, children[:, :1])  # a live state's first child is real
        child_tokens = self.trie.structure.token[children]
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
        with self._autocast(), eval_mode(self.top):
            for chunk, h in self._state_outputs(prompt):
                logits = self._head(h).double()
                out[chunk.cpu()] = (logits[:, self.trie.eos_id] - logits.logsumexp(-1)).cpu()
        return out

    def title_log_probs(self, prompt: str, trie: Trie, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Exact title log-probabilities after ``prompt``, float64 [num_titles] in ``trie.terminal_nodes`` order, from one
        pass of the top layers over every state, with gradients when enabled: (log p_title, the unconstrained
        model's log-probability of writing each title then T; log q_title, trie-constrained sampling at
        ``temperature``). The top layers run in eval mode (no dropout)."""
        self._check_trie(trie)
        with self._autocast(), eval_mode(self.top):
            states = ((chunk, self._head(out)) for chunk, out in self._state_outputs(prompt))
            return state_title_log_probs(self.trie, states, temperature)

    @torch.no_grad()
    def item_distributions(self, prompt: str, trie: Trie, temperature: float = 1.0) -> tuple[Tensor, float, Tensor]:
        """Exact title distributions after ``prompt`` (:meth:`title_log_probs`, exponentiated).

        Returns (p_title float64 [num_titles]: the unconstrained model's probability of writing each title
        then T, in ``trie.terminal_nodes`` order; invalid_mass = 1 - p_title.sum(); p_constrained float64
        [num_titles]: constrained sampling at ``temperature``), as ``distributions.exact_item_distribution`` and
        ``distributions.constrained_item_distribution``.
        """
        log_p, log_q = self.title_log_probs(prompt, trie, temperature)
        p_title = log_p.exp()
        return p_title, float(1.0 - p_title.sum()), log_q.exp()
