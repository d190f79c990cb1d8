"""Cost of trie-constrained decoding: constrained vs unconstrained beam search and sampling, side by side.

A 5,000-title catalogue (synthetic titles plus edition variants), the tiny Qwen2 model of
``flower_lite.models`` and 8 BIGRec-style prompts. Constrained runs use ``TrieLogitsProcessor``;
unconstrained runs are the same ``generate`` call without it, stopped after the same number of
decoding steps (a random model rarely writes EOS, so it would otherwise run to 64 tokens). Both
carry a no-op step counter; times are medians over ``--repeats`` pairs of runs, and the ratio is
constrained / unconstrained time per decoding step, for the whole ``generate`` call (prefill
included) and for the decode steps only; "of minima" uses the fastest run of each side, and the
in-run ratio divides by the constrained time minus the time spent inside the trie processor
(immune to the run-to-run noise of a shared machine). Goal: <= 1.15x.

The naive baseline: the same beam search constrained by ``prefix_allowed_tokens_fn`` over a Python dict
trie (prefix tuple -> allowed tokens, the reference implementation's way), i.e. transformers'
``PrefixConstrainedLogitsProcessor`` with a Python call per beam and step. Goal: the tensorised
processor >= 3x faster per decoding step.

Usage: python bench/decoding.py [--items 5000] [--beams 10] [--repeats 15] [--threads 1] [--smoke]
``--smoke``: 300 titles, 2 prompts, 3 beams, 2 samples, vocabulary 512, 2 repeats (seconds).
The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PrefixConstrainedLogitsProcessor

from flower_lite.data import make_synthetic_catalog
from flower_lite.decoding import NEUTRAL_GENERATION, InverseCdfSampler, TrieLogitsProcessor
from flower_lite.models import make_tiny_model
from flower_lite.prompts import build_prompt, encode_prompts, title_trie

VARIANTS = ["", " (Remastered)", " Deluxe Edition", ": Director's Cut", " Collection", " Returns", " Origins"]
SMOKE = {"items": 300, "prompts": 2, "beams": 3, "samples": 2, "vocab_size": 512, "hidden_size": 32, "repeats": 2}  # --smoke


class StepCounter(LogitsProcessor):
    """No-op processor that counts decoding steps, notes when the prefill ended and times another processor."""

    def __init__(self, inner: LogitsProcessor | None = None):
        self.steps, self.inner, self.seconds, self.first_call = 0, inner, 0.0, None

    def __call__(self, input_ids, scores):
        self.steps += 1
        start = time.perf_counter()
        out = scores if self.inner is None else self.inner(input_ids, scores)
        end = time.perf_counter()
        self.seconds += end - start
        if self.first_call is None:  # decode-only time starts after the first step's processing
            self.first_call = end
        return out


def catalogue_titles(n_items: int) -> list[str]:
    """``n_items`` distinct titles: 2,000 synthetic ones and their edition variants (shared prefixes)."""
    base = list(dict.fromkeys(make_synthetic_catalog(n_items=2000, n_users=50, n_genres=8).titles))
    titles = list(dict.fromkeys(b + v for v in VARIANTS for b in base))
    if len(titles) < n_items:
        raise ValueError(f"at most {len(titles)} titles available")
    return titles[:n_items]


def timed_generate(model, batch, processors, **kwargs) -> tuple[float, float, int, float]:
    """(seconds, seconds after the prefill, decoding steps, seconds inside ``processors[0]``) of one ``generate``."""
    counter = StepCounter(processors[0] if processors else None)
    start = time.perf_counter()
    model.generate(**batch, logits_processor=LogitsProcessorList([counter, *processors[1:]]), **kwargs)
    end = time.perf_counter()
    return end - start, end - counter.first_call, counter.steps, counter.seconds


def compare(model, batch, width, trie, pad, repeats: int, extra=lambda width: (), **kwargs) -> dict:
    """Constrained then unconstrained runs, same seed and same number of steps, ``repeats`` times.

    ``extra(width)`` gives processors used on both sides after the trie mask. Reports medians of the
    time per step (whole ``generate``, prefill included) and of the decode-only time per step
    (after the prefill), the ratio of the minima (least disturbed by other load on the machine), and
    ``in_run_ratio`` = constrained time / (constrained time - time inside the trie processor), measured
    within the same runs, so immune to run-to-run noise (it leaves out any indirect cost).
    """
    common = dict(eos_token_id=trie.eos_id, pad_token_id=pad, **NEUTRAL_GENERATION, **kwargs)
    sides = {True: lambda: [TrieLogitsProcessor(trie, width, pad), *extra(width)], False: lambda: list(extra(width))}
    timed_generate(model, batch, sides[True](), max_new_tokens=64, **common)  # warm-up
    timed_generate(model, batch, sides[False](), max_new_tokens=8, **common)
    runs = {True: [], False: []}
    for r in range(repeats):
        steps = None  # the unconstrained run stops after as many steps as the constrained one
        for constrained in (True, False):
            torch.manual_seed(r)
            total, decode, s, inside = timed_generate(model, batch, sides[constrained](),
                                                      max_new_tokens=steps or 64, **common)
            assert steps is None or s == steps, "both sides must run the same number of steps"
            steps = s
            runs[constrained].append((total / s, decode / (s - 1), inside / s, s))
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in runs.items()}
    low = {k: [min(col) for col in zip(*v)] for k, v in runs.items()}
    return {"steps": med[True][3], "constrained_ms_per_step": 1e3 * med[True][0], "unconstrained_ms_per_step": 1e3 * med[False][0],
            "processor_ms_per_step": 1e3 * med[True][2], "ratio": med[True][0] / med[False][0],
            "ratio_of_min": low[True][0] / low[False][0],
            "decode_constrained_ms_per_step": 1e3 * med[True][1], "decode_unconstrained_ms_per_step": 1e3 * med[False][1],
            "decode_ratio": med[True][1] / med[False][1], "decode_ratio_of_min": low[True][1] / low[False][1],
            "in_run_ratio": med[True][0] / (med[True][0] - med[True][2]),
            "decode_in_run_ratio": med[True][1] / (med[True][1] - med[True][2])}


def dict_trie(trie) -> dict[tuple[int, ...], list[int]]:
    """Prefix tuple (title tokens so far) -> sorted allowed next tokens, T included: the naive reference."""
    children: dict[tuple[int, ...], set[int]] = {}
    for path in trie.structure.paths.tolist():
        path = [t for t in path if t >= 0]  # title tokens then T
        for k in range(len(path)):
            children.setdefault(tuple(path[:k]), set()).add(path[k])
    return {k: sorted(v) for k, v in children.items()}


def compare_naive(model, batch, width, trie, pad, repeats: int, beams: int) -> dict:
    """Beam search with the tensorised trie processor against ``prefix_allowed_tokens_fn`` over a dict
    trie, same steps; medians of the time per step and ``speedup`` = naive / tensorised."""
    table = dict_trie(trie)
    eos = [trie.eos_id]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return table.get(tuple(sent[width:].tolist()), eos)  # a finished beam only continues with T

    common = dict(eos_token_id=trie.eos_id, pad_token_id=pad, do_sample=False, num_beams=beams,
                  num_return_sequences=beams, **NEUTRAL_GENERATION)
    sides = {"tensorised": lambda: [TrieLogitsProcessor(trie, width, pad)],
             "naive": lambda: [PrefixConstrainedLogitsProcessor(allowed, beams)]}
    runs = {k: [] for k in sides}
    for r in range(repeats):
        steps = None
        for name, make in sides.items():
            torch.manual_seed(r)
            total, _, s, inside = timed_generate(model, batch, make(), max_new_tokens=steps or 64, **common)
            assert steps is None or s == steps, "both sides must run the same number of steps"
            steps = s
            runs[name].append((total / s, inside / s))
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in runs.items()}
    return {"tensorised_ms_per_step": 1e3 * med["tensorised"][0], "naive_ms_per_step": 1e3 * med["naive"][0],
            "tensorised_processor_ms_per_step": 1e3 * med["tensorised"][1], "naive_processor_ms_per_step": 1e3 * med["naive"][1],
            "speedup": med["naive"][0] / med["tensorised"][0], "processor_speedup": med["naive"][1] / med["tensorised"][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=10, help="sampled sequences per prompt")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops: 1 avoids OpenMP spin-waits)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    torch.set_num_threads(args.threads)

    titles = catalogue_titles(args.items)
    prompts = [build_prompt("Given a list of movies the user recently enjoyed, write a new movie the user may like",
                            titles[i * 7 : i * 7 + 5], "movies") for i in range(args.prompts)]
    model, tok = make_tiny_model(titles + prompts, vocab_size=args.vocab_size, hidden_size=args.hidden_size)
    start = time.perf_counter()
    trie = title_trie(tok, titles, [1.0] * len(titles))
    build_s = time.perf_counter() - start
    pad = tok.pad_token_id
    batch = {k: v for k, v in encode_prompts(tok, prompts).items() if k != "position_ids"}
    width = batch["input_ids"].shape[1]
    print(f"{len(titles)} titles, {trie.num_nodes} trie nodes (built in {build_s:.2f} s), vocab {len(tok)}, "
          f"{args.prompts} prompts of {width} tokens, {args.threads} thread(s)")

    results = {}
    with torch.no_grad():
        results["beam_search"] = compare(model, batch, width, trie, pad, args.repeats, do_sample=False,
                                         num_beams=args.beams, num_return_sequences=args.beams)
        results["sampling"] = compare(model, batch, width, trie, pad, args.repeats, do_sample=True, top_k=0,
                                      top_p=1.0, num_return_sequences=args.samples)
        # flower_lite's sample_titles: greedy generate + InverseCdfSampler (same sampler on both sides)
        rows = args.prompts * args.samples
        expanded = {k: v.repeat_interleave(args.samples, 0) for k, v in batch.items()}
        uniforms = torch.rand(rows, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        results["sample_titles"] = compare(model, expanded, width, trie, pad, args.repeats,
                                           lambda w: (InverseCdfSampler(uniforms, w),), do_sample=False, num_beams=1)
        results["beam_search_vs_naive"] = compare_naive(model, batch, width, trie, pad, args.repeats, args.beams)
    for name, r in results.items():
        if "speedup" in r:
            continue
        print(f"{name:14s} {r['steps']:4.1f} steps | per step: constrained {r['constrained_ms_per_step']:6.2f} ms, "
              f"unconstrained {r['unconstrained_ms_per_step']:6.2f} ms, ratio {r['ratio']:.3f}x (of minima "
              f"{r['ratio_of_min']:.3f}x) | decode only: {r['decode_constrained_ms_per_step']:6.2f} vs "
              f"{r['decode_unconstrained_ms_per_step']:6.2f} ms, ratio {r['decode_ratio']:.3f}x (of minima "
              f"{r['decode_ratio_of_min']:.3f}x) | trie processor {r['processor_ms_per_step']:.2f} ms/step, "
              f"in-run ratio {r['in_run_ratio']:.3f}x (decode only {r['decode_in_run_ratio']:.3f}x)")
    naive = results["beam_search_vs_naive"]
    print(f"beam search vs prefix_allowed_tokens_fn over a dict trie: {naive['tensorised_ms_per_step']:.2f} vs "
          f"{naive['naive_ms_per_step']:.2f} ms/step, tensorised {naive['speedup']:.2f}x faster (the processors alone: "
          f"{naive['tensorised_processor_ms_per_step']:.2f} vs {naive['naive_processor_ms_per_step']:.2f} ms/step, "
          f"{naive['processor_speedup']:.1f}x)")
    print(json.dumps({"bench": "decoding", "smoke": args.smoke, "items": len(titles), "nodes": trie.num_nodes, "vocab": len(tok),
                      "beams": args.beams, "prompts": args.prompts, "threads": args.threads,
                      **{f"{k}_{m}": round(v, 4) for k, r in results.items() for m, v in r.items()}}))


if __name__ == "__main__":
    main()
