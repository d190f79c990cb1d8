"""One training loop for SFT, Flower (theta mix) and pure GFlowNet fine-tuning of a causal LM.

Built on ``accelerate`` (CPU, one GPU, bf16/fp16, several processes with ``accelerate launch``).
The data order is a function of (seed, step), so a run resumed from a checkpoint continues exactly
as if it had not stopped. Checkpoints are written atomically (a temporary file, then a rename).
Evaluation and early stopping use the validation split only. Every evaluation appends one JSON
line to ``log.jsonl``; ``config.json`` stores the run's configuration.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import losses
from .prompts import left_pad
from .rewards import OFF_ITEM_PENALTY, path_rewards, place_stop
from .rollout import (OfflineSchedule, Trajectories, continue_prompts, item_trajectories, prompt_pass, sample_on_policy,
                      teacher_forced)
from .trie import Trie

METHODS = ("sft", "flower", "gfn")
GFN_LOSSES = ("subtb", "tb", "db")
TRAJECTORIES = ("offline", "on_policy", "mixed", "catalog")
SCHEDULES = ("cosine", "linear", "constant")
RESUME_MAY_CHANGE = {"eval_every", "save_every", "patience"}  # settings a resumed run may change


@dataclass
class TrainConfig:
    """Settings of a fine-tuning run. ``batch_size`` is the global batch of one optimizer step; it is
    split over processes, then into ``grad_accum`` micro-batches."""

    method: str = "flower"  # sft | flower (theta mix) | gfn (GFlowNet loss only)
    loss: str = "subtb"  # the GFlowNet objective: subtb (Flower's) | tb | db
    theta: float = 0.995
    lam: float = 1.0
    granularity: int = 1
    normalisation: str = "pairs"
    penalty: float = OFF_ITEM_PENALTY
    # GFlowNet trajectories: offline (teacher-forced dataset items) | on_policy (trie-masked samples) |
    # mixed (the reference's offline/on-policy schedule) | catalog (teacher-forced random catalogue items:
    # exact flows make any item a valid off-policy trajectory, so the tail is covered at SFT's cost)
    trajectories: str = "offline"
    temperature: float = 1.0
    offline_threshold: float = 1.0  # mixed: the offline probability decays when the loss drops below this
    lr: float = 1e-4
    log_z_lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_steps: int = 20
    schedule: str = "cosine"
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 100
    eval_every: int = 20
    patience: int | None = None  # evaluations without a better validation loss before stopping
    save_every: int = 50
    mixed_precision: str = "no"  # no | bf16 | fp16
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("method", self.method, METHODS), ("loss", self.loss, GFN_LOSSES),
            ("trajectories", self.trajectories, TRAJECTORIES), ("schedule", self.schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}: expected one of {allowed}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")


@dataclass
class FitData:
    """Training rows: a prompt, the target item, the row of the per-user reward (if any) and an
    optional per-row weight of the SFT term (e.g. IFairLRS group weights; None = every row 1)."""

    prompts: list[str]
    items: np.ndarray  # [rows] target item ids
    reward_rows: np.ndarray | None = None  # [rows] index passed to ``log_rewards_fn``
    weights: np.ndarray | None = None  # [rows] >= 0, passed to ``losses.sft_loss(weight=...)``

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.int64)
        if len(self.prompts) != len(self.items) or len(self.items) == 0:
            raise ValueError(f"FitData: {len(self.prompts)} prompts for {len(self.items)} items (need the same, > 0)")
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float64)
            if self.weights.shape != self.items.shape or not np.isfinite(self.weights).all() or (self.weights < 0).any():
                raise ValueError(f"FitData: weights must be {len(self.items)} finite values >= 0, got shape {self.weights.shape}")

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    output_dir: Path | None = None
    best_step: int | None = None
    stopped_early: bool = False


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then cosine / linear decay to 0 at ``max_steps``, or constant."""
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return f


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of the global batch of ``step``: a fresh seeded permutation every epoch, the last partial batch dropped."""
    per_epoch = num_rows // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {num_rows} training rows")
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[pos * batch_size : (pos + 1) * batch_size]


class Trainer:
    """Fine-tunes ``model`` on ``data`` with ``config``; see ``fit`` for the one-call version."""

    def __init__(self, model, tokenizer, trie: Trie, config: TrainConfig, data: FitData, valid: FitData | None = None,
                 log_rewards_fn: Callable[[np.ndarray], Tensor] | None = None, eval_fn: Callable[[torch.nn.Module], dict] | None = None,
                 output_dir: str | Path | None = None, progress: bool = True):
        from accelerate import Accelerator

        self.config, self.data, self.valid = config, data, valid
        self.tokenizer, self.log_rewards_fn, self.eval_fn, self.progress = tokenizer, log_rewards_fn, eval_fn, progress
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        acc = self.accelerator
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and acc.num_processes == 1:  # each process would train alone and write the same files
            raise RuntimeError(f"launched as {launched} processes but accelerate sees one: on a machine without a GPU, "
                               "set ACCELERATE_USE_CPU=1 (see docs/SCALING.md)")
        if config.batch_size % (acc.num_processes * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} must split evenly over {acc.num_processes} processes x {config.grad_accum} micro-batches")
        self.trie = trie.to(acc.device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id, self._prompt_cache = pad, {}
        self.log_z = torch.nn.Parameter(torch.zeros((), device=acc.device))
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": config.lr, "weight_decay": config.weight_decay}]
        if config.method != "sft" and config.loss == "tb":
            groups.append({"params": [self.log_z], "lr": config.log_z_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lr_lambda(config)] * len(groups))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.schedule = OfflineSchedule(threshold=config.offline_threshold)
        self.step, self.best_valid, self.bad_evals, self.best_step = 0, math.inf, 0, None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ data
    def _prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        rows = []
        for p in prompts:
            if p not in self._prompt_cache:
                self._prompt_cache[p] = self.tokenizer(p)["input_ids"]
            rows.append(self._prompt_cache[p])
        return {k: v.to(self.accelerator.device) for k, v in left_pad(rows, self._pad_id).items()}

    def _log_rewards(self, data: FitData, rows: np.ndarray) -> Tensor | None:
        if self.log_rewards_fn is None:
            return None
        keys = data.reward_rows[rows] if data.reward_rows is not None else rows
        return self.log_rewards_fn(keys).to(self.accelerator.device)

    # ------------------------------------------------------------------ objective
    def loss(self, data: FitData, rows: np.ndarray, mode: str = "offline", generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """The configured objective on ``rows`` of ``data``; returns (loss, {"sft": ..., "gfn": ...}).

        ``mode`` picks the GFlowNet trajectories: ``offline`` (the rows' targets), ``on_policy`` or
        ``catalog`` (both drawn with ``generator``). Validation always uses ``offline``.
        """
        cfg, trie = self.config, self.trie
        prompts = self._prompts([data.prompts[i] for i in rows])
        targets = item_trajectories(trie, torch.as_tensor(data.items[rows], device=trie.device))
        traj, first = targets, None
        if cfg.method != "sft" and mode in ("catalog", "on_policy"):
            # the GFlowNet titles differ from the SFT targets: one pass over the prompts serves both
            first = prompt_pass(self.model, prompts)
            if mode == "catalog":
                items = torch.randint(trie.num_items, (len(rows),), generator=generator, device=generator.device)
                traj = item_trajectories(trie, items.to(trie.device))
            else:
                traj = sample_on_policy(self.accelerator.unwrap_model(self.model), prompts, trie, cfg.temperature,
                                        generator, cfg.max_new_tokens, first=first)
        if first is not None:
            (action, stop), (gfn_action, gfn_stop) = continue_prompts(self.model, prompts, first, [targets, traj], trie.eos_id)
        else:  # one set of titles, or no usable prompt cache (gradient checkpointing): teacher-force each set
            action, stop = teacher_forced(self.model, prompts, targets, trie.eos_id)
            gfn_action, gfn_stop = (action, stop) if traj is targets else teacher_forced(self.model, prompts, traj, trie.eos_id)
        parts = {}
        weight = None if data.weights is None else torch.as_tensor(data.weights[rows], dtype=action.dtype, device=action.device)
        sft = losses.sft_loss(*place_stop(action, stop, targets.lengths.to(action.device)), weight=weight)
        parts["sft"] = sft.item()
        if cfg.method == "sft":
            return sft, parts
        gfn = self._gfn_loss(traj, gfn_action, gfn_stop, self._log_rewards(data, rows))
        parts["gfn"] = gfn.item()
        return (losses.theta_mix(sft, gfn, cfg.theta) if cfg.method == "flower" else gfn), parts

    def _gfn_loss(self, traj: Trajectories, action: Tensor, stop: Tensor, log_rewards: Tensor | None) -> Tensor:
        cfg = self.config
        lengths = traj.lengths.to(action.device)
        rewards = path_rewards(self.trie, traj.tokens.to(self.trie.device), traj.lengths.to(self.trie.device), log_rewards, cfg.penalty)
        log_stop_reward = rewards.log_stop_reward.to(action.device, action.dtype)
        if cfg.loss == "subtb":
            return losses.subtrajectory_balance_loss(action, stop, log_stop_reward, lengths, cfg.lam, cfg.granularity, cfg.normalisation)
        path, mask = place_stop(action, stop, lengths)
        if cfg.loss == "tb":
            return losses.trajectory_balance_loss(path, mask, log_stop_reward.gather(1, lengths[:, None])[:, 0], self.log_z)
        return losses.detailed_balance_loss(path, rewards.log_r_path.to(action.device, action.dtype), mask, cfg.granularity)

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict:
        """One optimizer step on this process's share of the global batch."""
        cfg, acc = self.config, self.accelerator
        rows = batch_indices(len(self.data), cfg.batch_size, self.step, cfg.seed)
        share = cfg.batch_size // acc.num_processes
        rows = rows[acc.process_index * share : (acc.process_index + 1) * share]
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout: reproducible per step
        decide = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)  # same decision on every process
        mode = cfg.trajectories
        if mode == "mixed":
            mode = "offline" if self.schedule.use_offline(decide) else "on_policy"
        sampler = torch.Generator(device=acc.device).manual_seed(cfg.seed * 104_729 + self.step * 131 + acc.process_index)
        self.model.train()
        total, parts = 0.0, {}
        micro = np.array_split(rows, cfg.grad_accum)
        for k, chunk in enumerate(micro):
            sync = k == len(micro) - 1
            with acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext():
                with acc.autocast():
                    loss, parts = self.loss(self.data, chunk, mode, sampler)
                acc.backward(loss / len(micro))
            total += loss.item() / len(micro)
        if acc.num_processes > 1:  # the global batch's loss, the same on every process (logs, mixed schedule)
            total = acc.reduce(torch.tensor(total, dtype=torch.float64, device=acc.device), reduction="mean").item()
        if cfg.max_grad_norm is not None:
            acc.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.trajectories == "mixed":
            self.schedule.update(total)
        self.step += 1
        return {"loss": total, **parts, "trajectories": mode}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (teacher-forced, the training objective) and ``eval_fn`` metrics."""
        out = {}
        self.model.eval()
        if self.valid is not None:
            size = max(1, self.config.batch_size // self.accelerator.num_processes)
            values, weights = [], []
            for start in range(0, len(self.valid), size):
                rows = np.arange(start, min(start + size, len(self.valid)))
                with self.accelerator.autocast():
                    values.append(float(self.loss(self.valid, rows)[0]))
                weights.append(len(rows))
            out["valid_loss"] = float(np.average(values, weights=weights))
        if self.eval_fn is not None:
            out.update(self.eval_fn(self.accelerator.unwrap_model(self.model)))
        return out

    def run(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train until ``max_steps`` or early stopping; resumes from ``output_dir/checkpoint.pt`` if present.

        ``stop_at`` interrupts the run after that step (with a checkpoint), as a crash would.
        """
        cfg, acc = self.config, self.accelerator
        if self.output_dir is not None:
            if acc.is_main_process:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.output_dir / "config.json", json.dumps(asdict(cfg), indent=2))
            if resume and (self.output_dir / "checkpoint.pt").exists():
                self.load_checkpoint(self.output_dir / "checkpoint.pt")
        stopped = False
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"{cfg.method}", disable=not (self.progress and acc.is_main_process))
        if self.step == 0:  # the initial model is a candidate too
            record = {"step": 0, **self.evaluate()}
            stopped = self._early_stopping(record)
            self._log(record)
        last = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        while self.step < last and not stopped:
            stats = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4g}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                record = {"step": self.step, **stats, "lr": self.scheduler.get_last_lr()[0], **self.evaluate()}
                stopped = self._early_stopping(record)
                self._log(record)
            if self.output_dir is not None and (self.step % cfg.save_every == 0 or self.step in (last, cfg.max_steps) or stopped):
                self.save_checkpoint(self.output_dir / "checkpoint.pt")
        bar.close()
        if self.output_dir is not None and acc.is_main_process and (self.step >= cfg.max_steps or stopped):
            final = self.output_dir / "final"
            acc.unwrap_model(self.model).save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        acc.wait_for_everyone()
        return TrainResult(acc.unwrap_model(self.model), self.history, self.output_dir, self.best_step, stopped)

    def _early_stopping(self, record: dict) -> bool:
        if "valid_loss" not in record:
            return False
        if record["valid_loss"] < self.best_valid:
            self.best_valid, self.bad_evals, self.best_step = record["valid_loss"], 0, self.step
            if self.output_dir is not None and self.accelerator.is_main_process:
                _atomic_torch_save(self._trainable_state(), self.output_dir / "best.pt")
            return False
        self.bad_evals += 1
        return self.config.patience is not None and self.bad_evals >= self.config.patience

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.output_dir is not None and self.accelerator.is_main_process:
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def _trainable_state(self) -> dict[str, Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: Path) -> None:
        """Atomically write parameters, optimizer, scheduler, log Z and loop state (main process only)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "model": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "log_z": self.log_z.detach().cpu(),
                "loop": {"step": self.step, "best_valid": self.best_valid, "bad_evals": self.bad_evals,
                         "best_step": self.best_step, "offline_p": self.schedule.p},
                "config": asdict(self.config),
            }
            _atomic_torch_save(state, path)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint``; a clear error if it is unreadable."""
        state = load_checkpoint_file(path)
        changed = sorted(k for k, v in asdict(self.config).items() if k not in RESUME_MAY_CHANGE and state["config"].get(k) != v)
        if changed:
            raise ValueError(f"checkpoint {path} was written with other settings ({', '.join(changed)}); use another output_dir")
        model = self.accelerator.unwrap_model(self.model)
        missing = set(state["model"]) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"checkpoint {path} does not match the model: unknown parameters {sorted(missing)[:3]}")
        model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            self.log_z.copy_(state["log_z"])
        loop = state["loop"]
        self.step, self.best_valid, self.bad_evals = loop["step"], loop["best_valid"], loop["bad_evals"]
        self.best_step, self.schedule.p = loop["best_step"], loop["offline_p"]
        if self.output_dir is not None and self.accelerator.is_main_process:
            _truncate_log(self.output_dir / "log.jsonl", self.step)
            self.history = [json.loads(x) for x in (self.output_dir / "log.jsonl").read_text().splitlines()] if (self.output_dir / "log.jsonl").exists() else []


def fit(model, tokenizer, trie: Trie, config: TrainConfig, data: FitData, valid: FitData | None = None, **kwargs) -> TrainResult:
    """Train with ``Trainer(...).run()``; keyword arguments go to ``Trainer``."""
    resume = kwargs.pop("resume", True)
    return Trainer(model, tokenizer, trie, config, data, valid, **kwargs).run(resume=resume)


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a checkpoint; ``FileNotFoundError`` if missing, ``ValueError`` naming the file if corrupt."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, pickled objects ...
        raise ValueError(f"corrupt checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "loop", "config"} <= set(state):
        raise ValueError(f"corrupt checkpoint {path}: missing entries")
    return state


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it: readers see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file and a rename)."""
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint's step (they will be written again)."""
    if path.exists():
        kept = [x for x in path.read_text().splitlines() if x and json.loads(x).get("step", 0) <= step]
        atomic_write_text(path, "".join(k + "\n" for k in kept))
