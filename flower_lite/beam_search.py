"""Trie-constrained beam search that runs every prompt through the model once (docs/method.md section 6).

:func:`recommend` returns what :func:`flower_lite.decoding.recommend` returns (ranked, distinct
item ids per prompt) for the same arguments, without ``model.generate``;
:func:`recommend_settings` decodes the same prompts under several :class:`BeamSetting` (length
penalty, temperature) from one prompt pass (BIGRec ``BeamSetting(1.0)``, D3 ``BeamSetting(0.0)``, the SFT
model at T = 1.5 ``BeamSetting(1.0, 1.5)``).

How:

* ``generate(num_beams=B)`` repeats each prompt B times before its first forward pass. Here a batch of
  left-padded prompts (grouped by length) is run once with a KV cache (:class:`PromptPass`); every
  (prompt, setting) row then searches from a fork of that cache. For Llama / Qwen2-style models the beams
  of a row share one copy of the prompt's keys and values (:class:`PromptTree`: tree attention over
  "prompt + the row's beam tokens"); for other models each beam gets its own cache row
  (:class:`BeamCache`, the prompt rows repeated by ``reorder_cache``).
* Each step runs one new token per live beam. Its log-probs are the full-vocabulary ``log_softmax`` of
  the logits, then ``log_softmax(. / tau)`` when tau != 1 (as :class:`~flower_lite.decoding.TemperedLogSoftmax`
  does inside ``generate``), read only at the allowed tokens of the beam's trie state (contiguous child
  ranges of the trie's tensors), never through a ``[beams, vocabulary]`` mask.
* A row leaves the model batch as soon as transformers would stop it (its cache rows are dropped); the
  batch ends when every row is done.

The rule mirrored: transformers 5 ``GenerationMixin._beam_search`` (and ``_get_top_k_continuations``,
``_get_running_beams_for_next_iteration``, ``_update_finished_beams``, ``_check_early_stop_heuristic``)
with ``do_sample=False``, ``num_beams=B``, ``num_return_sequences=B``, ``length_penalty=lp``, one EOS
token T and ``early_stopping=False``. Per row, every score in float32, the same arithmetic:

* Start: B running beams at the root scored ``[0, -1e9, ..., -1e9]``; B finished slots at -1e9, none filled.
* Step t = 0, 1, ... (t tokens written before it):

  1. Candidates: every running beam extended by each allowed token a (its trie children; after T only
     T and the padding token, as :class:`~flower_lite.decoding.TrieLogitsProcessor` allows), scored
     ``running score + log pi(a | beam)``; the 2B best, best first. A candidate *hits* when a = T; at the
     last step t = max_new_tokens - 1 every candidate hits (``MaxLengthCriteria``).
  2. Running beams: the B best of the 2B after adding -1e9 to the candidates that hit. When fewer than B
     candidates do not hit, finished ones (about -1e9) and impossible ones (-inf) fill the beams; these
     *placeholders* go on like any beam (after T: T or padding).
  3. Finished slots: a candidate that hits *and* is among the first B of the 2B scores
     ``sum_logprobs / (t + 1) ** lp``, t + 1 = the number of generated tokens, T included
     (``cur_len + 1 - decoder_prompt_len``); every other candidate gets the same plus -1e9; the B best of
     the B old slots and the 2B candidates are kept, best first (a slot is *filled* by the former kind).
  4. Early stop: the row goes on while ``best running score / (t + 1) ** lp`` is greater than the worst
     slot score, where a slot not filled counts -1e9; it also stops after the last step.

* Result: the B slots, best first, each mapped to its title (none for an unfilled slot or a prefix cut
  at max_new_tokens); as in ``decoding.recommend``, a title stands for all its items in id order, the list is
  de-duplicated and cut to ``num_return``.

transformers checks step 4 for the whole batch and adds another -1e9 to each new hypothesis of a row that
may stop, so that row's slots can no longer change: stopping rows one by one gives the same slots. (The
batch-wide "every candidate hits" happens only at the last step: each beam has one T.)

Placeholders. Up to half of transformers' beams are placeholders once titles start to finish. Their
values (about -1e9, rounded to multiples of 64) decide only the slots no real hypothesis fills and the
stop decision while such a slot exists. So each row is searched first without them (every placeholder is
dropped at once, no forward pass for it) and the rows whose result could depend on them
(:func:`unsure_without_placeholders`) are searched again exactly, placeholders included, from the same
prompt pass. On Movies & TV with 10 beams no row needed the second search.

Ties between equal candidate scores (placeholders only, in practice) are taken in (beam, token) order
here; ``torch.topk`` leaves their order unspecified, so the titles after all real hypotheses can come in
another order than ``generate``'s (the item lists agreed in every test). Numerics: the prompt pass runs
P rows instead of P * B and later steps other shapes than ``generate``, so scores may differ in the last
bits (about 1e-6) and two candidates that close may swap. Prompts are left-padded with an attention
mask and position ids counting real tokens only, so the result does not depend on ``batch_size``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .decoding import title_index
from .prompts import MAX_TITLE_TOKENS, left_pad, model_device, pad_id
from .threads import model_threads
from .tree_attention import DecoderParts, decoder_parts, run_layers
from .trie import Trie

__all__ = ["BeamSetting", "recommend", "recommend_settings"]

PLACEHOLDER = -1.0e9
"""transformers' score of a beam that must not be chosen (an unfinished slot, a finished running candidate)."""
REAL = PLACEHOLDER / 2
"""Scores above this are real (sums of log-probs); a beam or candidate carrying a -1e9 is below it."""


@dataclass(frozen=True)
class BeamSetting:
    """One decoding of the prompts: ``length_penalty`` lp (1.0 BIGRec, 0.0 D3) and ``temperature`` tau."""

    length_penalty: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# --------------------------------------------------------------------------------------------
# Allowed next tokens of trie states
# --------------------------------------------------------------------------------------------


class AllowedTokens:
    """The allowed next tokens of decoding states, as padded tensors (the rule of ``TrieLogitsProcessor``).

    A live state's tokens are its trie children ``child_lo..child_hi`` (sorted by token), reached by
    the child node ids; a finished state (after T) allows T and the padding token and stays where it is;
    -1 (off the trie) allows the same and stays -1. Tables are indexed by state + 1, so -1 works.
    """

    def __init__(self, trie: Trie, pad_token_id: int):
        s = trie.structure
        device = s.token.device
        stop_tokens = torch.tensor(sorted({trie.eos_id, int(pad_token_id)}), dtype=torch.long, device=device)
        self.num_nodes = trie.num_nodes
        self.stop = torch.cat([torch.ones(1, dtype=torch.bool, device=device), s.token == trie.eos_id])  # [n + 1]
        self.token = torch.cat([s.token, stop_tokens])  # [n + stop tokens]: node tokens, then T and pad
        lo = torch.cat([s.child_lo[:1], s.child_lo])
        count = torch.cat([s.child_lo[:1], s.child_hi - s.child_lo])
        self.lo = torch.where(self.stop, self.num_nodes, lo)  # [n + 1] first entry of ``token``
        self.count = torch.where(self.stop, stop_tokens.numel(), count)  # [n + 1] number of allowed tokens

    def __call__(self, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """States ``[N]`` -> (tokens ``[N, C]``, next states ``[N, C]``, valid ``[N, C]``), C the largest count.

        Invalid entries (past a state's count) hold token 0 and state -1.
        """
        lo, count = self.lo[nodes + 1], self.count[nodes + 1]
        width = int(count.max()) if nodes.numel() else 0
        k = torch.arange(width, device=nodes.device)
        valid = k < count[:, None]
        entry = torch.where(valid, lo[:, None] + k, torch.zeros_like(valid, dtype=torch.long))
        tokens = torch.where(valid, self.token[entry], 0)
        stop = self.stop[nodes + 1][:, None]
        nxt = torch.where(stop, nodes[:, None].expand_as(entry), entry)  # a live state's children are node ids lo + k
        return tokens, torch.where(valid, nxt, -1), valid


# --------------------------------------------------------------------------------------------
# One step of the beam bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass
class Beams:
    """The search state of R rows (one prompt under one setting each), B beams per row."""

    row: Tensor  # [R] output index of the row
    setting: Tensor  # [R] index of the row's setting
    run_scores: Tensor  # [R, B] float32 summed log-probs of the running beams (placeholders <= -5e8, or -inf)
    run_nodes: Tensor  # [R, B] trie state of each running beam
    source: Tensor  # [R, B] row of the current log-probs for each running beam (-1: none, score -inf)
    fin_scores: Tensor  # [R, B] float32 scores of the finished slots, best first (-1e9: empty)
    fin_nodes: Tensor  # [R, B] state of each finished slot (-1: empty)
    fin_filled: Tensor  # [R, B] bool: the slot holds a hypothesis (transformers' is_sent_finished)
    fin_real: Tensor  # [R, B] bool: ... one that is not a placeholder

    @classmethod
    def start(cls, row: Tensor, setting: Tensor, num_beams: int) -> "Beams":
        """Every beam at the root, reading row r of the prompt log-probs; scores [0, -1e9, ...]; empty slots."""
        rows, device = setting.numel(), setting.device
        run = torch.full((rows, num_beams), PLACEHOLDER, dtype=torch.float32, device=device)
        run[:, 0] = 0.0
        nodes = torch.zeros((rows, num_beams), dtype=torch.long, device=device)
        empty = torch.zeros_like(nodes, dtype=torch.bool)
        source = torch.arange(rows, device=device)[:, None].expand(-1, num_beams)
        return cls(row, setting, run, nodes, source, torch.full_like(run, PLACEHOLDER), torch.full_like(nodes, -1),
                   empty, empty)

    def select(self, keep: Tensor) -> "Beams":
        """The rows ``keep`` (indices)."""
        return Beams(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def divide_by_setting(x: Tensor, setting: Tensor, divisors: Sequence[float]) -> Tensor:
    """``x [R, K] / divisors[setting[r]]``, each setting's rows divided by a Python number as transformers does
    (on CUDA ``tensor / number`` multiplies by the reciprocal, which a tensor divisor would not)."""
    if len(set(divisors)) == 1:
        return x / divisors[0]
    out = torch.empty_like(x)
    for s, d in enumerate(divisors):
        rows = setting == s
        out[rows] = x[rows] / d
    return out


def top(x: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries of each row of ``x [R, K]``, best first, ties in index order."""
    return torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]


def candidates(allowed: AllowedTokens, beams: Beams, log_probs: Tensor, eos_id: int, last: bool
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The 2B best continuations of every row: (scores, parent beams, tokens, states, hits), each ``[R, 2B]``.

    ``log_probs [A, V]``: log pi(. | context) of the contexts ``beams.source`` points at. Scores are
    ``running score + log pi(token | beam)`` over allowed tokens only (-inf for a beam without a source);
    missing candidates (fewer than 2B allowed) are -inf with state -1. ``hits``: token T, or every
    candidate at the ``last`` step.
    """
    rows, width = beams.run_nodes.shape
    tokens, nxt, valid = allowed(beams.run_nodes.reshape(-1))  # [R B, C]
    choices = tokens.shape[1]
    source = beams.source.reshape(-1, 1)
    if log_probs.shape[0] == 0:  # no beam has a source
        log_probs = log_probs.new_zeros(1, log_probs.shape[1])
    lp = log_probs[source.clamp_min(0), tokens]  # [R B, C]: only the allowed tokens are read
    scores = torch.where(valid & (source >= 0), beams.run_scores.reshape(-1, 1) + lp, -math.inf)
    scores, tokens, nxt = scores.view(rows, -1), tokens.view(rows, -1), nxt.view(rows, -1)  # [R, B C]
    if scores.shape[1] < 2 * width:  # fewer allowed pairs than 2B: impossible placeholders
        fill = 2 * width - scores.shape[1]
        scores = torch.nn.functional.pad(scores, (0, fill), value=-math.inf)
        tokens, nxt = (torch.nn.functional.pad(x, (0, fill), value=v) for x, v in ((tokens, 0), (nxt, -1)))
    pick = top(scores, 2 * width)
    tokens = tokens.gather(1, pick)
    hits = torch.ones_like(tokens, dtype=torch.bool) if last else tokens == eos_id
    return scores.gather(1, pick), (pick // choices).clamp_max(width - 1), tokens, nxt.gather(1, pick), hits


def step(allowed: AllowedTokens, beams: Beams, log_probs: Tensor, eos_id: int, t: int, last: bool,
         penalties: Sequence[float]) -> tuple[Beams, Tensor, Tensor]:
    """One beam-search step of every row (module docstring, steps 1-4).

    Returns (the new state, the token of each running beam ``[R, B]``, done ``[R]``); a running beam's
    ``source`` is its parent's. ``penalties``: the length penalty of each setting; t: tokens written before.
    """
    width = beams.run_nodes.shape[1]
    scores, parent, tokens, nxt, hits = candidates(allowed, beams, log_probs, eos_id, last)
    # running beams: transformers' _get_running_beams_for_next_iteration
    running = scores + hits.to(torch.float32) * PLACEHOLDER
    keep = torch.topk(running, k=width)[1]
    # finished slots: _update_finished_beams (the early-stop and full-row terms add 0 to a row still searching)
    just_done = hits & (torch.arange(2 * width, device=hits.device) < width)
    new = divide_by_setting(scores, beams.setting, [(t + 1) ** lp for lp in penalties])
    new = new + (~just_done) * PLACEHOLDER
    merged = torch.cat([beams.fin_scores, new], dim=1)
    best = torch.topk(merged, k=width)[1]
    slots = lambda old, fresh: torch.cat([old, fresh], dim=1).gather(1, best)  # noqa: E731
    out = Beams(beams.row, beams.setting, running.gather(1, keep), nxt.gather(1, keep),
                beams.source.gather(1, parent.gather(1, keep)), merged.gather(1, best),
                slots(beams.fin_nodes, torch.where(just_done, nxt, -1)), slots(beams.fin_filled, just_done),
                slots(beams.fin_real, just_done & (scores > REAL)))
    # early stop: _check_early_stop_heuristic after cur_len += 1 (t + 1 generated tokens)
    best_running = divide_by_setting(out.run_scores[:, :1], out.setting, [(t + 1) ** lp for lp in penalties])
    searching = (best_running > worst_slot(out)).any(dim=1)
    done = torch.ones_like(searching) if last else ~searching
    return out, tokens.gather(1, keep), done


def worst_slot(beams: Beams) -> Tensor:
    """``[R, B]`` transformers' worst finished score: the lowest slot score where the slot is filled, else -1e9."""
    return torch.where(beams.fin_filled, beams.fin_scores.min(dim=1, keepdim=True)[0], PLACEHOLDER)


def retire_placeholders(beams: Beams, t: int, max_new_tokens: int, penalties: Sequence[float], every: bool) -> Beams:
    """Set placeholder beams (score <= -5e8) to -inf: ``every`` one (the first pass), or only those that can
    no longer matter (the exact pass); a -inf beam loses its source (it is not run through the model).

    A placeholder's continuations score at most its own score s, so any hypothesis or early-stop value it
    can give at a later length l in [t + 2, max_new_tokens] is at most ``s / max_l l ** lp``; when that is
    below the row's worst finished score (by a relative margin of 1e-5), it can enter no slot and cannot
    keep the row searching, and real beams always rank above it, so dropping it changes nothing.
    """
    hopeless = (beams.run_scores <= REAL)
    if not every:
        divisors = [max((t + 2) ** lp, max_new_tokens ** lp) for lp in penalties]
        bound = divide_by_setting(beams.run_scores, beams.setting, divisors)  # [R, B]
        worst = worst_slot(beams).min(dim=1, keepdim=True)[0]  # [R, 1]
        hopeless &= bound < worst - 1e-5 * bound.abs()
    scores = torch.where(hopeless, -math.inf, beams.run_scores)
    return replace(beams, run_scores=scores, source=torch.where(scores == -math.inf, -1, beams.source))


def unsure_without_placeholders(beams: Beams, done: Tensor, t: int, max_new_tokens: int,
                                penalties: Sequence[float]) -> Tensor:
    """bool ``[R]``: rows of the first pass (placeholders dropped) whose outcome could depend on placeholders.

    In transformers a running placeholder scores at most -5e8 and its hypotheses at most
    ``J = -5e8 / max(1, max_new_tokens ** lp)``, whatever the log-probs along it; real values are above.
    Real candidates rank first among the 2B and in the running beams, so the real running beams and real
    hypotheses are those of transformers as long as (a) every real slot scores above J (it beats any
    placeholder hypothesis) and each stop decision is the same: (b) with a real running beam of score r
    and a slot that is not real, transformers goes on if ``r / l ** lp > J`` (l = t + 1), else the row is
    unsure; (c) without a real running beam it stops if every slot is real and ``-5e8 / l ** lp`` is not
    above the worst slot, else the row is unsure. (d) A row that ends with a slot that is not real is
    unsure (its last titles would come from placeholders).
    """
    device = beams.run_scores.device
    length = torch.tensor([float(t + 1) ** lp for lp in penalties], device=device)[beams.setting]  # [R] l ** lp
    bound = torch.tensor([REAL / max(1.0, max_new_tokens ** lp) for lp in penalties], device=device)[beams.setting]
    all_real = beams.fin_real.all(dim=1)
    slots_ok = ((beams.fin_scores > bound[:, None]) | ~beams.fin_real).all(dim=1)  # (a)
    best = beams.run_scores[:, 0]
    goes_on = best / length > bound  # (b)
    stops = all_real & (REAL / length <= beams.fin_scores.min(dim=1).values)  # (c)
    sure = torch.where(best > REAL, all_real | goes_on, stops)
    return ~slots_ok | ~sure | (done & ~all_real)  # (d)


# --------------------------------------------------------------------------------------------
# The model side
# --------------------------------------------------------------------------------------------


def log_probs_of(logits: Tensor, setting: Tensor, temperatures: Sequence[float]) -> Tensor:
    """log pi(. | s) ``[N, V]`` float32 from logits ``[N, V]``: ``log_softmax``, then ``log_softmax(. / tau)``
    for the rows of a setting with tau != 1 (``generate`` with :class:`~flower_lite.decoding.TemperedLogSoftmax`)."""
    out = torch.log_softmax(logits.float(), dim=-1)
    for s, tau in enumerate(temperatures):
        if tau != 1.0:
            rows = setting == s
            out[rows] = torch.log_softmax(out[rows] / float(tau), dim=-1)
    return out


@dataclass
class PromptPass:
    """One forward pass over a batch of left-padded prompts ``[P, L]``, kept for every search that starts there."""

    logits: Tensor  # [P, V] float32 at the last position (the root state)
    cache: object  # the transformers Cache of the prompt tokens, never modified (searches work on forks)
    keyword: str  # the forward's keyword for a cache ("cache", or "past_key_values" before transformers 5)
    attention_mask: Tensor  # [P, L]
    last_position: Tensor  # [P] position id of each prompt's last token
    input_ids: Tensor  # [P, L]

    @classmethod
    def run(cls, model: torch.nn.Module, batch: dict[str, Tensor]) -> "PromptPass":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=True, logits_to_keep=1)
        keyword = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
        cache = getattr(out, keyword, None)
        if cache is None or not hasattr(cache, "reorder_cache"):
            raise RuntimeError("the model returned no transformers Cache (use_cache=True); beam search needs one")
        return cls(out.logits[:, -1].float(), cache, keyword, batch["attention_mask"], batch["position_ids"][:, -1],
                   batch["input_ids"])

    def fork(self, prompt_of_row: Tensor) -> object:
        """A cache holding prompt ``prompt_of_row[r]`` in row r. Layers are shallow copies (same type and
        settings) whose tensors are new (``reorder_cache`` selects, later updates concatenate), so the
        prompt's own cache is left as it is."""
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.reorder_cache(prompt_of_row)
        return cache


class BeamCache:
    """Contexts as rows of one KV cache, one row per context (as ``generate`` does, after one prompt pass).

    Contexts start as the R rows (prompt ``prompt_of_row[r]``); :meth:`extend` makes A new contexts
    (parent context + one token) whose cache rows are copies of the parents' rows (``reorder_cache``) plus
    the new token. Works for any causal LM that returns a transformers ``Cache``.
    """

    def __init__(self, model: torch.nn.Module, prompts: PromptPass, prompt_of_row: Tensor):
        self.model, self.keyword = model, prompts.keyword
        self.cache = prompts.fork(prompt_of_row)
        self.row = torch.arange(prompt_of_row.numel(), device=prompt_of_row.device)  # [contexts] cache row of each
        self.mask = prompts.attention_mask[prompt_of_row]  # [cache rows, length]
        self.position = prompts.last_position[prompt_of_row]  # [cache rows] position of the last token

    def select_rows(self, live: Tensor) -> None:
        """Rows ``live`` stay; contexts of other rows are never extended again (nothing to do here)."""

    def extend(self, parent: Tensor, tokens: Tensor) -> Tensor:
        """New contexts ``parent [A]`` + ``tokens [A]`` -> next-token logits ``[A, V]``; they become contexts 0..A-1."""
        rows = self.row[parent]
        self.cache.reorder_cache(rows)
        self.mask = torch.cat([self.mask[rows], self.mask.new_ones(rows.numel(), 1)], dim=1)
        self.position = self.position[rows] + 1
        self.row = torch.arange(rows.numel(), device=rows.device)
        out = self.model(input_ids=tokens.view(-1, 1), attention_mask=self.mask, position_ids=self.position[:, None],
                         use_cache=True, **{self.keyword: self.cache})
        return out.logits[:, -1]


TREE_MODEL_TYPES = ("llama", "qwen2", "qwen3")
"""Models whose forward is exactly embed -> decoder layers -> norm -> LM head (no embedding scale, no logit
soft-cap), so :class:`PromptTree` can call the pieces itself."""


def prompt_tree_parts(model: torch.nn.Module) -> DecoderParts | None:
    """The decoder pieces :class:`PromptTree` calls, or None when the model is not a plain Llama / Qwen2-style LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in TREE_MODEL_TYPES:
        return None
    try:
        return decoder_parts(model)
    except ValueError:
        return None


class PromptTree:
    """Contexts as nodes of one token tree per row, attending to a single copy of the row's prompt.

    Row r's sequence is its prompt (left-padded, L positions) followed by blocks of new tokens, one block
    per step; a context is a position of it and may attend to the prompt's real tokens, its ancestors and
    itself (tree attention, :func:`flower_lite.tree_attention.run_layers`), at RoPE position
    "last prompt position + depth". Nothing is copied per beam: the beams of a row share the prompt's
    keys and values, and each step appends one block per row. A block holds the row's new contexts and is
    padded to the longest block; padding positions attend to the prompt only (finite values that nothing
    attends to). Each context keeps its visible columns (``allowed``, bool ``[contexts, columns]``).
    """

    def __init__(self, parts: DecoderParts, prompts: PromptPass, prompt_of_row: Tensor):
        self.parts = parts
        self.cache = prompts.fork(prompt_of_row)  # one prompt copy per row (a row = one prompt under one setting)
        self.prompt_mask = prompts.attention_mask[prompt_of_row].bool()  # [R, L]
        self.last_position = prompts.last_position[prompt_of_row]  # [R]
        self.pad = int(prompts.input_ids[0, 0])  # any token: padding positions are never attended to
        self.row = torch.arange(prompt_of_row.numel(), device=prompt_of_row.device)  # [contexts] row of each context
        self.depth = torch.zeros_like(self.row)  # [contexts] tokens after the prompt
        self.allowed = self.prompt_mask.clone()  # [contexts, columns]

    def select_rows(self, live: Tensor) -> None:
        """Keep rows ``live`` (indices, ascending) of the cache; contexts of other rows are never extended again."""
        if live.numel() == self.prompt_mask.shape[0]:
            return
        new_index = torch.full_like(self.last_position, -1)
        new_index[live] = torch.arange(live.numel(), device=live.device)
        self.cache.reorder_cache(live)
        self.prompt_mask, self.last_position = self.prompt_mask[live], self.last_position[live]
        self.row = new_index[self.row]

    def extend(self, parent: Tensor, tokens: Tensor) -> Tensor:
        """New contexts ``parent [A]`` + ``tokens [A]`` (grouped by row, rows ascending) -> next-token logits
        ``[A, V]``; they become contexts 0..A-1."""
        rows, device = self.row[parent], parent.device
        count = torch.bincount(rows, minlength=self.prompt_mask.shape[0])  # [R] new contexts per row
        width, columns = int(count.max()), self.allowed.shape[1]
        slot = torch.arange(rows.numel(), device=device) - (count.cumsum(0) - count)[rows]  # place in the row's block
        ids = torch.full((count.numel(), width), self.pad, dtype=torch.long, device=device)
        ids[rows, slot] = tokens
        depth = self.depth[parent] + 1
        positions = (self.last_position[:, None] + 1).repeat(1, width)
        positions[rows, slot] = self.last_position[rows] + depth
        allowed = torch.zeros(count.numel(), width, columns + width, dtype=torch.bool, device=device)
        allowed[:, :, : self.prompt_mask.shape[1]] = self.prompt_mask[:, None]  # padding positions: the prompt
        allowed[rows, slot, :columns] = self.allowed[parent]
        allowed[rows, slot, columns + slot] = True
        h = run_layers(self.parts, self.parts.layers, self.parts.embed(ids), positions, allowed, self.cache)
        self.row, self.depth, self.allowed = rows, depth, allowed[rows, slot]
        return self.parts.lm_head(self.parts.norm(h[rows, slot]))


def beam_contexts(model: torch.nn.Module, prompts: PromptPass, prompt_of_row: Tensor,
                  shared_prompt: bool) -> PromptTree | BeamCache:
    """The contexts of R rows starting at their prompts: one prompt copy per row (:class:`PromptTree`) when
    ``shared_prompt`` and the model allows it, else one cache row per beam (:class:`BeamCache`)."""
    parts = prompt_tree_parts(model) if shared_prompt else None
    return PromptTree(parts, prompts, prompt_of_row) if parts else BeamCache(model, prompts, prompt_of_row)


@dataclass
class SearchSpec:
    """What one search needs besides the model: the allowed tokens, T, the settings, B and the step limit."""

    allowed: AllowedTokens
    eos_id: int
    settings: Sequence[BeamSetting]
    num_beams: int
    max_new_tokens: int
    shared_prompt: bool = True


def search(model: torch.nn.Module, prompts: PromptPass, prompt_of_row: Tensor, setting_of_row: Tensor, spec: SearchSpec,
           exact: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Beam search of R rows (prompt ``prompt_of_row[r]`` under setting ``setting_of_row[r]``) from the prompt
    pass -> (final slot states ``[R, B]``, their scores ``[R, B]``, unsure ``[R]``).

    ``exact``: placeholder beams are run through the model like transformers runs them (only those that
    can no longer matter are dropped). Otherwise every placeholder is dropped at once, and the rows whose
    outcome could depend on them are returned as unsure (:func:`unsure_without_placeholders`), their
    slots left empty. Each step runs the A beams with a finite score on the model, one token each.
    """
    device, rows, width = prompt_of_row.device, prompt_of_row.numel(), spec.num_beams
    temperatures = [s.temperature for s in spec.settings]
    penalties = [s.length_penalty for s in spec.settings]
    contexts = beam_contexts(model, prompts, prompt_of_row, spec.shared_prompt)
    log_probs = log_probs_of(prompts.logits[prompt_of_row], setting_of_row, temperatures)  # [R, V]: beams at the root
    beams = Beams.start(torch.arange(rows, device=device), setting_of_row, width)
    out = torch.full((rows, width), -1, dtype=torch.long, device=device)
    out_scores = torch.full((rows, width), PLACEHOLDER, device=device)
    unsure = torch.zeros(rows, dtype=torch.bool, device=device)
    for t in range(spec.max_new_tokens):
        last = t + 1 == spec.max_new_tokens
        beams, tokens, done = step(spec.allowed, beams, log_probs, spec.eos_id, t, last, penalties)
        if not exact:
            doubt = unsure_without_placeholders(beams, done, t, spec.max_new_tokens, penalties)
            unsure[beams.row[doubt]] = True
            done = done | doubt
        keep = done & ~unsure[beams.row]
        out[beams.row[keep]], out_scores[beams.row[keep]] = beams.fin_nodes[keep], beams.fin_scores[keep]
        live = torch.nonzero(~done).flatten()
        if live.numel() == 0:
            break
        beams = retire_placeholders(beams.select(live), t, spec.max_new_tokens, penalties, every=not exact)
        contexts.select_rows(live)
        active = beams.source >= 0  # [R', B]
        parent = beams.source[active]  # [A] context each active beam extends, grouped by row
        beams.source = relabel(active)
        if parent.numel() == 0:  # only hopeless placeholders left: every candidate is -inf, the rows stop
            log_probs = log_probs[:0]
            continue
        logits = contexts.extend(parent, tokens[live][active])
        log_probs = log_probs_of(logits, beams.setting[:, None].expand_as(active)[active], temperatures)  # [A, V]
    return out, out_scores, unsure


def relabel(active: Tensor) -> Tensor:
    """``[R, B]`` -> the index of each active beam among the active ones in row-major order, -1 elsewhere."""
    return torch.full(active.shape, -1, dtype=torch.long, device=active.device).masked_scatter_(
        active, torch.arange(int(active.sum()), device=active.device))


def decode_batch(model: torch.nn.Module, batch: dict[str, Tensor], spec: SearchSpec) -> tuple[Tensor, Tensor]:
    """Beam search of P prompts under the S settings of ``spec`` -> the final slots' states and scores,
    ``[S * P, B]`` each (row = setting * P + prompt; transformers' ``sequences`` and ``sequences_scores``).

    One prompt pass; a first search without placeholder beams, then an exact search of the rows it is
    unsure about, from the same prompt pass.
    """
    prompts = PromptPass.run(model, batch)
    num_prompts, device = batch["input_ids"].shape[0], batch["input_ids"].device
    setting = torch.arange(len(spec.settings), device=device).repeat_interleave(num_prompts)  # [R]
    prompt = torch.arange(num_prompts, device=device).repeat(len(spec.settings))  # [R]
    nodes, scores, unsure = search(model, prompts, prompt, setting, spec, exact=False)
    if unsure.any():
        redo = torch.nonzero(unsure).flatten()
        nodes[redo], scores[redo], _ = search(model, prompts, prompt[redo], setting[redo], spec, exact=True)
    return nodes, scores


# --------------------------------------------------------------------------------------------
# Ranked items
# --------------------------------------------------------------------------------------------


def ranked_items(trie: Trie, items_of: list[list[int]], nodes: Tensor, num_return: int) -> list[list[int]]:
    """Final slot states ``[N, B]`` -> per row the items of the slots' titles, in slot order, distinct, at most
    ``num_return`` (as ``decoding.recommend``: a duplicate title gives all its items in id order at its rank)."""
    ranked = []
    for row in title_index(trie, nodes).tolist():
        items = dict.fromkeys(i for t in row if t >= 0 for i in items_of[t])  # ordered set
        ranked.append(list(items)[:num_return])
    return ranked


@model_threads
@torch.no_grad()
def recommend_settings(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    trie: Trie,
    settings: Sequence[BeamSetting | tuple[float, float]],
    num_beams: int = 10,
    num_return: int = 10,
    max_new_tokens: int = MAX_TITLE_TOKENS,
    batch_size: int = 8,
    progress: str | None = None,
) -> list[list[list[int]]]:
    """Beam search of the same prompts under several settings, one prompt pass per batch: ``out[s][p]`` is
    ``recommend(..., length_penalty=settings[s].length_penalty, temperature=settings[s].temperature)[p]``.

    ``settings``: :class:`BeamSetting` or ``(length_penalty, temperature)`` pairs. Each batch of
    ``batch_size`` prompts is run through the model once; its ``len(settings) * batch_size * num_beams``
    beams then decode together, one token per step. Prompts are batched in order of token length (less
    padding); the result does not depend on the batching. ``progress``: a label for a bar over the batches.
    """
    if num_return > num_beams:
        raise ValueError(f"num_return ({num_return}) cannot exceed num_beams ({num_beams})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    settings = [s if isinstance(s, BeamSetting) else BeamSetting(*s) for s in settings]
    items_of = trie.title_items()
    device = model_device(model)
    trie = trie.to(device)
    spec = SearchSpec(AllowedTokens(trie, pad_id(tokenizer)), trie.eos_id, settings, num_beams, max_new_tokens)
    ranked: list[list[list[int]]] = [[[] for _ in prompts] for _ in settings]
    if not settings:
        return ranked
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(rows[i]))  # batches of similar lengths: little padding
    for start in tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None, leave=False):
        chunk = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in left_pad([rows[i] for i in chunk], pad_id(tokenizer)).items()}
        nodes, _ = decode_batch(model, batch, spec)
        for s, block in enumerate(nodes.view(len(settings), -1, num_beams)):
            for i, items in zip(chunk, ranked_items(trie, items_of, block, num_return)):
                ranked[s][i] = items
    return ranked


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
    """Constrained beam search over the trie: ranked item ids per prompt, as
    :func:`flower_lite.decoding.recommend` with the same arguments (module docstring), one prompt pass per batch.

    Beams score ``sum_t log pi(a_t | s_t) / length ** length_penalty`` (full-vocabulary log-probs of
    ``logits / temperature``, T included in the sum and the length). Returns per prompt the distinct items
    of the finished beams' titles, best first, at most ``num_return``.
    """
    setting = BeamSetting(length_penalty, temperature)
    return recommend_settings(model, tokenizer, prompts, trie, [setting], num_beams, num_return, max_new_tokens,
                              batch_size, progress)[0]
