"""Cost of a Flower training step vs an SFT step: same model, same batch, measured side by side in one run.

Three modes of ``Trainer.train_step`` (the real training code: prompts, trajectories, rewards, loss,
backward, gradient clipping, AdamW step) on one model and one optimizer:

* ``sft``: teacher-forced cross-entropy of the dataset titles;
* ``flower_tf``: Flower (theta mix of SFT and sub-trajectory balance) on teacher-forced dataset titles
  ("offline" trajectories): the same single forward pass plus the exact trie rewards and the SubTB loss;
* ``flower_op``: Flower on on-policy samples: trie-masked sampling with a KV cache (no gradient), then one
  teacher-forced pass over the samples, plus the teacher-forced SFT pass on the dataset titles.

Every repetition runs the three modes back to back on the same rows (``Trainer.step`` is reset, so the
data order, the dropout seed and the sampler seed are those of step 0), in a rotating order; the
learning rate is 0, so the model, and therefore every sample, stays the same across repetitions (AdamW
does the same work as with any other learning rate). Times are medians over ``--repeats``; ratios are
mode / SFT of the medians, "of minima" uses each mode's fastest run (least disturbed by other load) and
"paired" is the median over repetitions of mode / SFT within the same repetition (adjacent runs share the
machine's load, so this is the steadiest on a busy machine). ``--breakdown`` times the pieces of each step.
tokens/s counts the real (non-pad) prompt and title tokens of the batch's dataset rows per second of step.

Goals (issue: performance): teacher-forced Flower step <= 1.15x the SFT step; on-policy: report the ratio.

Usage: python bench/train_step.py [--model tiny|qwen] [--device cpu|cuda] [--dtype float32|bfloat16]
                                  [--batch 16] [--repeats 15] [--threads 1] [--breakdown] [--smoke]
``--model qwen`` is the Qwen2.5-0.5B architecture with random weights (for a GPU; see bench/gpu_check.py).
``--smoke``: 200 items, hidden size 32, batch 4, 2 repeats and ``--breakdown`` (seconds; checks that the bench
runs on the current training code, its figures mean nothing). The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from flower_lite.config import Objective
from flower_lite.data import make_synthetic_catalog
from flower_lite.experiments.recipes import FLOWER
from flower_lite.models import DTYPES, build_tiny_model, build_tiny_tokenizer, random_qwen2_5_0_5b
from flower_lite.prompts import build_prompt, title_trie
from flower_lite.rewards import popularity_rewards
from flower_lite.train import FitData, TrainConfig, Trainer, batch_indices

MODES = ("sft", "flower_tf", "flower_op")
SMOKE = {"items": 200, "hidden_size": 32, "batch": 4, "repeats": 2, "breakdown": True}  # --smoke
INSTRUCTION = "Given a list of movies the user recently enjoyed, write a new movie the user may like"


def next_item_data(n_items: int, max_history: int = 10, seed: int = 0):
    """Synthetic catalogue -> (titles, popularity counts, FitData of BIGRec-style prompts -> the next item).

    One row per (user, position >= 1): the prompt lists the previous <= ``max_history`` titles.
    """
    catalog = make_synthetic_catalog(n_items=n_items, n_users=max(400, n_items // 2), seed=seed)
    prompts, items = [], []
    for history in catalog.histories():
        for t in range(1, len(history)):
            prompts.append(build_prompt(INSTRUCTION, [catalog.titles[i] for i in history[max(0, t - max_history):t]], "movies"))
            items.append(history[t])
    return catalog.titles, catalog.counts(), FitData(prompts, np.array(items))


def build_setup(model_kind: str = "tiny", n_items: int = 1000, device: str = "cpu", dtype: str = "float32",
                vocab_size: int | None = None, hidden_size: int = 64, seed: int = 0):
    """(model, tokenizer, trie, data) for a benchmark.

    ``tiny``: the tiny Qwen2 of ``flower_lite.models`` (``hidden_size``, 2 layers, byte-level BPE of
    ``vocab_size`` tokens, default 2048). ``qwen``: the Qwen2.5-0.5B architecture with random weights; the
    tokenizer is still a BPE trained on the catalogue (no download), of 8192 tokens by default, so that
    titles and prompts have realistic token lengths; its ids all lie inside Qwen's vocabulary.
    Popularity rewards R(i) = c(i) + 1 (no zero-reward items).
    """
    titles, counts, data = next_item_data(n_items, seed=seed)
    texts = titles + data.prompts[:2000]
    if model_kind == "tiny":
        tok = build_tiny_tokenizer(texts, vocab_size=vocab_size or 2048)
        model = build_tiny_model(tok, hidden_size=hidden_size, seed=seed)
    elif model_kind == "qwen":
        tok = build_tiny_tokenizer(texts, vocab_size=vocab_size or 8192)
        model = random_qwen2_5_0_5b(dtype=DTYPES[dtype], seed=seed)
    else:
        raise ValueError(f"unknown model {model_kind!r}: expected tiny or qwen")
    model = model.to(device=device, dtype=DTYPES[dtype])
    trie = title_trie(tok, titles, popularity_rewards(counts, eps=1.0))
    return model, tok, trie, data


def mode_configs(base: TrainConfig) -> dict[str, TrainConfig]:
    """The three step kinds of the module docstring on ``base``'s settings."""
    return {
        "sft": replace(base, objective=Objective("sft"), trajectories="offline"),
        "flower_tf": replace(base, objective=FLOWER, trajectories="offline"),
        "flower_op": replace(base, objective=FLOWER, trajectories="on_policy"),
    }


def base_config(batch: int, **kw) -> TrainConfig:
    """lr = 0 (model and samples fixed across repetitions), constant schedule, no warm-up, theta = 0.995."""
    return TrainConfig(objective=FLOWER, lr=0.0, warmup_steps=0, schedule="constant", batch_size=batch,
                       grad_accum=1, max_steps=10**9, **kw)


def sync(device) -> None:
    """Wait for queued CUDA work (nothing to do on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_step(trainer: Trainer, config: TrainConfig) -> tuple[float, dict]:
    """One ``train_step`` of step 0's rows under ``config`` (the trainer's optimizer and model are shared)."""
    trainer.config, trainer.step = config, 0
    sync(trainer.accelerator.device)
    start = time.perf_counter()
    stats = trainer.train_step()
    sync(trainer.accelerator.device)
    return time.perf_counter() - start, stats


def step0_prompts(trainer: Trainer, data: FitData, batch: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Step 0's rows and their left-padded prompts on the model's device, as ``Trainer.loss`` builds them."""
    rows = batch_indices(len(data), batch, 0, trainer.config.seed)
    return rows, trainer.policy.prompts([data.prompts[i] for i in rows]).encoded


def batch_tokens(trainer: Trainer, data: FitData, batch: int) -> dict:
    """Prompt and title tokens of step 0's rows: real (non-pad) tokens and the padded [B, L + K] size."""
    rows, prompts = step0_prompts(trainer, data, batch)
    lengths = trainer.trie.structure.path_length[torch.as_tensor(data.items[rows], device=trainer.trie.device)].cpu()  # title + T
    real = int(prompts["attention_mask"].sum()) + int(lengths.sum())
    return {"real_tokens": real, "padded_tokens": batch * (prompts["input_ids"].shape[1] + int(lengths.max())),
            "prompt_width": int(prompts["input_ids"].shape[1]), "mean_title_tokens": float(lengths.float().mean() - 1)}


def compare(trainer: Trainer, configs: dict[str, TrainConfig], repeats: int, warmup: int = 2) -> dict:
    """Interleaved repetitions of every mode (rotating order); per-mode median and minimum seconds."""
    names = list(configs)
    for _ in range(warmup):
        for name in names:
            timed_step(trainer, configs[name])
    runs = {name: [] for name in names}
    losses = {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, stats = timed_step(trainer, configs[name])
            runs[name].append(seconds)
            losses[name] = stats["loss"]
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "loss": losses[name],
                   "paired_ratio": statistics.median(t / s for t, s in zip(v, runs[names[0]]))} for name, v in runs.items()}


def sampling_seconds(trainer: Trainer, data: FitData, batch: int, repeats: int) -> float:
    """Median time of the on-policy sampler alone (KV cache, no grad) on step 0's prompts."""
    from flower_lite.rollout import sample_on_policy

    _, prompts = step0_prompts(trainer, data, batch)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.train()
    times = []
    for r in range(repeats):
        gen = torch.Generator(device=trainer.accelerator.device).manual_seed(trainer.config.seed * 104_729)
        sync(trainer.accelerator.device)
        start = time.perf_counter()
        with trainer.accelerator.autocast():
            sample_on_policy(model, prompts, trainer.trie, trainer.config.temperature, gen, trainer.config.max_new_tokens)
        sync(trainer.accelerator.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


COMPONENTS = {  # (module, attribute) of the pieces of a step, where their callers look them up
    "teacher_forced (forward)": ("flower_lite.rollout", "teacher_forced"),  # LMPolicy.log_probs, one set
    "prompt_pass (forward)": ("flower_lite.rollout", "prompt_pass"),  # LMPolicy: shared by the sets of a step
    "continue_prompts (forward)": ("flower_lite.rollout", "continue_prompts"),  # LMPolicy.log_probs, several sets
    "sample_on_policy": ("flower_lite.rollout", "sample_on_policy"),  # LMPolicy.sample
    "path_rewards (trie)": ("flower_lite.train", "path_rewards"),  # Trainer.loss
    "subtb loss": ("flower_lite.losses", "subtrajectory_balance_loss"),
    "sft loss": ("flower_lite.losses", "sft_loss"),
}


def breakdown(trainer: Trainer, configs: dict[str, TrainConfig], repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds spent in each component (wrapped with timers), backward and optimizer step, in the fastest
    of ``repeats`` steps of each mode.

    "other" is the rest of ``train_step`` (batch indices, prompt padding, gradient clipping, ...). A component
    that no longer exists, or that no mode calls, is an error: the training code changed and ``COMPONENTS``
    must follow it (silently timing nothing would report its time as "other").
    """
    import importlib

    device = trainer.accelerator.device
    spent: dict[str, float] = {}

    def timer(label: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
            return out
        return wrapped

    originals = []
    for label, (module, attr) in COMPONENTS.items():
        mod = importlib.import_module(module)
        if not hasattr(mod, attr):
            raise AttributeError(f"breakdown: {module}.{attr} no longer exists; update COMPONENTS in bench/train_step.py")
        originals.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, timer(label, getattr(mod, attr)))
    acc, opt = trainer.accelerator, trainer.optimizer
    acc.backward, opt.step = timer("backward", acc.backward), timer("optimizer step", opt.step)
    try:
        out = {}
        for name, config in configs.items():
            rows = []
            for _ in range(repeats):
                spent.clear()
                total, _ = timed_step(trainer, config)
                rows.append({**spent, "other": total - sum(spent.values()), "total": total})
            fastest = min(rows, key=lambda r: r["total"])  # least disturbed by other load; its parts sum to its total
            out[name] = {k: round(1e3 * v, 3) for k, v in sorted(fastest.items(), key=lambda kv: (kv[0] == "total", -kv[1]))}
        unused = [label for label in COMPONENTS if not any(label in row for row in out.values())]
        if unused:
            raise RuntimeError(f"breakdown: no mode called {unused}; the training code changed, update COMPONENTS")
        return out
    finally:
        for mod, attr, fn in originals:
            setattr(mod, attr, fn)
        del acc.backward, opt.step  # back to the class methods


def summarise(res: dict, tokens: dict) -> dict:
    """Flat JSON fields: per mode ms/step and tokens/s; ratios to SFT (of medians, of minima, paired)."""
    sft = res["sft"]
    out = {}
    for name, r in res.items():
        out[f"{name}_ms"] = round(1e3 * r["median_s"], 3)
        out[f"{name}_tokens_per_s"] = round(tokens["real_tokens"] / r["median_s"], 1)
        if name != "sft":
            out[f"{name}_ratio"] = round(r["median_s"] / sft["median_s"], 4)
            out[f"{name}_ratio_of_min"] = round(r["min_s"] / sft["min_s"], 4)
            out[f"{name}_paired_ratio"] = round(r["paired_ratio"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "qwen"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--hidden-size", type=int, default=64, help="tiny model only")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids OpenMP spin-waits on a busy machine)")
    parser.add_argument("--breakdown", action="store_true", help="also time the components of each step (timers add syncs)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and --breakdown: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cpu":
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # the Trainer's accelerator must not move the model to a GPU

    model, tok, trie, data = build_setup(args.model, args.items, args.device, args.dtype, hidden_size=args.hidden_size)
    trainer = Trainer(model, tok, trie, base_config(args.batch), data, progress=False)
    tokens = batch_tokens(trainer, data, args.batch)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} model ({params / 1e6:.2f}M parameters, vocab {model.config.vocab_size}, {args.dtype}) on {args.device}, "
          f"{trie.num_items} titles ({trie.num_nodes} trie nodes), batch {args.batch}: prompts {tokens['prompt_width']} tokens wide, "
          f"titles {tokens['mean_title_tokens']:.1f} tokens on average; {args.threads} thread(s), {args.repeats} repeats")
    res = compare(trainer, mode_configs(base_config(args.batch)), args.repeats, warmup=1 if args.smoke else 2)
    sample_s = sampling_seconds(trainer, data, args.batch, max(3, args.repeats // 3))
    for name, r in res.items():
        ratio = r["median_s"] / res["sft"]["median_s"]
        print(f"{name:10s} {1e3 * r['median_s']:9.2f} ms/step (min {1e3 * r['min_s']:8.2f})  "
              f"{tokens['real_tokens'] / r['median_s']:10.0f} tokens/s  ratio {ratio:.3f}x (of minima "
              f"{r['min_s'] / res['sft']['min_s']:.3f}x, paired {r['paired_ratio']:.3f}x)  loss {r['loss']:.4g}")
    print(f"on-policy sampling alone: {1e3 * sample_s:.2f} ms ({sample_s / res['flower_op']['median_s']:.0%} of the on-policy step)")
    parts = {}
    if args.breakdown:
        parts = breakdown(trainer, mode_configs(base_config(args.batch)), args.repeats)
        for name, row in parts.items():
            print(f"{name:10s} ms: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(json.dumps({"bench": "train_step", "model": args.model, "device": args.device, "dtype": args.dtype,
                      "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "items": trie.num_items, "smoke": args.smoke,
                      **tokens, **summarise(res, tokens), "sampling_ms": round(1e3 * sample_s, 3),
                      **({"breakdown_ms": parts} if parts else {})}))


if __name__ == "__main__":
    main()
