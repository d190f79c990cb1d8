"""Trajectories of a causal LM on the title trie (METHOD.md section 5, "Trajectories").

* Teacher forcing along dataset items: one forward pass gives log pi(a_t | s_t) and
  log pi(T | s_t) at every prefix (``teacher_forced``).
* On-policy sampling masked to the trie, with temperature and a KV cache (``sample_on_policy``).
  Sampling runs without gradients; the sampled titles are then teacher-forced with gradients.
  The gradient is the same as back-propagating through the sampling loop (the reference's way,
  sampled tokens are discrete and carry no gradient), at the cost of one extra forward pass
  instead of keeping the whole sampling graph in memory.
* A mix of the two with the reference's schedule (``OfflineSchedule``).

Every title has one token path (``trie.structure.paths``), shared by SFT targets, trajectories,
rewards and decoding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .prompts import teacher_forced_log_probs
from .trie import Trie


@dataclass
class Trajectories:
    """Title tokens ``[batch, K]`` (0 past the end) and ``lengths [batch]`` (tokens before T)."""

    tokens: Tensor
    lengths: Tensor

    @property
    def mask(self) -> Tensor:
        """[batch, K] True on title tokens."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :] < self.lengths[:, None]


def item_trajectories(trie: Trie, items: Tensor) -> Trajectories:
    """The title token paths of catalogue ``items`` [batch] (T excluded), cut to the longest one."""
    s = trie.structure
    lengths = s.path_length[items] - 1
    width = int(lengths.max()) if items.numel() else 0
    tokens = s.paths[items, :width].clamp_min(0)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    return Trajectories(torch.where(mask, tokens, torch.zeros_like(tokens)), lengths)


def teacher_forced(model, prompts: dict[str, Tensor], traj: Trajectories, eos_id: int) -> tuple[Tensor, Tensor]:
    """(log pi(a_t | s_t) [batch, K], log pi(T | s_t) [batch, K + 1]) in one forward pass, with gradients.

    ``prompts`` is a left-padded batch (``prompts.encode_prompts`` / ``left_pad``) on the model's device.
    """
    device = prompts["input_ids"].device
    return teacher_forced_log_probs(
        model, prompts["input_ids"], prompts["attention_mask"], prompts["position_ids"],
        traj.tokens.to(device), traj.mask.to(device), extra_token_id=eos_id,
    )


@torch.no_grad()
def sample_on_policy(
    model, prompts: dict[str, Tensor], trie: Trie, temperature: float = 1.0, generator: torch.Generator | None = None,
    max_new_tokens: int = 64,
) -> Trajectories:
    """Sample one title per prompt from pi restricted to the trie (softmax(logits / temperature) over
    the allowed tokens), with a KV cache: one forward pass per generated token for the whole batch.
    Always ends with T on a complete title (never leaves the trie, never stops early).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ids, mask, pos = prompts["input_ids"], prompts["attention_mask"], prompts["position_ids"]
    device, batch = ids.device, ids.shape[0]
    nodes = torch.zeros(batch, dtype=torch.long, device=trie.device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :].float() / temperature
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
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **kv_cache(out))
    if not bool(done.all()):
        raise ValueError(f"a sampled title did not end within max_new_tokens={max_new_tokens}")
    return Trajectories(tokens[:, : int(lengths.max())], lengths)


def kv_cache(output) -> dict:
    """The KV cache of a forward pass as keyword arguments for the next one (``cache`` in recent
    transformers 5 releases, ``past_key_values`` before)."""
    if hasattr(output, "cache"):
        return {"cache": output.cache}
    return {"past_key_values": output.past_key_values}


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
