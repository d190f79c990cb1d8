"""Trie build time and memory for 10k / 100k / 1M synthetic titles (~15 tokens), and batched lookup throughput.

Usage: python bench/trie_build.py [--sizes 10000 100000 1000000] [--lookups 2000000] [--smoke]
Goals (issue: performance): 1M titles built in < 60 s with < 200 bytes per node; >= 1e7 token lookups/s on CPU.
The ratio: sorted lookups (``trie.SORTED_LOOKUP_MIN``) against the same batch unsorted, in the same run.
``--smoke``: 1k and 10k titles, 50k lookups (seconds; still above the sorting threshold, so both paths run).
The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from flower_lite import trie as trie_module
from flower_lite.trie import Trie

SMOKE = {"sizes": [1000, 10_000], "lookups": 50_000}  # --smoke


def synthetic_titles(n: int, vocab: int = 50_000, mean_len: int = 15, seed: int = 0) -> list[list[int]]:
    """Token paths with realistic sharing: Zipf-distributed tokens, so popular first words are shared prefixes."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_len, size=n), 1, 40)
    flat = (rng.zipf(1.3, size=int(lengths.sum())) % (vocab - 1)) + 1
    cuts = np.cumsum(lengths)[:-1]
    return [s.tolist() for s in np.split(flat, cuts)]


def lookup_throughput(trie: Trie, num: int, seed: int = 0, sort: bool = True) -> float:
    """Token lookups per second of ``trie.child`` on ``num`` (state, token) pairs: the edges into
    uniformly drawn non-root nodes, so states of every depth (mostly deep ones, as in a walk along
    ~15-token titles), each lookup checked against the node it must find."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(1, trie.num_nodes, (num,), generator=gen)
    nodes, tokens = trie.structure.parent[target], trie.structure.token[target]
    before = trie_module.SORTED_LOOKUP_MIN
    trie_module.SORTED_LOOKUP_MIN = before if sort else num + 1
    try:
        trie.child(nodes, tokens)  # warm-up
        start = time.perf_counter()
        out = trie.child(nodes, tokens)
        elapsed = time.perf_counter() - start
    finally:
        trie_module.SORTED_LOOKUP_MIN = before
    assert torch.equal(out, target), "every lookup must find its node"
    return num / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--lookups", type=int, default=2_000_000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    results = []
    print(f"{'titles':>10} {'nodes':>12} {'build s':>9} {'bytes/node':>11} {'lookups/s':>12} {'unsorted/s':>11} {'ratio':>6}")
    for n in args.sizes:
        seqs = synthetic_titles(n)
        weights = np.random.default_rng(1).pareto(1.2, size=n) + 1e-3
        start = time.perf_counter()
        trie = Trie.from_sequences(seqs, weights, eos_id=0)
        build = time.perf_counter() - start
        rate = lookup_throughput(trie, args.lookups)
        plain = lookup_throughput(trie, args.lookups, sort=False)
        row = {"titles": n, "nodes": trie.num_nodes, "build_s": round(build, 3), "bytes_per_node": round(trie.nbytes() / trie.num_nodes, 1),
               "lookups_per_s": round(rate), "unsorted_lookups_per_s": round(plain), "sorted_speedup": round(rate / plain, 2)}
        results.append(row)
        print(f"{n:>10} {trie.num_nodes:>12} {build:>9.2f} {row['bytes_per_node']:>11.1f} {rate:>12.3g} {plain:>11.3g} {rate / plain:>5.2f}x")
    print(json.dumps({"bench": "trie_build", "torch_threads": torch.get_num_threads(), "lookups": args.lookups, "smoke": args.smoke,
                      "results": results}))


if __name__ == "__main__":
    main()
