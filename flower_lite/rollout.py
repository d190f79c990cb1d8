"""Trajectories of a causal LM on the title trie (docs/method.md section 5, "Trajectories").

* The forward passes: the logits at every state of right-padded continuations of left-padded prompts
  (``teacher_forced_logits``) and the full-vocabulary log-softmax read at the tokens taken
  (``log_probs_along``), at T, or at any tokens (``log_probs_at``, e.g. every trie child).
* Teacher forcing along dataset items: one forward pass gives log pi(a_t | s_t) and
  log pi(T | s_t) at every prefix (``teacher_forced_log_probs``, ``teacher_forced``).
* On-policy sampling masked to the trie, with temperature and a KV cache (``sample_on_policy``).
  Sampling runs without gradients; the sampled titles are then teacher-forced with gradients.
  The gradient is the same as back-propagating through the sampling loop (the reference's way,
  sampled tokens are discrete and carry no gradient), without keeping the sampling graph in memory.
* Several trajectory sets on the same prompts (the SFT targets and the sampled or catalogue titles of
  one Flower step) share one pass over the prompts (``prompt_pass`` then ``continue_prompts``): the
  prompt's KV cache, computed once with gradients, seeds the sampling (detached) and the
  teacher-forced pass over all titles. The prompt is usually most of the tokens, so this removes two
  of the three prompt passes of an on-policy step.
* A mix of the two with the reference's schedule (``OfflineSchedule``).

Every title has one token path (``trie.structure.paths``), shared by SFT targets, trajectories,
rewards and decoding.

:class:`LMPolicy` puts these behind the three calls a training loop and an evaluation make of a policy
(``log_probs`` along trajectory sets, ``sample``, ``item_distributions``); the frozen-trunk policy of
:mod:`flower_lite.trunk` answers the same calls from cached hidden states.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .prompts import left_pad, pad_id
from .trie import Trajectories, Trie

__all__ = ["Trajectories", "teacher_forced_logits", "teacher_forced_log_probs", "log_probs_along", "log_probs_at",
           "LMPolicy", "teacher_forced", "PromptPass", "prompt_pass", "continue_prompts", "sample_on_policy", "kv_cache",
           "OfflineSchedule"]


def teacher_forced_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor,
) -> torch.Tensor:
    """Float32 logits at every state along right-padded continuations: ``[B, T]`` -> ``[B, T + 1, V]``.

    Row t is the distribution after the prompt and ``continuation_ids[:, :t]``. One forward pass;
    only the T + 1 positions that predict continuation tokens go through the LM head.
    """
    cont_mask = continuation_mask.to(device=input_ids.device, dtype=torch.bool)
    steps = continuation_ids.shape[1]
    ids = torch.cat([input_ids, continuation_ids.to(input_ids.device)], dim=1)
    mask = torch.cat([attention_mask, cont_mask.to(attention_mask.dtype)], dim=1)
    offsets = torch.arange(1, steps + 1, device=input_ids.device)
    positions = torch.cat([position_ids, position_ids[:, -1:] + offsets], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=steps + 1)
    return out.logits.float()


def teacher_forced_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor,
    extra_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass over prompt + continuation; per-token log pi under teacher forcing.

    Args:
        input_ids, attention_mask, position_ids: left-padded prompts, [B, L] (:func:`~flower_lite.prompts.encode_prompts`).
        continuation_ids: [B, T] tokens a_0 .. a_{T-1}, right-padded; continuation_mask: [B, T].
        extra_token_id: a token whose log-prob is wanted at every state, typically the
            termination token T (EOS).

    Returns:
        log_pi_action: [B, T], log pi(a_t | s_t) with s_t = prompt + a_<t; 0 where masked.
        log_pi_extra: [B, T + 1], log pi(extra | s_t) for t = 0 .. T (s_0 = prompt alone);
            0 for states past the continuation's end; None if ``extra_token_id`` is None.

    Log-softmax is over the full vocabulary, in float32. Only the T + 1 positions that predict
    continuation tokens go through the LM head (``logits_to_keep``). Gradients flow if enabled.
    """
    cont_mask = continuation_mask.to(device=input_ids.device, dtype=torch.bool)
    cont_ids = continuation_ids.to(input_ids.device).masked_fill(~cont_mask, 0)
    logits = teacher_forced_logits(model, input_ids, attention_mask, position_ids, cont_ids, cont_mask)
    return log_probs_along(logits, cont_ids, cont_mask, extra_token_id)


def log_probs_along(
    logits: torch.Tensor, continuation_ids: torch.Tensor, continuation_mask: torch.Tensor, extra_token_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`teacher_forced_log_probs` from the logits ``[B, T + 1, V]`` at the states of the continuations
    ``[B, T]`` (mask ``[B, T]``): the log-softmax over the vocabulary, in float32."""
    cont_mask = continuation_mask.to(device=logits.device, dtype=torch.bool)
    cont_ids = continuation_ids.to(logits.device).masked_fill(~cont_mask, 0)
    steps = cont_ids.shape[1]
    logits = logits.float()
    log_z = logits.logsumexp(-1)  # [B, T + 1]
    log_pi_action = logits[:, :steps].gather(-1, cont_ids.unsqueeze(-1)).squeeze(-1) - log_z[:, :steps]
    log_pi_action = log_pi_action.masked_fill(~cont_mask, 0.0)
    if extra_token_id is None:
        return log_pi_action, None
    state_valid = torch.cat([torch.ones_like(cont_mask[:, :1]), cont_mask], dim=1)  # s_0 always exists
    log_pi_extra = (logits[..., extra_token_id] - log_z).masked_fill(~state_valid, 0.0)
    return log_pi_action, log_pi_extra


def log_probs_at(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(tokens | state): the full-vocabulary log-softmax of ``logits`` [B, S, V] at ``tokens`` [B, S, C]
    (e.g. every trie child of each state), float32 [B, S, C]."""
    logits = logits.float()
    return logits.gather(-1, tokens.to(logits.device)) - logits.logsumexp(-1, keepdim=True)


def teacher_forced(model, prompts: dict[str, Tensor], traj: Trajectories, eos_id: int,
                   child_tokens: Tensor | None = None) -> tuple[Tensor, ...]:
    """(log pi(a_t | s_t) [batch, K], log pi(T | s_t) [batch, K + 1]) in one forward pass, with gradients;
    with ``child_tokens`` [batch, K + 1, C] (the trie children of every state) also log pi(c | s_t) [batch, K + 1, C].

    ``prompts`` is a left-padded batch (``prompts.encode_prompts`` / ``left_pad``) on the model's device.
    """
    device = prompts["input_ids"].device
    tokens, mask = traj.tokens.to(device), traj.mask.to(device)
    if child_tokens is None:
        return teacher_forced_log_probs(model, prompts["input_ids"], prompts["attention_mask"], prompts["position_ids"],
                                        tokens, mask, extra_token_id=eos_id)
    tokens = tokens.masked_fill(~mask, 0)
    logits = teacher_forced_logits(model, prompts["input_ids"], prompts["attention_mask"], prompts["position_ids"], tokens, mask)
    return (*log_probs_along(logits, tokens, mask, eos_id), log_probs_at(logits, child_tokens[:, : logits.shape[1]]))


@dataclass
class PromptPass:
    """One forward pass over a left-padded batch of prompts: the logits of the first state s_0 (the
    prompt alone) ``[B, V]`` float32, and the KV cache of the prompt tokens, with gradients when enabled."""

    logits: Tensor
    cache: object  # a transformers Cache
    cache_arg: str  # the forward's keyword for it ("cache", or "past_key_values" before transformers 5.x)

    def detached(self) -> "PromptPass":
        """The same values cut from the graph, in a cache of their own (sampling appends to it)."""
        return PromptPass(self.logits.detach(), _map_cache(self.cache, Tensor.detach), self.cache_arg)

    def repeated(self, n: int) -> "PromptPass":
        """Each prompt's row ``n`` times in a row (``[B * n, ...]``), cut from the graph: ``n`` samples per prompt
        from one pass over it."""
        rep = lambda t: t.detach().repeat_interleave(n, dim=0)  # noqa: E731
        return PromptPass(rep(self.logits), _map_cache(self.cache, rep), self.cache_arg)


def _cache_of(output) -> tuple[object, str]:
    if hasattr(output, "cache"):
        return output.cache, "cache"
    return output.past_key_values, "past_key_values"


def _map_cache(cache, fn):
    """A new DynamicCache holding ``fn(keys), fn(values)`` of every layer of ``cache``."""
    from transformers import DynamicCache

    return DynamicCache([(fn(layer.keys), fn(layer.values)) for layer in cache.layers])


def prompt_pass(model, prompts: dict[str, Tensor]) -> PromptPass | None:
    """Run the prompts once with a KV cache (only the last position goes through the LM head).

    None when the model returns no usable cache, e.g. under gradient checkpointing while training
    (transformers then drops the cache so that the backward replay does not write it twice).
    """
    ids = prompts["input_ids"]
    out = model(input_ids=ids, attention_mask=prompts["attention_mask"], position_ids=prompts["position_ids"],
                use_cache=True, logits_to_keep=1)
    cache, arg = _cache_of(out)
    if cache is None or not hasattr(cache, "layers") or cache.get_seq_length() != ids.shape[1]:
        return None
    return PromptPass(out.logits[:, -1].float(), cache, arg)


def continue_prompts(model, prompts: dict[str, Tensor], first: PromptPass, trajs: list[Trajectories], eos_id: int,
                     child_tokens: list[Tensor | None] | None = None) -> list[tuple[Tensor, ...]]:
    """:func:`teacher_forced` for several trajectory sets on the same prompts, from one :func:`prompt_pass`.

    The sets are stacked into one batch of ``len(trajs) * B`` continuations that attend to the prompt's
    cache (repeated per set); returns ``(log pi(a_t | s_t), log pi(T | s_t))`` per set, equal to
    :func:`teacher_forced` of each set, gradients included (they flow into the prompt pass once), and
    log pi(c | s_t) [B, K + 1, C] for a set given ``child_tokens``.
    """
    device, n = prompts["input_ids"].device, len(trajs)
    width = max(t.tokens.shape[1] for t in trajs)
    stacked = Trajectories(torch.cat([torch.nn.functional.pad(t.tokens.to(device), (0, width - t.tokens.shape[1]))
                                      for t in trajs]), torch.cat([t.lengths.to(device) for t in trajs]))
    tokens, mask = stacked.tokens, stacked.mask
    logits = first.logits.repeat(n, 1)[:, None]  # s_0 of every continuation
    if width:
        cache = _map_cache(first.cache, lambda x: x.repeat(n, 1, 1, 1))
        attention = torch.cat([prompts["attention_mask"].repeat(n, 1), mask.to(prompts["attention_mask"].dtype)], dim=1)
        positions = prompts["position_ids"][:, -1:].repeat(n, 1) + torch.arange(1, width + 1, device=device)
        out = model(input_ids=tokens, attention_mask=attention, position_ids=positions, use_cache=True,
                    **{first.cache_arg: cache})
        logits = torch.cat([logits, out.logits.float()], dim=1)  # [n B, width + 1, V]
    action, stop = log_probs_along(logits, tokens, mask, eos_id)
    batch = prompts["input_ids"].shape[0]
    out = []
    for k, t in enumerate(trajs):
        rows, width = slice(k * batch, (k + 1) * batch), t.tokens.shape[1]
        pair = (action[rows, :width], stop[rows, : width + 1])
        kids = (child_tokens or [None] * len(trajs))[k]
        out.append(pair if kids is None else (*pair, log_probs_at(logits[rows, : width + 1], kids[:, : width + 1])))
    return out


@dataclass
class PromptBatch:
    """Prompts of one step, tokenised and left-padded on the model's device, with their shared
    :func:`prompt_pass` once one is computed (``first``; None until then, or when the model gives none)."""

    texts: list[str]
    encoded: dict[str, Tensor]
    first: PromptPass | None = None
    passed: bool = False  # whether prompt_pass has been tried


class LMPolicy:
    """A Hugging Face causal LM as a policy on the title trie (docs/method.md 5).

    ``module`` is the model that is trained and saved; ``forward_module`` the one called with gradients
    (the ``accelerate``-wrapped model while training; ``bind`` sets it). Prompts are tokenised once per
    string. ``log_probs`` of one trajectory set is one teacher-forced pass; several sets on the same
    prompts share one :func:`prompt_pass` (as does ``sample`` before them).
    """

    def __init__(self, model: torch.nn.Module, tokenizer):
        self.module, self.forward_module, self.tokenizer = model, model, tokenizer
        self._pad_id, self._tokens = pad_id(tokenizer), {}

    def bind(self, forward_module: torch.nn.Module) -> None:
        """Call ``forward_module`` (e.g. the model wrapped for several processes) for the passes with gradients."""
        self.forward_module = forward_module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def prompts(self, texts: list[str]) -> PromptBatch:
        """The left-padded batch of ``texts`` (each string tokenised once, then cached)."""
        rows = []
        for text in texts:
            if text not in self._tokens:
                self._tokens[text] = self.tokenizer(text)["input_ids"]
            rows.append(self._tokens[text])
        return PromptBatch(list(texts), {k: v.to(self.device) for k, v in left_pad(rows, self._pad_id).items()})

    def _first(self, batch: PromptBatch) -> PromptPass | None:
        if not batch.passed:
            batch.first, batch.passed = prompt_pass(self.forward_module, batch.encoded), True
        return batch.first

    def log_probs(self, batch: PromptBatch, trajs: list[Trajectories], eos_id: int,
                  child_tokens: list[Tensor | None] | None = None) -> list[tuple[Tensor, ...]]:
        """``(log pi(a_t | s_t) [B, K], log pi(T | s_t) [B, K + 1])`` of every trajectory set, with gradients;
        for a set with ``child_tokens`` [B, K + 1, C] (its states' trie children) also log pi(c | s_t)."""
        first = self._first(batch) if len(trajs) > 1 or batch.passed else None
        if first is not None:
            return continue_prompts(self.forward_module, batch.encoded, first, trajs, eos_id, child_tokens)
        # one set, or no usable prompt cache (gradient checkpointing): teacher-force each set
        kids = child_tokens or [None] * len(trajs)
        return [teacher_forced(self.forward_module, batch.encoded, t, eos_id, c) for t, c in zip(trajs, kids)]

    def sample(self, batch: PromptBatch, trie: Trie, temperature: float, generator: torch.Generator,
               max_new_tokens: int, repeats: int = 1) -> Trajectories:
        """One trie-masked title per prompt (:func:`sample_on_policy`), from the batch's shared prompt pass;
        ``repeats`` > 1: that many per prompt, rows ``[B * repeats]`` in prompt order, each prompt run once."""
        first = self._first(batch)
        if repeats == 1:
            return sample_on_policy(self.module, batch.encoded, trie, temperature, generator, max_new_tokens, first=first)
        encoded = {k: v.repeat_interleave(repeats, dim=0) for k, v in batch.encoded.items()}
        first = None if first is None else first.repeated(repeats)
        return sample_on_policy(self.module, encoded, trie, temperature, generator, max_new_tokens, first=first)

    def stop_log_probs(self, prompt: str, trie: Trie) -> Tensor:
        """log pi(T | s) at every state after ``prompt``: float64 [num_nodes], NaN at terminal nodes
        (``distributions.stop_log_probs``)."""
        from .distributions import stop_log_probs

        return stop_log_probs(self.module, self.tokenizer, prompt, trie)

    def title_log_probs(self, prompt: str, trie: Trie, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """(log p_title, log q_title) after ``prompt``, exact, with gradients when enabled
        (:func:`flower_lite.distributions.title_log_probs`)."""
        from .distributions import title_log_probs

        return title_log_probs(self.forward_module, self.tokenizer, prompt, trie, temperature)

    @torch.no_grad()
    def item_distributions(self, prompt: str, trie: Trie, batch_size: int = 256) -> tuple[Tensor, float, Tensor]:
        """(P(title) of the unconstrained model [num_titles], its invalid mass, P(title) of trie-constrained
        sampling [num_titles]) after ``prompt``, exact (``distributions.exact_item_distribution`` and
        ``distributions.constrained_item_distribution``)."""
        from .distributions import constrained_item_distribution, exact_item_distribution

        was_training = self.module.training
        self.module.eval()
        q, invalid = exact_item_distribution(self.module, self.tokenizer, prompt, trie, batch_size)
        qc = constrained_item_distribution(self.module, self.tokenizer, prompt, trie, batch_size)
        self.module.train(was_training)
        return q, invalid, qc


@torch.no_grad()
def sample_on_policy(
    model, prompts: dict[str, Tensor], trie: Trie, temperature: float = 1.0, generator: torch.Generator | None = None,
    max_new_tokens: int = 64, first: PromptPass | None = None,
) -> Trajectories:
    """Sample one title per prompt from pi restricted to the trie (softmax(logits / temperature) over
    the allowed tokens), with a KV cache: one forward pass per generated token for the whole batch.
    Always ends with T on a complete title (never leaves the trie, never stops early).
    ``first``: the prompts' :func:`prompt_pass` when already computed (its values are detached here).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ids, mask, pos = prompts["input_ids"], prompts["attention_mask"], prompts["position_ids"]
    device, batch = ids.device, ids.shape[0]
    nodes = torch.zeros(batch, dtype=torch.long, device=trie.device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    if first is None:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        last, cache = out.logits[:, -1, :].float(), kv_cache(out)
    else:
        first = first.detached()
        last, cache = first.logits, {first.cache_arg: first.cache}
    for t in range(max_new_tokens):
        logits = last / temperature
        allowed = trie.allowed_mask(nodes, logits.shape[-1]).to(device)
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits.masked_fill(done[:, None], 0.0), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        stop = (nxt == trie.eos_id) & ~done
        tokens[:, t] = torch.where(done | stop, 0, nxt)
        lengths += (~done & ~stop).long()
        done |= stop
        nodes = torch.where(done.to(nodes.device), nodes, trie.child(nodes, nxt.to(nodes.device)))
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **cache)
        last, cache = out.logits[:, -1, :].float(), kv_cache(out)
    if not bool(done.all()):
        raise ValueError(f"a sampled title did not end within max_new_tokens={max_new_tokens}")
    return Trajectories(tokens[:, : int(lengths.max())], lengths)


def kv_cache(output) -> dict:
    """The KV cache of a forward pass as keyword arguments for the next one (``cache`` in recent
    transformers 5 releases, ``past_key_values`` before)."""
    cache, arg = _cache_of(output)
    return {arg: cache}


@dataclass
class OfflineSchedule:
    """The reference's mix for RQ1: with probability ``p`` a step trains on teacher-forced dataset titles
    ("offline"), else on on-policy samples; ``p`` starts at ``start`` and is multiplied by ``factor``
    (down to ``end``) each time the loss drops below ``threshold``.
    """

    start: float = 1.0
    end: float = 0.1
    factor: float = 0.9
    threshold: float = 1.0
    p: float | None = None

    def __post_init__(self) -> None:
        if self.p is None:
            self.p = self.start

    def use_offline(self, generator: torch.Generator) -> bool:
        return bool(torch.rand((), generator=generator) < self.p)

    def update(self, loss: float) -> None:
        if loss < self.threshold:
            self.p = max(self.end, self.p * self.factor)
