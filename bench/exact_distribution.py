"""Throughput of the exact item distribution of an LLM (``distributions.exact_item_distribution``) and its scaling.

Every title (then T) is teacher-forced after one fixed prompt, in batches of ``--batch-size`` titles
(docs/method.md section 6: the exact distribution replaces sampling for KL on small catalogues). Catalogues of
1k, 2k and 5k distinct titles, one tiny Qwen2 model and one tokenizer (trained on the titles and the prompt).
The synthetic generator runs out of words past about 2,000 items, so the titles are those of
``make_synthetic_catalog(n_items=2000, n_genres=8)`` and their edition variants (as in bench/decoding.py),
in one seeded random order; a catalogue of n titles is the first n of that order (nested catalogues with the
same title-length distribution). The sizes are run interleaved, ``--repeats`` times;
times are medians. Scaling: time per title of each size divided by that of the smallest (linear = 1.0);
the same per title token (title tokens plus T), since catalogues of different sizes have slightly different
title lengths.

Goal (issue: performance): titles/s, and linear scaling in the number of titles (read here as: time per title
of every size within 1.2x of the smallest size's).

Usage: python bench/exact_distribution.py [--sizes 1000 2000 5000] [--batch-size 256] [--repeats 3] [--threads 1] [--smoke]
``--smoke``: 100 and 200 titles, batches of 64, vocabulary 512, 1 repeat (seconds).
The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from flower_lite.data import make_synthetic_catalog
from flower_lite.distributions import exact_item_distribution
from flower_lite.models import make_tiny_model
from flower_lite.prompts import build_prompt, title_trie

PROMPT = build_prompt("Recommend a movie.")
SMOKE = {"sizes": [100, 200], "batch_size": 64, "vocab_size": 512, "hidden_size": 32, "repeats": 1}  # --smoke
VARIANTS = ["", " (Remastered)", " Deluxe Edition", ": Director's Cut", " Collection", " Returns", " Origins"]


def title_pool(seed: int = 0) -> list[str]:
    """About 14,000 distinct synthetic titles (2,000 base titles x edition variants) in a seeded random order."""
    base = make_synthetic_catalog(n_items=2000, n_users=50, n_genres=8).distinct_titles()
    titles = list(dict.fromkeys(b + v for v in VARIANTS for b in base))
    order = np.random.default_rng(seed).permutation(len(titles))
    return [titles[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--batch-size", type=int, default=256, help="titles per teacher-forced forward pass")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spin-waits on a busy machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pool = title_pool()
    if max(args.sizes) > len(pool):
        raise ValueError(f"at most {len(pool)} titles available")
    model, tok = make_tiny_model(pool[: max(args.sizes)] + [PROMPT], vocab_size=args.vocab_size, hidden_size=args.hidden_size)
    tries = {n: title_trie(tok, pool[:n], [1.0] * n) for n in args.sizes}
    info = {}
    for n, trie in tries.items():
        lengths = trie.structure.depth[trie.terminal_nodes].double()  # title tokens + T
        info[n] = {"titles": int(trie.terminal_nodes.numel()), "tokens": int(lengths.sum()), "max_tokens": int(lengths.max())}
    print(f"tiny model (vocab {len(tok)}, hidden {args.hidden_size}), prompt {len(tok(PROMPT)['input_ids'])} tokens, "
          f"batches of {args.batch_size} titles, {args.threads} thread(s), {args.repeats} repeats")

    with torch.no_grad():
        for trie in tries.values():  # warm-up
            exact_item_distribution(model, tok, PROMPT, trie, batch_size=args.batch_size)
        times = {n: [] for n in tries}
        mass = {}
        for _ in range(args.repeats):
            for n, trie in tries.items():
                start = time.perf_counter()
                p, invalid = exact_item_distribution(model, tok, PROMPT, trie, batch_size=args.batch_size)
                times[n].append(time.perf_counter() - start)
                mass[n] = float(p.sum())
    base = args.sizes[0]
    per_title = {n: statistics.median(t) / info[n]["titles"] for n, t in times.items()}
    per_token = {n: statistics.median(t) / info[n]["tokens"] for n, t in times.items()}
    results = []
    print(f"{'items':>6} {'titles':>7} {'tok/title':>9} {'seconds':>8} {'titles/s':>9} {'us/title':>9} {'vs ' + str(base):>8} {'per token':>9}")
    for n in args.sizes:
        row = {"items": n, **info[n], "seconds": round(statistics.median(times[n]), 4),
               "titles_per_s": round(1 / per_title[n], 1), "tokens_per_s": round(1 / per_token[n], 1),
               "time_per_title_ratio": round(per_title[n] / per_title[base], 3),
               "time_per_token_ratio": round(per_token[n] / per_token[base], 3), "mass_on_titles": mass[n]}
        results.append(row)
        print(f"{n:>6} {info[n]['titles']:>7} {info[n]['tokens'] / info[n]['titles']:>9.2f} {row['seconds']:>8.3f} "
              f"{row['titles_per_s']:>9.0f} {1e6 * per_title[n]:>9.1f} {row['time_per_title_ratio']:>7.3f}x {row['time_per_token_ratio']:>8.3f}x")
    print(json.dumps({"bench": "exact_distribution", "smoke": args.smoke, "batch_size": args.batch_size,
                      "threads": args.threads, "repeats": args.repeats, "vocab": len(tok), "results": results}))


if __name__ == "__main__":
    main()
