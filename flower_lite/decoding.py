"""Trie-constrained decoding (docs/method.md sections 2, 6 and 8); exact item distributions are in :mod:`flower_lite.distributions`.

* :class:`TrieLogitsProcessor` masks every token that would leave the title trie, inside
  ``model.generate`` (beam search and sampling). The trie lives in tensors; no loop over the
  vocabulary or the batch (docs/method.md section 8).
* :func:`recommend`: constrained beam search -> ranked, distinct, valid item ids per prompt.
* :func:`sample_titles`: constrained sampling, one title per draw, reproducible by seed and
  independent of the batch size.

Titles are indexed like ``trie.terminal_nodes`` (one index per distinct title; duplicate titles,
i.e. several item ids with one string, share an index). ``Trie.title_items`` and
``Trie.title_first_item`` map title indices to item ids.

Notes on transformers 5 generation (read from its source):

* Core beam search still exists (``GenerationMixin._beam_search``); only group / constrained
  beam search, DoLa and contrastive search moved to hub "custom generate" repositories.
* In beam search the processors receive **log-probabilities** (``log_softmax`` is applied before
  them) and their output is added to the beam scores without renormalising. So our mask leaves
  the scores of allowed tokens at the full-vocabulary log pi(a | s): beams are ranked by the
  unconstrained model's log-probability of the title (T included) divided by
  ``length ** length_penalty``. ``temperature`` is ignored by transformers unless sampling; here
  it is applied by :class:`TemperedLogSoftmax` (``log_softmax(scores / temperature)``).
* In sampling / greedy the processors receive raw logits, then sampling warpers (temperature,
  top-k which *defaults to 50*, top-p) run after custom processors.
* A model's own ``generation_config`` (e.g. ``repetition_penalty`` or ``do_sample=True`` in
  instruct checkpoints) is merged into every call, even when a ``GenerationConfig`` is passed;
  :data:`NEUTRAL_GENERATION` overrides the settings that would change the distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .prompts import MAX_TITLE_TOKENS, encode_prompts, left_pad, model_device, pad_id
from .threads import model_threads
from .trie import ROOT, Trie

NEUTRAL_GENERATION = dict(
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_length=0,
    min_new_tokens=None,
    renormalize_logits=False,
    bad_words_ids=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    sequence_bias=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    exponential_decay_length_penalty=None,
)
"""``generate`` keyword arguments that switch off logit-changing defaults a checkpoint may carry."""


# --------------------------------------------------------------------------------------------
# Decoding states
# --------------------------------------------------------------------------------------------


def is_finished(trie: Trie, nodes: Tensor) -> Tensor:
    """bool [R]: the state is a terminal node (the title and T have been written)."""
    s = trie.structure
    return (nodes >= 0) & (s.token[nodes.clamp_min(0)] == trie.eos_id)


def advance(trie: Trie, nodes: Tensor, tokens: Tensor) -> Tensor:
    """One decoding step: states [R], tokens [R] -> states [R].

    ``child(s, a)`` on the trie, except that a finished state (after T) stays where it is whatever
    comes next (padding), and -1 (off the trie) stays -1.
    """
    return torch.where(is_finished(trie, nodes), nodes, trie.child(nodes, tokens))


def decode_states(trie: Trie, generated: Tensor) -> Tensor:
    """States after generated tokens: ``[R, T]`` -> ``[R]`` nodes (-1 off the trie). O(T) batched steps."""
    nodes = torch.full((generated.shape[0],), ROOT, dtype=torch.long, device=generated.device)
    for t in range(generated.shape[1]):
        nodes = advance(trie, nodes, generated[:, t])
    return nodes


class TrieLogitsProcessor(LogitsProcessor):
    """Mask every token outside the title trie, for ``model.generate`` (beam search and sampling).

    Args:
        trie: the title trie (T = ``trie.eos_id``); moved lazily to the device of ``input_ids``.
        prompt_length: width L of the (left-padded) prompt batch; tokens after it are generated.
        pad_token_id: padding token used after T (default: T).

    ``__call__(input_ids [R, L + t], scores [R, V]) -> [R, V]``: allowed tokens keep their score,
    the others get -inf. A live state allows its trie children (T where the prefix is a complete
    title); a finished state (after T) and a state off the trie (only reachable through -inf beam
    candidates) allow only T and pad, so no row is ever all -inf (sampling would give NaN).

    States are tracked incrementally: the processor keeps the generated tokens and states of its
    previous call. At step t every row's first t - 1 generated tokens equal some row of the previous
    call (the same row in sampling; its parent beam in beam search, which reorders and repeats rows).
    That row is found by an equality check (sampling) or by a random linear hash of the tokens, a sort
    and a ``searchsorted`` (beam search), the match is verified token by token, and the state advances
    by one trie lookup: O(R t) elementwise work and O(R log R) for the sort, no loop over rows. The
    state is a function of the token sequence, so this is exact; when a row has no verified match
    (a new ``generate`` call, a reused processor, a hash collision) all rows are re-walked, O(t) lookups.
    """

    def __init__(self, trie: Trie, prompt_length: int, pad_token_id: int | None = None):
        self.trie = trie
        self.prompt_length = int(prompt_length)
        self.pad_token_id = trie.eos_id if pad_token_id is None else int(pad_token_id)
        self._generated: Tensor | None = None  # [R, t] generated tokens at the previous call
        self._nodes: Tensor | None = None  # [R] their states
        self._keys: Tensor | None = None  # [R] their hashes
        self._weights = torch.zeros(0, dtype=torch.long)  # hash weight of each generated position
        self._setup(trie.device)

    def _setup(self, device: torch.device) -> None:
        """Move the trie to ``device`` and build ``_stop`` [num_nodes + 1], indexed by state + 1 (so -1 works):
        the state is finished (after T) or off the trie, and allows only T and pad."""
        if self.trie.device != device:
            self.trie = self.trie.to(device)
        s = self.trie.structure
        self._stop = torch.cat([torch.ones(1, dtype=torch.bool, device=device), s.token == self.trie.eos_id])

    def allowed_pairs(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, tokens): every allowed (row, next token) of states ``[R]``, about R x mean branching pairs: the
        trie children of a live state (:meth:`Trie.child_edges`; a stop state has none), then T and pad of a stop state."""
        rows, edges = self.trie.child_edges(nodes)
        stopped = torch.nonzero(self._stop[nodes + 1]).flatten()
        ends = [torch.full_like(stopped, self.trie.eos_id), torch.full_like(stopped, self.pad_token_id)]
        return torch.cat([rows, stopped, stopped]), torch.cat([self.trie.structure.token[edges], *ends])

    def _hash_weights(self, width: int, device: torch.device) -> Tensor:
        """[width] random hash weights in [1, 2**31), fixed seed.

        Hashes stay below 2**62 for token ids < 2**18 and widths < 2**13; correctness never depends on
        the hash (a collision only fails the verification and triggers a re-walk).
        """
        if self._weights.numel() < width or self._weights.device != device:
            gen = torch.Generator().manual_seed(0)
            self._weights = torch.randint(1, 2**31, (max(64, 2 * width),), generator=gen).to(device)
        return self._weights[:width]

    def _hash(self, tokens: Tensor) -> Tensor:
        """[R, t] -> [R] sum over positions of token times weight."""
        return (tokens * self._hash_weights(tokens.shape[1], tokens.device)).sum(1)

    def _parents(self, prefix: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rows of the previous call equal to each ``prefix`` row, and the prefix hashes (None if a row has no match)."""
        prev = self._generated
        if prev is None or prev.shape[1] != prefix.shape[1] or prev.shape[0] == 0:
            return None
        if prev.shape[0] == prefix.shape[0] and torch.equal(prev, prefix):  # sampling: rows never move
            return torch.arange(prefix.shape[0], device=prefix.device), self._keys
        sorted_keys, order = self._keys.sort()
        keys = self._hash(prefix)
        parents = order[torch.searchsorted(sorted_keys, keys).clamp_max(order.numel() - 1)]
        return (parents, keys) if torch.equal(prev[parents], prefix) else None

    def states(self, input_ids: Tensor) -> Tensor:
        """Trie state of every row: ``[R, L + t]`` -> ``[R]`` nodes (terminal once T is written, -1 off the trie)."""
        if self.trie.device != input_ids.device:
            self._setup(input_ids.device)
        generated = input_ids[:, self.prompt_length:]
        match = self._parents(generated[:, :-1]) if generated.shape[1] > 0 else None
        if match is not None:
            parents, keys = match
            prev, last = self._nodes[parents], generated[:, -1]
            nodes = torch.where(self._stop[prev + 1], prev, self.trie.child(prev, last))  # = advance(...)
            keys = keys + self._hash_weights(generated.shape[1], last.device)[-1] * last
        else:
            nodes, keys = decode_states(self.trie, generated), self._hash(generated)
        self._generated, self._nodes, self._keys = generated, nodes, keys
        return nodes

    def allowed(self, input_ids: Tensor, vocab_size: int) -> Tensor:
        """bool ``[R, vocab_size]``: the tokens each row may write next."""
        rows, tokens = self.allowed_pairs(self.states(input_ids))
        allowed = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.bool, device=input_ids.device)
        allowed[rows, tokens] = True
        return allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, tokens = self.allowed_pairs(self.states(input_ids))
        out = torch.full_like(scores, -math.inf)  # writing the few allowed scores beats masking the [R, V] rest
        out[rows, tokens] = scores[rows, tokens]
        return out


class TemperedLogSoftmax(LogitsProcessor):
    """``log_softmax(scores / temperature)``; in beam search (scores = log-probs) these are tempered log-probs.

    Put it *before* :class:`TrieLogitsProcessor`, so the beams keep the full-vocabulary normalisation.
    """

    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return torch.log_softmax(scores / self.temperature, dim=-1)


class InverseCdfSampler(LogitsProcessor):
    """Sampling from pre-drawn uniforms, for *greedy* ``generate``: the drawn token becomes the only finite score.

    ``uniforms[r, t]`` drives row r at step t: the token is the inverse CDF of
    ``softmax(scores / temperature)`` at that uniform. transformers draws every row from one RNG
    stream, so a row's sample would depend on its batch mates; with one uniform per
    (prompt, draw, step) the result does not depend on the batch size. Put it last.
    """

    def __init__(self, uniforms: Tensor, prompt_length: int, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.uniforms = uniforms  # [R, max_new_tokens] float64 in [0, 1)
        self.prompt_length = int(prompt_length)
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        cdf = torch.softmax(scores.double() / self.temperature, dim=-1).cumsum(-1)  # [R, V]
        u = self.uniforms[:, step].to(cdf.device) * cdf[:, -1]
        # right=True: the first token whose CDF exceeds u, so never a zero-probability token
        pick = torch.searchsorted(cdf, u[:, None], right=True).clamp_max(scores.shape[-1] - 1)
        return torch.full_like(scores, -math.inf).scatter_(1, pick, 0.0)


# --------------------------------------------------------------------------------------------
# Decoding states -> titles
# --------------------------------------------------------------------------------------------


def title_index(trie: Trie, nodes: Tensor) -> Tensor:
    """Title index of final decoding states ``[R]`` (-1 where the state is not a complete title + T)."""
    terminals = trie.terminal_nodes.to(nodes.device)
    idx = torch.searchsorted(terminals, nodes.clamp_min(0)).clamp_max(terminals.numel() - 1)
    return torch.where(is_finished(trie, nodes) & (terminals[idx] == nodes), idx, torch.full_like(idx, -1))


# --------------------------------------------------------------------------------------------
# Beam search and sampling
# --------------------------------------------------------------------------------------------


@model_threads
@torch.no_grad()
def recommend(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    trie: Trie,
    num_beams: int = 10,
    num_return: int = 10,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_TITLE_TOKENS,
    batch_size: int = 8,
    progress: str | None = None,
) -> list[list[int]]:
    """Constrained beam search over the trie: ranked item ids for each prompt (docs/method.md section 6).

    Beams score ``sum_t log pi(a_t | s_t) / length ** length_penalty`` with the full-vocabulary
    log-probs (T included in the sum and the length): 1.0 is BIGRec's setting, 0.0 D3's.
    ``temperature`` divides the logits before the log-softmax. ``do_sample=False`` is passed
    explicitly (some checkpoints default to sampling, which makes the beams identical).

    Each returned beam is mapped to its title; a title shared by several items (duplicates) puts
    all of them, in item-id order, at its rank. The list is de-duplicated and cut to
    ``num_return``, so it holds distinct, valid catalogue items only. It can be shorter than
    ``num_return`` when fewer than ``num_return`` items are reachable within ``num_beams``
    finished beams (a tiny catalogue, or ``max_new_tokens`` shorter than some titles).
    Prompts are left-padded with an attention mask; results do not depend on ``batch_size``.
    ``progress``: a label for a progress bar over the batches (None: no bar).
    """
    if num_return > num_beams:
        raise ValueError(f"num_return ({num_return}) cannot exceed num_beams ({num_beams})")
    items_of = trie.title_items()
    device = model_device(model)
    trie = trie.to(device)
    ranked: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None, leave=False):
        batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, prompts[start : start + batch_size]).items()}
        width = batch["input_ids"].shape[1]
        processors = [TemperedLogSoftmax(temperature)] if temperature != 1.0 else []
        processors.append(TrieLogitsProcessor(trie, width, pad_id(tokenizer)))
        out = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_processor=LogitsProcessorList(processors),
            do_sample=False,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            length_penalty=length_penalty,
            max_new_tokens=max_new_tokens,
            eos_token_id=trie.eos_id,
            pad_token_id=pad_id(tokenizer),
            **NEUTRAL_GENERATION,
        )
        titles = title_index(trie, decode_states(trie, out[:, width:])).view(-1, num_beams).tolist()
        for row in titles:
            items = dict.fromkeys(i for t in row if t >= 0 for i in items_of[t])  # ordered set
            ranked.append(list(items)[:num_return])
    return ranked


@model_threads
@torch.no_grad()
def sample_titles(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    trie: Trie,
    num_samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    max_new_tokens: int = MAX_TITLE_TOKENS,
) -> Tensor:
    """Constrained sampling: ``num_samples`` titles per prompt -> title indices ``[num_prompts, num_samples]``.

    At every state the next token is drawn from ``softmax(logits / temperature)`` renormalised over
    the trie children (the distribution ``distributions.constrained_item_distribution`` computes exactly).
    Draw d of prompt p uses its own uniforms from ``torch.Generator().manual_seed(seed)``, so the
    result depends on ``seed`` only, not on ``batch_size`` (number of sequences per ``generate``
    call) and not on the global RNG. Raises ``RuntimeError`` if a draw does not finish a title
    within ``max_new_tokens`` tokens.
    """
    if len(prompts) == 0 or num_samples == 0:
        return torch.zeros(len(prompts), num_samples, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(len(prompts) * num_samples, max_new_tokens, generator=generator, dtype=torch.float64)
    encoded = encode_prompts(tokenizer, prompts)
    prompt_rows = [ids[m.bool()].tolist() for ids, m in zip(encoded["input_ids"], encoded["attention_mask"])]
    pad = pad_id(tokenizer)
    device = model_device(model)
    trie = trie.to(device)
    out = []
    for start in range(0, len(uniforms), batch_size):
        rows = range(start, min(start + batch_size, len(uniforms)))
        batch = {k: v.to(device) for k, v in left_pad([prompt_rows[r // num_samples] for r in rows], pad).items()}
        width = batch["input_ids"].shape[1]
        processors = LogitsProcessorList([
            TrieLogitsProcessor(trie, width, pad),
            InverseCdfSampler(uniforms[start : start + len(rows)], width, temperature),
        ])
        seqs = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_processor=processors,
            do_sample=False,  # greedy on the one-hot scores of InverseCdfSampler
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=trie.eos_id,
            pad_token_id=pad,
            **NEUTRAL_GENERATION,
        )
        out.append(title_index(trie, decode_states(trie, seqs[:, width:])).cpu())
    titles = torch.cat(out).view(len(prompts), num_samples)
    if (titles < 0).any():
        raise RuntimeError(f"a sample did not finish a title within max_new_tokens={max_new_tokens} tokens")
    return titles
