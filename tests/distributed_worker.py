"""Worker of tests/test_distributed.py: a few Flower steps of the tiny model, with per-process debug records.

Run with plain ``python`` (one process) or under ``accelerate launch`` (several). Besides the run's own
output (``OUT/run``: checkpoints, ``log.jsonl``, ``config.json``, ``final/``, written by the main process
only), every process writes ``OUT/debug/rank_<r>.json`` (the rows of every training micro-batch it computed,
the files the training code wrote from this process, the history) and ``OUT/debug/params_<r>.pt`` (the final
parameters). With ``--on-policy-steps`` a second, on-policy run follows (no output directory) and its final
parameters go to ``OUT/debug/params_on_policy_<r>.pt``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

import flower_lite.train as train_module
from flower_lite.data import load_default_catalog
from flower_lite.models import make_tiny_model
from flower_lite.prompts import build_prompt, title_trie
from flower_lite.config import Objective
from flower_lite.train import FitData, Trainer, TrainConfig

PROMPT = build_prompt("Recommend a movie.")


class RecordingTrainer(Trainer):
    """Records the rows of every training micro-batch (``loss`` with gradients; validation runs without)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows_seen: list[dict] = []

    def loss(self, data, rows, *args, **kwargs):
        if torch.is_grad_enabled():
            self.rows_seen.append({"step": self.step, "rows": [int(r) for r in rows]})
        return super().loss(data, rows, *args, **kwargs)


def record_writes(written: list[str]) -> None:
    """Wrap the file writers of ``flower_lite.train`` so that this process notes every file it writes."""
    save, write_text = train_module._atomic_torch_save, train_module.atomic_write_text

    def torch_save(obj, path):
        written.append(Path(path).name)
        save(obj, path)

    def text(path, content):
        written.append(Path(path).name)
        write_text(path, content)

    def opener(path, mode="r", *args, **kwargs):  # Trainer._log appends with the builtin open
        if any(m in mode for m in "wax"):
            written.append(Path(path).name)
        return open(path, mode, *args, **kwargs)

    train_module._atomic_torch_save, train_module.atomic_write_text = torch_save, text
    train_module.open = opener  # module globals shadow builtins


def setup(rows: int = 64):
    catalog = load_default_catalog()
    titles, counts = catalog.titles[:40], catalog.counts()[:40].astype(float) + 1.0
    model, tok = make_tiny_model(titles + [PROMPT])  # deterministic: the same tokenizer and weights in every process
    trie = title_trie(tok, titles, counts)
    items = np.random.default_rng(0).choice(40, size=rows, p=counts / counts.sum())
    return model, tok, trie, FitData([PROMPT] * rows, items), FitData([PROMPT] * 8, items[:8]), titles


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--on-policy-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    written: list[str] = []
    record_writes(written)

    model, tok, trie, data, valid, titles = setup()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(objective=Objective("subtb", theta=0.5), trajectories="offline", max_steps=args.steps, eval_every=2,
                         save_every=2, lr=3e-3, warmup_steps=1, batch_size=args.batch, grad_accum=args.grad_accum)
    trainer = RecordingTrainer(model, tok, trie, config, data, valid=valid, output_dir=out / "run", progress=False)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    save_pretrained = unwrapped.save_pretrained

    def recording_save_pretrained(path, *a, **kw):
        written.append(Path(path).name)
        return save_pretrained(path, *a, **kw)

    unwrapped.save_pretrained = recording_save_pretrained
    result = trainer.run()
    acc = trainer.accelerator
    rank = acc.process_index
    debug = out / "debug"
    debug.mkdir(parents=True, exist_ok=True)
    params = {n: p.detach().cpu() for n, p in result.model.named_parameters()}
    torch.save(params, debug / f"params_{rank}.pt")
    changed = max(float((params[n] - initial[n].cpu()).abs().max()) for n in params)
    record = {"rank": rank, "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
              "backend": acc.state.backend, "pid": os.getpid(), "rows": trainer.rows_seen, "written": list(written),
              "history": result.history, "largest_update": changed}

    if args.on_policy_steps:
        model2 = make_tiny_model(titles + [PROMPT])[0]
        op = replace_config(config, trajectories="on_policy", max_steps=args.on_policy_steps, eval_every=args.on_policy_steps)
        result2 = RecordingTrainer(model2, tok, trie, op, data, progress=False).run()
        torch.save({n: p.detach().cpu() for n, p in result2.model.named_parameters()}, debug / f"params_on_policy_{rank}.pt")
        record["on_policy_history"] = result2.history
    (debug / f"rank_{rank}.json").write_text(json.dumps(record))
    acc.wait_for_everyone()


def replace_config(config: TrainConfig, **changes) -> TrainConfig:
    from dataclasses import replace

    return replace(config, **changes)


if __name__ == "__main__":
    main()
