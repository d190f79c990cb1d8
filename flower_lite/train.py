"""One training loop for every objective of a causal LM: SFT, a GFlowNet loss, or their θ-mix (``config.Objective``).

Built on ``accelerate`` (CPU, one GPU, bf16/fp16, several processes with ``accelerate launch``).
The data order is a function of (seed, step), so a run resumed from a checkpoint continues exactly
as if it had not stopped. Checkpoints are written atomically (a temporary file, then a rename).
Evaluation and early stopping use the validation split only. Every evaluation appends one JSON
line to ``log.jsonl``; ``config.json`` stores the run's configuration. Ctrl-C writes a checkpoint before
it stops the run. The loss of every step is :func:`flower_lite.objective.objective_loss`; the policy
(a full causal LM, :class:`~flower_lite.rollout.LMPolicy`, or a frozen-trunk one) gives the log-probabilities.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import TrainConfig
from .files import atomic_write, atomic_write_text
from .objective import PathLogProbs, objective_loss
from .rewards import path_rewards
from .rollout import LMPolicy, OfflineSchedule
from .threads import num_threads, threads_for
from .trie import Trie

__all__ = ["TrainConfig", "FitData", "TrainResult", "Trainer", "TrainingInterrupted", "fit", "lr_lambda",
           "batch_indices", "load_checkpoint_file", "trainable_state", "load_trainable"]

RESUME_MAY_CHANGE = {"eval_every", "save_every", "patience"}  # settings a resumed run may change


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.run`: a checkpoint was written to ``checkpoint`` first (None without an
    output folder); rerunning the same command resumes from it exactly."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


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
    """Fine-tunes a policy on ``data`` with ``config``; see ``fit`` for the one-call version.

    ``model``: a Hugging Face causal LM (wrapped in :class:`~flower_lite.rollout.LMPolicy`) or a policy object
    with the same methods (``module``, ``bind``, ``prompts``, ``log_probs``, ``sample``, ``item_distributions``).
    ``log_rewards_fn(reward_rows) -> log R_u [B, N]`` gives per-user rewards (None: the trie's own flows);
    ``eval_fn(policy) -> dict`` adds metrics to every evaluation; ``desc`` labels the progress bar (default:
    the objective's name).
    """

    def __init__(self, model, tokenizer, trie: Trie, config: TrainConfig, data: FitData, valid: FitData | None = None,
                 log_rewards_fn: Callable[[np.ndarray], Tensor] | None = None, eval_fn: Callable[[object], dict] | None = None,
                 output_dir: str | Path | None = None, progress: bool = True, desc: str | None = None):
        from accelerate import Accelerator

        self.config, self.data, self.valid = config, data, valid
        self.tokenizer, self.log_rewards_fn, self.eval_fn, self.progress = tokenizer, log_rewards_fn, eval_fn, progress
        self.desc = desc or config.objective.name  # the progress bar's label
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
        self.policy = LMPolicy(model, tokenizer) if isinstance(model, torch.nn.Module) else model
        self.log_z = torch.nn.Parameter(torch.zeros((), device=acc.device))  # TB: relative to the exact log Z
        params = [p for p in self.policy.module.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": config.lr, "weight_decay": config.weight_decay}]
        if config.objective.loss == "tb":
            groups.append({"params": [self.log_z], "lr": config.log_z_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lr_lambda(config)] * len(groups))
        self.model, self.optimizer = acc.prepare(self.policy.module, optimizer)
        self.policy.bind(self.model)
        self.schedule = OfflineSchedule(threshold=config.offline_threshold)
        self.step, self.best_valid, self.bad_evals, self.best_step = 0, math.inf, 0, None
        self.best_state: dict[str, Tensor] | None = None  # config.select_best: the weights of best_step
        self.history: list[dict] = []

    # ------------------------------------------------------------------ objective
    def _log_rewards(self, data: FitData, rows: np.ndarray) -> Tensor | None:
        if self.log_rewards_fn is None:
            return None
        keys = data.reward_rows[rows] if data.reward_rows is not None else rows
        return self.log_rewards_fn(keys).to(self.accelerator.device)

    def loss(self, data: FitData, rows: np.ndarray, mode: str = "offline", generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """The configured objective on ``rows`` of ``data``; returns (loss, {"sft": ..., "gfn": ...}).

        ``mode`` picks the GFlowNet trajectories: ``offline`` (the rows' targets), ``on_policy`` or
        ``catalog`` (both drawn with ``generator``). Validation always uses ``offline``.
        """
        objective, trie = self.config.objective, self.trie
        batch = self.policy.prompts([data.prompts[i] for i in rows])
        targets = trie.item_trajectories(torch.as_tensor(data.items[rows], device=trie.device))
        traj = targets
        if objective.gfn and mode == "catalog":  # exact flows make any catalogue title a valid off-policy trajectory
            items = torch.randint(trie.num_items, (len(rows),), generator=generator, device=generator.device)
            traj = trie.item_trajectories(items.to(trie.device))
        elif objective.gfn and mode == "on_policy":
            traj = self.policy.sample(batch, trie, self.config.temperature, generator, self.config.max_new_tokens)
        rewards = None
        if objective.gfn:
            rewards = path_rewards(trie, traj.tokens.to(trie.device), traj.lengths.to(trie.device),
                                   self._log_rewards(data, rows), objective.penalty, children=objective.loss == "distill")
        trajs = [targets] if traj is targets else [targets, traj]
        kids = None if rewards is None or rewards.children is None else [None] * (len(trajs) - 1) + [rewards.children.tokens]
        sets = self.policy.log_probs(batch, trajs, trie.eos_id, kids)
        sft = PathLogProbs(*sets[0][:2], targets.lengths.to(sets[0][0].device))
        gfn = PathLogProbs(*sets[-1][:2], traj.lengths.to(sets[-1][0].device), *sets[-1][2:])
        weight = None if data.weights is None else torch.as_tensor(data.weights[rows], dtype=sft.action.dtype, device=sft.action.device)
        return objective_loss(objective, sft, gfn, rewards, self.log_z, sft_weight=weight)

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
            out.update(self.eval_fn(self.policy))
        return out

    def run(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train until ``max_steps`` or early stopping; resumes from ``output_dir/checkpoint.pt`` if present.

        A checkpoint written with other settings is refused before anything is written. ``stop_at``
        interrupts the run after that step (with a checkpoint), as a crash would. Ctrl-C (SIGINT) lets the
        current step finish, writes a checkpoint and raises :class:`TrainingInterrupted`; the same call
        then resumes exactly (a second Ctrl-C stops at once). With ``config.select_best`` the model ends
        with the weights of the best validation loss. A small model trains on one thread (``threads.threads_for``).
        """
        cfg, acc = self.config, self.accelerator
        if self.output_dir is not None:
            if resume and (self.output_dir / "checkpoint.pt").exists():
                self.load_checkpoint(self.output_dir / "checkpoint.pt")
            if acc.is_main_process:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.output_dir / "config.json", json.dumps(asdict(cfg), indent=2))
                if self.step == 0:  # a fresh start: a log of an earlier attempt would be written twice
                    _truncate_log(self.output_dir / "log.jsonl", -1)
        stopped = False
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.desc, disable=not (self.progress and acc.is_main_process))
        with _deferred_interrupt() as interrupted, num_threads(threads_for(self.policy.module)):
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
                if interrupted():
                    bar.close()
                    raise self._interrupted()
        if stopped:  # early stopping: the bar ends full at the step the run stopped
            bar.total = self.step
            bar.refresh()
        bar.close()
        if self.output_dir is not None and acc.is_main_process and (self.step >= cfg.max_steps or stopped):
            final = self.output_dir / "final"
            _standalone(acc.unwrap_model(self.model)).save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        acc.wait_for_everyone()
        if cfg.select_best and self.best_state is not None:
            load_trainable(acc.unwrap_model(self.model), self.best_state)
        return TrainResult(acc.unwrap_model(self.model), self.history, self.output_dir, self.best_step, stopped)

    def _interrupted(self) -> TrainingInterrupted:
        """Checkpoint the last finished step and say where."""
        path = None
        if self.output_dir is not None:
            path = self.output_dir / "checkpoint.pt"
            self.save_checkpoint(path)
        return TrainingInterrupted(self.step, path)

    def _early_stopping(self, record: dict) -> bool:
        if "valid_loss" not in record:
            return False
        if record["valid_loss"] < self.best_valid:
            self.best_valid, self.bad_evals, self.best_step = record["valid_loss"], 0, self.step
            best = trainable_state(self.accelerator.unwrap_model(self.model), "cpu")
            if self.config.select_best:
                self.best_state = best
            if self.output_dir is not None and self.accelerator.is_main_process:
                _atomic_torch_save(best, self.output_dir / "best.pt")
            return False
        self.bad_evals += 1
        return self.config.patience is not None and self.bad_evals >= self.config.patience

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.output_dir is not None and self.accelerator.is_main_process:
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Path) -> None:
        """Atomically write parameters, optimizer, scheduler, log Z and loop state (main process only)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "model": trainable_state(self.accelerator.unwrap_model(self.model), "cpu"),
                "optimizer": self.optimizer.state_dict(),
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
        saved, now = _flat(state["config"]), _flat(asdict(self.config))
        changed = sorted(k for k in saved.keys() | now.keys() if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))
        if changed:
            raise ValueError(f"checkpoint {path} was written with other settings ({', '.join(changed)}); use another output_dir")
        try:
            load_trainable(self.accelerator.unwrap_model(self.model), state["model"])
        except ValueError as err:
            raise ValueError(f"checkpoint {path} does not match the model: {err}") from None
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


def trainable_state(model: torch.nn.Module, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """A detached copy of every trainable parameter of ``model`` (the bare model, not an ``accelerate`` wrapper),
    by name, on ``device`` (default: where each one is): what a checkpoint stores and :func:`load_trainable`
    puts back."""
    return {n: p.detach().to(device or p.device, copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (parameter name -> tensor, e.g. from :func:`trainable_state`) into ``model``'s parameters, in
    place and without gradients; parameters it does not name keep their values. ``ValueError`` naming the first
    unknown names before anything is copied."""
    unknown = set(state) - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)[:3]}")
    model.load_state_dict(state, strict=False)


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a checkpoint; ``FileNotFoundError`` if missing, ``ValueError`` naming the file if corrupt."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, pickled objects ...
        raise ValueError(f"corrupt checkpoint {path} ({type(err).__name__}: {err}): {_WAY_OUT}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "loop", "config"} <= set(state):
        raise ValueError(f"corrupt checkpoint {path} (missing entries): {_WAY_OUT}")
    return state


_WAY_OUT = "delete the file to train this run again from the start, or write the run to another folder"


def _standalone(model: torch.nn.Module) -> torch.nn.Module:
    """The model as a plain causal LM: LoRA adapters merged into a copy (the trained model is untouched), so
    ``final/`` loads with ``models.load_causal_lm`` like any checkpoint."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def _atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def _deferred_interrupt():
    """While the body runs, the first Ctrl-C (SIGINT) only sets a flag, read with the yielded ``interrupted()``,
    so the training loop stops at a step boundary; a second Ctrl-C raises ``KeyboardInterrupt`` at once.
    Outside the main thread (where signals cannot be caught) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"objective": {"loss": ...}}`` -> ``{"objective.loss": ...}``."""
    out = {}
    for k, v in config.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint's step (they will be written again)."""
    if path.exists():
        kept = [x for x in path.read_text().splitlines() if x and json.loads(x).get("step", 0) <= step]
        atomic_write_text(path, "".join(k + "\n" for k in kept))
