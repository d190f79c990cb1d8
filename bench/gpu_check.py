"""One prepared GPU check: the Qwen2.5-0.5B architecture (random weights, bfloat16) on CUDA.

Measures, in one run (no download; the tokenizer is a BPE trained on the synthetic catalogue, see
bench/train_step.py):

1. SFT vs Flower training steps (``Trainer.train_step``: teacher-forced Flower and on-policy Flower), side by
   side with interleaved repetitions (medians), tokens/s and peak memory (``torch.cuda.max_memory_allocated``)
   for batch 8 and 32;
2. constrained beam search throughput (``decoding.recommend``, 10 beams, 10 titles returned), prompts/s;
3. the largest training batch whose peak allocated memory fits ``--budget-gb`` (16 GiB): doubling from 8, then
   a binary search, for each of the three step kinds (an out-of-memory error counts as "does not fit").

The model is full fine-tuned in bfloat16 with AdamW (the reference's setting), learning rate 0 so that every
repetition sees the same model (AdamW does the same work). Peak memory therefore includes the weights, their
gradients and AdamW's two states (all bfloat16), plus activations and the float32 [B, T + 1, V] logits.
A 16 GB card also needs room for the CUDA context and allocator fragmentation (compare ``reserved``).

Usage (GPU):   python bench/gpu_check.py [--quick] [--out gpu_check.json]
Smoke:         python bench/gpu_check.py --smoke   (seconds: the tiny model, 200 items, batch 4, 4 prompts, on
               the GPU when there is one, else on the CPU; checks that every section runs, not the figures)
A time guard skips the remaining sections once ``--budget-s`` (default 420 s) is spent; the whole run is
meant to stay under 8 minutes (``--quick``: about 2). The last line is a machine-readable JSON summary.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODES, base_config, batch_tokens, build_setup, compare, mode_configs, timed_step  # noqa: E402

GIB = 2**30
SMOKE = {"device": "cuda" if torch.cuda.is_available() else "cpu", "tiny": True, "quick": True, "items": 200,
         "batches": [4], "prompts": 4, "max_batch": 32, "budget_gb": 1.0}  # --smoke


def is_cuda(device) -> bool:
    """Whether ``device`` is a CUDA device."""
    return torch.device(device).type == "cuda"


def peak_step(trainer, config) -> dict:
    """One step under ``config``: seconds, peak allocated and reserved bytes (CUDA), memory held before it."""
    device = trainer.accelerator.device
    if not is_cuda(device):
        seconds, _ = timed_step(trainer, config)
        return {"seconds": seconds, "peak_allocated_gib": None, "peak_reserved_gib": None, "static_gib": None}
    torch.cuda.synchronize()
    static = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed_step(trainer, config)
    return {"seconds": seconds, "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3), "static_gib": round(static / GIB, 3)}


def release(trainer) -> None:
    """Drop the gradients and cached allocator blocks between measurements."""
    trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fits(trainer, config, budget_bytes: float) -> tuple[bool, float | None]:
    """Whether one step under ``config`` keeps the peak allocated memory within ``budget_bytes`` (OOM: no)."""
    release(trainer)
    try:
        torch.cuda.reset_peak_memory_stats()
        timed_step(trainer, config)
        peak = torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        release(trainer)
        return False, None
    release(trainer)
    return peak <= budget_bytes, peak


def largest_fitting(ok, start: int, cap: int, deadline: float = float("inf")) -> tuple[int | None, list]:
    """Largest batch b in [1, cap] with ``ok(b)`` (assumed monotone): doubling from ``start``, then bisection.

    Returns (the batch, or None when no probed batch fits; the probes [(batch, fits)]). Past ``deadline`` it
    stops early and returns the largest batch known to fit.
    """
    probes = []

    def probe(b):
        good = ok(b)
        probes.append((b, good))
        return good

    lo, hi = 0, None  # lo: largest known fit, hi: smallest known failure
    b = min(start, cap)
    while hi is None and time.perf_counter() < deadline:
        if probe(b):
            lo = b
            if b == cap:
                return lo, probes
            b = min(2 * b, cap)
        else:
            hi = b
    if hi is None:
        return lo or None, probes
    while hi - lo > 1 and time.perf_counter() < deadline:
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo or None, probes


def beam_throughput(model, tok, trie, prompts: list[str], beams: int, batch_size: int, repeats: int) -> dict:
    """Prompts/s of ``decoding.recommend`` (constrained beam search), median of ``repeats`` runs after a warm-up."""
    from flower_lite.decoding import recommend

    recommend(model, tok, prompts[:batch_size], trie, num_beams=beams, num_return=beams, batch_size=batch_size)  # warm-up
    times, ranked = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        ranked = recommend(model, tok, prompts, trie, num_beams=beams, num_return=beams, batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"prompts": len(prompts), "beams": beams, "batch_size": batch_size, "seconds": round(seconds, 4),
            "prompts_per_s": round(len(prompts) / seconds, 2),
            "mean_returned": round(sum(map(len, ranked)) / len(ranked), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of Qwen2.5-0.5B (CPU smoke test)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and prompts (about 2 minutes on a GPU)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 (qwen), float32 (tiny)")
    parser.add_argument("--items", type=int, default=1000, help="catalogue size")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--prompts", type=int, default=None, help="beam search prompts (default 64, --quick 16)")
    parser.add_argument("--budget-gb", type=float, default=16.0, help="memory budget of the batch search, GiB")
    parser.add_argument("--max-batch", type=int, default=2048)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip remaining sections after this many seconds")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, GPU if present else CPU: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    start = time.perf_counter()
    deadline = start + args.budget_s
    if not is_cuda(args.device):
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # the Trainer's accelerator must not pick a GPU
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a smoke test")
    from flower_lite.train import Trainer

    kind = "tiny" if args.tiny else "qwen"
    dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    repeats = 3 if args.quick else 10
    model, tok, trie, data = build_setup(kind, args.items, args.device, dtype)
    setup_s = time.perf_counter() - start
    trainer = Trainer(model, tok, trie, base_config(args.batches[0]), data, progress=False)
    summary = {
        "bench": "gpu_check", "model": kind, "dtype": dtype, "device": args.device, "quick": args.quick, "smoke": args.smoke,
        "device_name": torch.cuda.get_device_name() if is_cuda(args.device) else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": model.config.vocab_size, "titles": trie.num_items, "rows": len(data), "setup_s": round(setup_s, 1),
        "train": {}, "skipped": [],
    }
    print(f"{kind} ({summary['parameters'] / 1e6:.3g}M parameters, {dtype}) on {summary['device_name']}; setup {setup_s:.0f} s", flush=True)

    for batch in args.batches:
        if time.perf_counter() > deadline:
            summary["skipped"].append(f"train batch {batch}")
            continue
        configs = {name: replace(c, batch_size=batch) for name, c in mode_configs(base_config(batch)).items()}
        res = compare(trainer, configs, repeats, warmup=1)
        tokens = batch_tokens(trainer, data, batch)
        row = {**tokens}
        for name in MODES:
            mem = peak_step(trainer, configs[name])
            row[name] = {"ms": round(1e3 * res[name]["median_s"], 2), "ratio_to_sft": round(res[name]["median_s"] / res["sft"]["median_s"], 3),
                         "paired_ratio_to_sft": round(res[name]["paired_ratio"], 3),
                         "tokens_per_s": round(tokens["real_tokens"] / res[name]["median_s"], 1),
                         **{k: v for k, v in mem.items() if k != "seconds"}}
        summary["train"][str(batch)] = row
        print(f"batch {batch}: " + "; ".join(f"{n} {row[n]['ms']:.1f} ms ({row[n]['ratio_to_sft']:.2f}x SFT, "
                                             f"{row[n]['tokens_per_s']:.0f} tok/s, peak {row[n]['peak_allocated_gib']} GiB)" for n in MODES), flush=True)
        release(trainer)

    prompts = data.prompts[: args.prompts or (16 if args.quick else 64)]
    if time.perf_counter() < deadline:
        model.eval()
        summary["beam_search"] = beam_throughput(model, tok, trainer.trie, prompts, beams=10, batch_size=min(8, len(prompts)),
                                                repeats=1 if args.quick else 3)
        print(f"constrained beam search (10 beams): {summary['beam_search']['prompts_per_s']} prompts/s", flush=True)
    else:
        summary["skipped"].append("beam_search")

    # the search itself, checked on a known answer (so that the CPU smoke test exercises it too)
    assert largest_fitting(lambda b: b <= 37, 8, 1000)[0] == 37 and largest_fitting(lambda b: b <= 5, 8, 1000)[0] == 5
    if is_cuda(args.device):
        summary["largest_batch"] = {"budget_gib": args.budget_gb}
        for name in MODES:
            if time.perf_counter() > deadline:
                summary["skipped"].append(f"largest batch {name}")
                continue
            config = mode_configs(base_config(8))[name]
            peaks = {}

            def ok(b, config=config, peaks=peaks):
                good, peak = fits(trainer, replace(config, batch_size=b), args.budget_gb * GIB)
                peaks[b] = None if peak is None else round(peak / GIB, 3)
                return good

            best, probes = largest_fitting(ok, 8, min(args.max_batch, len(data)), deadline)
            summary["largest_batch"][name] = {"batch": best, "peak_gib": peaks.get(best), "probes": [[b, g, peaks[b]] for b, g in probes]}
            print(f"largest {name} batch within {args.budget_gb} GiB: {best} (peak {peaks.get(best)} GiB, {len(probes)} probes)", flush=True)
    else:
        summary["largest_batch"] = "not measured (needs CUDA memory statistics)"
    summary["total_s"] = round(time.perf_counter() - start, 1)
    line = json.dumps(summary)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
