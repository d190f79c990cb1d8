"""Two training processes on CPU (gloo) with ``accelerate launch --config_file configs/accelerate_cpu_2proc.yaml``.

``tests/distributed_worker.py`` trains the tiny model for a few Flower steps (teacher-forced trajectories) and
records, in every process, the rows of every micro-batch, the files the training code wrote and the final
parameters. It runs twice: under ``accelerate launch`` with 2 processes and a global batch of 8 (4 rows per
process), and as one plain process with the same global batch split into 2 micro-batches (``grad_accum=2``).

Why grad_accum=2 for the reference: the loss is a mean over each micro-batch (tokens for SFT, state pairs
for sub-trajectory balance), and DDP averages the processes' gradients, so 2 processes x 4 rows compute
(g(rows 0-3) + g(rows 4-7)) / 2, exactly what one process with 2 micro-batches of the same rows computes.
One process with a single micro-batch of 8 rows would weigh rows by their token / pair counts instead.
With the same micro-batches the parameters agree to rounding (bitwise on this machine); the tolerance is
1e-6. The whole module runs in 20 to 30 s on 2 busy cores (a timeout kills a stuck launch).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flower_lite.train import batch_indices

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate_cpu_2proc.yaml"
WORKER = ROOT / "tests" / "distributed_worker.py"
STEPS, BATCH, ROWS = 4, 8, 64  # ROWS: the worker's training rows
TIMEOUT_S = 150


def run(cmd: list[str], timeout: float) -> str:
    """Run ``cmd`` in its own process group; kill the whole group (launcher and workers) on timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])} ... did not finish within {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{out[-6000:]}"
    return out


def load(out: Path, rank: int) -> dict:
    return json.loads((out / "debug" / f"rank_{rank}.json").read_text())


def params(out: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(out / "debug" / f"{name}.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    single, multi = base / "single", base / "multi"
    args = ["--batch", str(BATCH), "--steps", str(STEPS)]
    run([sys.executable, str(WORKER), "--out", str(single), "--grad-accum", "2", *args], TIMEOUT_S)
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), str(WORKER),
         "--out", str(multi), "--on-policy-steps", "2", *args], TIMEOUT_S)
    return single, multi


def test_two_processes_run_on_cpu_with_gloo(runs):
    _, multi = runs
    ranks = [load(multi, r) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["num_processes"] == 2 and r["backend"] == "gloo" and r["distributed_type"].endswith("MULTI_CPU") for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert not (multi / "debug" / "rank_2.json").exists()


def test_final_parameters_match_one_process_with_the_same_global_batch(runs):
    single, multi = runs
    reference, rank0, rank1 = params(single, "params_0"), params(multi, "params_0"), params(multi, "params_1")
    assert load(single, 0)["largest_update"] > 1e-3  # training moved the parameters: the comparison means something
    for name, p in reference.items():
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the processes' replicas diverged"
        torch.testing.assert_close(rank0[name], p, rtol=0, atol=1e-6, msg=name)
    # the logged training loss is the global batch's (reduced over processes), as in one process
    logged = [r["loss"] for r in load(multi, 0)["history"] if "loss" in r]
    assert logged == pytest.approx([r["loss"] for r in load(single, 0)["history"] if "loss" in r], rel=1e-9)
    assert [r["loss"] for r in load(multi, 1)["history"] if "loss" in r] == logged


def test_only_the_main_process_writes_checkpoints_and_logs(runs):
    single, multi = runs
    rank0, rank1 = load(multi, 0), load(multi, 1)
    assert rank1["written"] == []
    assert {"config.json", "log.jsonl", "checkpoint.pt", "best.pt", "final"} <= set(rank0["written"])
    assert rank0["written"] == load(single, 0)["written"]  # the same files, as often, as one process writes
    lines = (multi / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 2, 4]  # one line per evaluation, not one per process
    assert sorted(p.name for p in (multi / "run").iterdir()) == ["best.pt", "checkpoint.pt", "config.json", "final", "log.jsonl"]
    assert torch.load(multi / "run" / "checkpoint.pt", weights_only=True)["loop"]["step"] == STEPS


def test_the_global_batch_is_sharded_without_overlap(runs):
    single, multi = runs
    shards = [{r["step"]: r["rows"] for r in load(multi, rank)["rows"]} for rank in (0, 1)]
    micro = {}
    for r in load(single, 0)["rows"]:
        micro.setdefault(r["step"], []).append(r["rows"])
    assert sorted(shards[0]) == sorted(shards[1]) == list(range(STEPS))
    for step in range(STEPS):
        first, second = shards[0][step], shards[1][step]
        assert len(first) == len(second) == BATCH // 2
        assert not set(first) & set(second)
        assert first + second == batch_indices(ROWS, BATCH, step, seed=0).tolist()  # contiguous shares, in order
        assert micro[step] == [first, second]  # one process's micro-batches are the two processes' shares


def test_on_policy_steps_keep_the_replicas_in_sync(runs):
    _, multi = runs
    a, b = params(multi, "params_on_policy_0"), params(multi, "params_on_policy_1")
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert torch.isfinite(a[name]).all()
    losses = [[r["loss"] for r in load(multi, rank)["on_policy_history"] if "loss" in r] for rank in (0, 1)]
    assert losses[0] == losses[1] and np.isfinite(losses[0]).all()


def test_a_launch_that_accelerate_does_not_see_is_refused(monkeypatch):
    """Several launched processes that each believe they are alone (no ACCELERATE_USE_CPU on a CPU machine)."""
    from flower_lite.models import make_tiny_model
    from flower_lite.prompts import title_trie
    from flower_lite.train import FitData, Trainer, TrainConfig

    titles = ["Alpha", "Beta", "Gamma"]
    model, tok = make_tiny_model(titles + ["Recommend"])
    trie = title_trie(tok, titles, [1.0, 1.0, 1.0])
    from accelerate import PartialState

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    PartialState()  # this pytest process is one process (initialised before WORLD_SIZE lies about it)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU"):
        Trainer(model, tok, trie, TrainConfig(batch_size=2), FitData(["Recommend"] * 4, [0, 1, 2, 0]), progress=False)
