"""Prompts, left-padded prompt batches, title tokens and the termination token T: text only.

The state s_t of docs/method.md section 2 is "prompt + the first t title tokens"; the root s_0 is the
prompt alone. Batches of prompts are padded on the LEFT with an attention mask and position ids
that count only real tokens, so a prompt gets the same log-probs alone and inside a batch
(docs/method.md section 8: the reference right-padded with EOS and no mask). The forward passes that
read log pi(a | s) from such batches are in :mod:`flower_lite.rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import MAX_TITLE_TOKENS

RESPONSE_HEADER = "### Response:\n"


def build_prompt(instruction: str, history: Sequence[str] | None = None, category: str = "item") -> str:
    """The BIGRec/D3-style prompt; the answer (a title, then T) follows ``### Response:\\n``.

    With a history (RQ2)::

        ### Instruction:
        {instruction}

        ### Input:
        The user has enjoyed the following {category} before: "t1", "t2", "t3"

        ### Response:

    Titles are wrapped in double quotes and joined by ``", "``, so commas inside titles stay
    unambiguous. With ``history`` None or empty (RQ1's fixed prompt) the Input block is left out.
    ``category`` is used verbatim (pass the plural, e.g. ``"movies"``).
    """
    parts = [f"### Instruction:\n{instruction}\n\n"]
    if history:
        titles = ", ".join(f'"{t}"' for t in history)
        parts.append(f"### Input:\nThe user has enjoyed the following {category} before: {titles}\n\n")
    return "".join(parts) + RESPONSE_HEADER


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token lists into ``input_ids``, ``attention_mask``, ``position_ids``, each [B, L].

    position_ids = cumsum(attention_mask) - 1, clamped at 0: real tokens are numbered 0, 1, ...
    whatever the padding, so RoPE sees the same positions as for the prompt alone.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token (the root state's logits come from it)")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[b, width - len(r):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's (first) parameters."""
    return next(model.parameters()).device


def pad_id(tokenizer) -> int:
    """The padding token of prompt batches: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer, prompts: Sequence[str], add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
    """Tokenize each prompt on its own, then left-pad: ``input_ids``, ``attention_mask``,
    ``position_ids``, each [B, L] (see :func:`left_pad`). Independent of ``tokenizer.padding_side``.
    """
    rows = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    return left_pad(rows, pad_id(tokenizer))


def encode_titles(tokenizer, titles: Sequence[str], max_tokens: int = MAX_TITLE_TOKENS) -> list[list[int]]:
    """The one tokenization of every title (no special tokens), shared by SFT targets, trajectories,
    rewards and constrained decoding (docs/method.md section 2). T is appended by the trie, never merged.

    Raises ``ValueError`` naming the title for an empty title or one longer than ``max_tokens``
    tokens (the termination token needs one more decoding step).
    """
    out = []
    for i, title in enumerate(titles):
        if not title or not title.strip():
            raise ValueError(f"title of item {i} is empty")
        ids = tokenizer.encode(title, add_special_tokens=False)
        if len(ids) + 1 > max_tokens:
            raise ValueError(f"title of item {i} ({title[:40]!r}...) has {len(ids)} tokens; the limit is {max_tokens - 1} plus T")
        out.append(list(ids))
    return out


STOP_TOKENS = ("eos", "newline")
"""The termination token T: the tokenizer's EOS, or its newline token (the reference's T), appended as its own id."""


def stop_token_id(tokenizer, stop: str = "eos") -> int:
    """The id of the termination token T: ``eos`` (the tokenizer's EOS) or ``newline`` ("\\n", which must be
    one token). Appended to every title's one tokenization, it never merges with the title's last characters."""
    if stop == "eos":
        return tokenizer.eos_token_id
    if stop == "newline":
        ids = tokenizer.encode("\n", add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the newline is {len(ids)} tokens for this tokenizer ({ids}): use stop='eos'")
        return ids[0]
    raise ValueError(f"unknown termination token {stop!r}: expected one of {STOP_TOKENS}")


def title_trie(tokenizer, titles: Sequence[str], weights: Sequence[float], max_tokens: int = MAX_TITLE_TOKENS,
               stop: str = "eos"):
    """The trie of ``encode_titles(tokenizer, titles)`` with rewards ``weights`` and T = :func:`stop_token_id`
    (a title whose tokens contain T is refused, naming the item)."""
    from .trie import Trie

    return Trie.from_sequences(encode_titles(tokenizer, titles, max_tokens), weights, stop_token_id(tokenizer, stop))
