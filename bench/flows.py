"""Per-user flows: exact range sums (``range_sums.range_sums``) against the cumulative-sum difference they replace.

``Trie.batch_log_flows`` sums each user's rewards over a node's depth-first item range. ``C[hi] - C[lo]``
of a cumulative sum is one cumsum and two gathers, but a range whose sum is small against the row's total
cancels; the segment tree adds non-negative terms only. For ``--users`` rows of Zipf-like rewards
(``R_u(i) ∝ rank^-2`` with per-user noise over 8 orders of magnitude) over catalogues of each size, and
``--queries`` random item ranges per row (every 4th a single item, where flows are smallest), this prints the
median time of both side by side (interleaved repetitions) and the largest relative error of each against
``math.fsum`` on 200 ranges.

The ratio is range-sum time / cumsum time per catalogue size (``time_ratio``).

Usage: python bench/flows.py [--sizes 300 10000 100000 1000000] [--users 32] [--queries 60] [--repeats 5] [--smoke]
``--smoke``: 300 and 10k items, 4 users, 20 ranges, 2 repeats (seconds). The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from flower_lite.range_sums import range_sums

SMOKE = {"sizes": [300, 10_000], "users": 4, "queries": 20, "repeats": 2}  # --smoke


def cumsum_difference(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sums of ``values[b, lo:hi]`` as differences of a cumulative sum (the baseline; cancels)."""
    c = torch.nn.functional.pad(torch.cumsum(values, dim=1), (1, 0))
    return (c.gather(1, hi) - c.gather(1, lo)).clamp_min(0)


def workload(n: int, users: int, queries: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards [users, n], range starts, range ends [users, queries]) as the module docstring describes."""
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n) + 1.0
    values = rank[None, :] ** -2.0 * 10.0 ** rng.uniform(-8, 0, size=(users, n))
    lo = rng.integers(0, n, size=(users, queries))
    width = np.where(np.arange(queries) % 4 == 0, 1, rng.integers(0, 64, size=(users, queries)))
    hi = np.minimum(lo + width, n)
    return torch.as_tensor(values), torch.as_tensor(lo), torch.as_tensor(hi)


def max_relative_error(fn, values, lo, hi, checked: int = 200) -> float:
    """Largest relative error of ``fn`` against ``math.fsum`` on the first ``checked`` ranges."""
    got = fn(values, lo, hi).numpy()
    v, lo, hi = values.numpy(), lo.numpy(), hi.numpy()
    worst = 0.0
    for b, q in zip(*np.unravel_index(np.arange(min(checked, lo.size)), lo.shape)):
        exact = math.fsum(v[b, lo[b, q] : hi[b, q]])
        if exact > 0:
            worst = max(worst, abs(got[b, q] - exact) / exact)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        values, lo, hi = workload(n, args.users, args.queries)
        times = {"range_sums": [], "cumsum": []}
        for _ in range(args.repeats):
            for name, fn in (("range_sums", range_sums), ("cumsum", cumsum_difference)):
                start = time.perf_counter()
                fn(values, lo, hi)
                times[name].append(time.perf_counter() - start)
        row = {"items": n, "range_sums_ms": round(1e3 * statistics.median(times["range_sums"]), 3),
               "cumsum_ms": round(1e3 * statistics.median(times["cumsum"]), 3),
               "range_sums_max_rel_error": max_relative_error(range_sums, values, lo, hi),
               "cumsum_max_rel_error": max_relative_error(cumsum_difference, values, lo, hi)}
        row["time_ratio"] = round(statistics.median(times["range_sums"]) / statistics.median(times["cumsum"]), 2)
        rows.append(row)
        print(f"{n:>9,} items: range sums {row['range_sums_ms']:9.3f} ms, cumsum {row['cumsum_ms']:9.3f} ms "
              f"({row['time_ratio']:.2f}x); max relative error {row['range_sums_max_rel_error']:.1e} vs "
              f"{row['cumsum_max_rel_error']:.1e}", flush=True)
    print(json.dumps({"bench": "flows", "smoke": args.smoke, "users": args.users, "queries": args.queries, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
