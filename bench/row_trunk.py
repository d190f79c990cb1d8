"""Next-item recommendation with a real LM on a CPU (RQ2): the per-row frozen trunk and the prefill-once beam search.

Measured side by side in one run, on SmolLM2-135M-Instruct and real next-item rows (MovieLens-100k from the
``recbole`` wheel, or ``--data Movies_and_TV`` from the shared data folder), T = newline, LoRA r = 16 on the top
2 layers:

* the stored lower-layer states of ``--rows`` train rows (``row_trunk.row_states``): tokens per second, beside
  this machine's matrix-multiply limit for the same layers (every linear layer below the split run alone on a
  batch of 4,096 tokens: no attention, norm or activation; what no implementation of the lower layers can beat);
* a training step of 16 rows (``Trainer.train_step``: SFT, and flow distillation, the costliest objective: the
  full-vocabulary log-softmax at every state and every child) on the per-row trunk against the same step
  through the whole model (``rollout.LMPolicy`` with the same LoRA adapters, lower layers frozen): the ratio;
  beside it the step's own matrix-multiply limit (the top layers over 16 rows of the mean length and the LM head
  over their titles, forward and input gradient, alone);
* RQ3's preference rows (each of ``--rows // 4`` train prompts with its target and 3 uniform rejected titles,
  S-DPO's k): the states with the prompt run once for its 4 titles (tree attention) against the 4 rows run
  apart (the same rows, one title each per call): seconds and the ratio;
* a step of RQ3's RL baseline (``rq3.rloo_align``: 8 train prompts, 4 trie-constrained samples each, the reference
  the start's weights) on the per-row trunk (each prompt run once for its samples, the sampled rows' states stored
  per step) against the whole model beside a frozen copy: seconds and the ratio;
* constrained beam search (10 beams, 10 returned, batches of 8) over the whole catalogue trie:
  ``beam_search.recommend`` (one prompt pass, only the trie's children scored, finished rows leave the batch)
  against ``decoding.recommend`` (``generate``) on the same test rows: seconds per row, the ratio, and
  whether the rankings are equal.

Goals (the RQ2 issue): states >= 1,000 tokens/s on 2 cores; a step of 16 rows <= 0.5 s; beam search <= 0.5 s per
row and >= 5x ``decoding.recommend``.

Usage: python bench/row_trunk.py [--data movielens] [--rows 256] [--steps 5] [--decode-rows 16]   (alone on the
machine: a second CPU job voids the timings). ``--smoke``: the tiny offline Qwen2 on the synthetic default data,
32 rows, 2 steps, 4 decoded rows: seconds, no SmolLM2 needed (its figures mean nothing).
The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from flower_lite import beam_search, decoding
from flower_lite.config import Objective, RQ2Run
from flower_lite.experiments.rq2.lm import run_config, run_setup
from flower_lite.experiments.rq2.setup import reward_fn
from flower_lite.experiments.rq3 import AlignConfig, rloo_align
from flower_lite.models import find_smollm2_gguf
from flower_lite.pairs import uniform_negatives
from flower_lite.rollout import LMPolicy
from flower_lite.row_trunk import row_states, trie_rows
from flower_lite.train import Trainer
from flower_lite.tree_attention import decoder_parts

SMOKE = {"rows": 32, "steps": 2, "decode_rows": 4}


def step_seconds(policy, setup, objective: Objective, steps: int) -> float:
    """Median seconds of ``steps`` training steps of 16 rows (after one warm-up step)."""
    cfg = run_config(RQ2Run(model="smollm2"), steps=steps + 1, objective=objective, batch_size=16)
    trainer = Trainer(policy, setup.tokenizer, setup.trie, cfg, setup.fit_data("train"), None,
                      log_rewards_fn=reward_fn(setup) if objective.gfn else None, progress=False)
    trainer.train_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pair_rows(setup, prompts: int, rejected: int = 3) -> list[list]:
    """RQ3's preference rows of the last ``prompts`` train rows: per prompt, the target's row and ``rejected``
    uniform rejected items' rows (``pairs.uniform_negatives``, seeded)."""
    targets = np.asarray(setup.data.train.target)[-prompts:]
    items = np.concatenate([targets[:, None], uniform_negatives(targets, setup.data.num_items, rejected,
                                                                np.random.default_rng(0))], axis=1)
    texts = setup.prompts["train"][-prompts:]
    rows = trie_rows(setup.tokenizer, [t for t in texts for _ in range(rejected + 1)], items.ravel(), setup.trie)
    return [rows[i : i + rejected + 1] for i in range(0, len(rows), rejected + 1)]


def matmul_limit(parts, split: int, tokens: int = 4096, repeats: int = 3) -> float:
    """Tokens per second of the linear layers of ``parts.layers[:split]`` alone (one [tokens, in] @ [in, out] each,
    the best of ``repeats``): the matrix-multiply limit of computing the lower layers' outputs on this machine."""
    linears = [m for layer in parts.layers[:split] for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    widths = {m.in_features for m in linears}
    x = {w: torch.randn(tokens, w) for w in widths}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for m in linears:
                torch.nn.functional.linear(x[m.in_features], m.weight)
            best = min(best, time.perf_counter() - t0)
    return tokens / best


def step_matmul_limit(parts, split: int, rows, batch: int = 16, repeats: int = 3) -> float:
    """Seconds of the matrix multiplies a training step of ``batch`` rows of the mean length of ``rows`` cannot avoid
    on the per-row trunk: every linear layer of ``parts.layers[split:]`` over every position and the LM head over
    the title positions (title + T), each forward and for the input gradient (two multiplies of the same size; the
    frozen weights need no weight gradient). No attention, norm, activation, loss or optimizer: the best of
    ``repeats``, a bound no implementation of the step can beat on this machine."""
    positions = round(batch * float(np.mean([len(r) + 1 for r in rows])))
    titles = round(batch * float(np.mean([len(r.title) + 1 for r in rows])))
    linears = [m for layer in parts.layers[split:] for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    work = [(torch.randn(positions, m.in_features), m.weight) for m in linears]
    work.append((torch.randn(titles, parts.lm_head.in_features), parts.lm_head.weight))
    grads = [torch.randn(x.shape[0], w.shape[0]) for x, w in work]
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for (x, w), g in zip(work, grads):
                torch.nn.functional.linear(x, w)  # forward
                g @ w  # the input gradient
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="movielens")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--decode-rows", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few rows: seconds")
    args = parser.parse_args()
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    smollm2 = not args.smoke and find_smollm2_gguf() is not None
    run = RQ2Run(data=args.data if smollm2 else "default", model="smollm2" if smollm2 else "tiny", train_rows=args.rows,
                 valid_rows=8, test_rows=args.decode_rows, trunk_layers=2, lora_rank=16, stop="newline" if smollm2 else "eos",
                 threads=None, cache_dir=None)
    setup, new_policy, _ = run_setup(run)
    policy = new_policy()
    base = policy.module
    # the stored states, timed on their own (no folder: computed, not read back)
    rows = trie_rows(setup.tokenizer, setup.prompts["train"], setup.data.train.target, setup.trie)
    tokens = sum(len(r) for r in rows)
    t0 = time.perf_counter()
    row_states(base, rows, policy.split)
    states_s = time.perf_counter() - t0
    limit = matmul_limit(decoder_parts(base), policy.split)
    pairs = pair_rows(setup, len(rows) // 4)
    t0 = time.perf_counter()
    row_states(base, [r for group in pairs for r in group], policy.split)
    shared_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(len(pairs[0])):  # one title per prompt and call: nothing to share
        row_states(base, [group[j] for group in pairs], policy.split)
    apart_s = time.perf_counter() - t0
    out = {"bench": "row_trunk", "smoke": args.smoke, "model": run.model, "data": run.data, "rows": len(rows),
           "tokens": tokens, "states_s": states_s, "states_tokens_per_s": tokens / states_s,
           "matmul_limit_tokens_per_s": limit, "states_share_of_limit": tokens / states_s / limit,
           "pair_prompts": len(pairs), "pair_states_shared_s": shared_s, "pair_states_apart_s": apart_s,
           "pair_states_ratio": apart_s / shared_s}
    print(f"preference rows: {len(pairs)} prompts x {len(pairs[0])} titles, states {shared_s:.1f} s with each prompt "
          f"once, {apart_s:.1f} s apart ({apart_s / shared_s:.1f}x)", flush=True)
    out["step_matmul_limit_s"] = step_floor = step_matmul_limit(decoder_parts(base), policy.split, rows)
    print(f"a step of 16 rows: its matrix multiplies alone {step_floor:.3f} s", flush=True)
    for objective in (Objective("sft"), Objective("distill")):
        cached = step_seconds(new_policy(), setup, objective, args.steps)
        whole = new_policy()  # the same frozen lower layers and LoRA adapters, run as one model
        full = step_seconds(LMPolicy(whole.module, setup.tokenizer), setup, objective, args.steps)
        out[f"{objective.loss}_step_s"] = cached
        out[f"{objective.loss}_full_step_s"] = full
        out[f"{objective.loss}_step_ratio"] = full / cached
        print(f"{objective.loss}: step of 16 rows {cached:.3f} s on the per-row trunk, {full:.3f} s through the whole "
              f"model ({full / cached:.1f}x)", flush=True)
    rloo = AlignConfig(steps=args.steps, batch_size=8)
    for key, start in (("rloo_step_s", new_policy()), ("rloo_full_step_s", new_policy().module)):
        t0 = time.perf_counter()
        rloo_align(setup, start, rloo, samples=4)
        out[key] = (time.perf_counter() - t0) / args.steps
    out["rloo_step_ratio"] = out["rloo_full_step_s"] / out["rloo_step_s"]
    print(f"RL baseline: a step of 8 prompts x 4 samples {out['rloo_step_s']:.2f} s on the per-row trunk, "
          f"{out['rloo_full_step_s']:.2f} s through the whole model ({out['rloo_step_ratio']:.1f}x)", flush=True)
    model = policy.module.eval()
    prompts = setup.prompts["test"][: args.decode_rows]
    settings = dict(num_beams=10, num_return=10, max_new_tokens=setup.trie.max_path_length, batch_size=8)
    t0 = time.perf_counter()
    reference = decoding.recommend(model, setup.tokenizer, prompts, setup.trie, **settings)
    generate_s = (time.perf_counter() - t0) / len(prompts)
    out["generate_s_per_row"] = generate_s
    t0 = time.perf_counter()
    ranked = beam_search.recommend(model, setup.tokenizer, prompts, setup.trie, **settings)
    beam_s = (time.perf_counter() - t0) / len(prompts)
    out |= {"beam_s_per_row": beam_s, "beam_ratio": generate_s / beam_s, "rankings_equal": ranked == reference}
    print(f"states: {tokens} tokens in {states_s:.1f} s ({tokens / states_s:.0f} tokens/s; the linear layers alone "
          f"{limit:.0f} tokens/s, {tokens / states_s / limit:.0%} of it); beam search "
          f"{beam_s:.3f} s per row vs generate {generate_s:.3f} s", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
