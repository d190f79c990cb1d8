"""The command line as a user meets it: every mistake is one line and exit code 2, and runs are never lost.

Each case runs ``python -m flower_lite`` in a subprocess, as a user's shell would.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY_FIT = ["fit", "--titles", "20", "--sample-size", "64", "--batch-size", "8", "--steps", "2"]


def flower_lite(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flower_lite", *args], capture_output=True, text=True, timeout=timeout,
                          env=environ)


def assert_user_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, no traceback, the error in one line (argparse's usage line may precede it)."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(("flower-lite: error:", "flower-lite fit: error:",
                                                       "flower-lite recommend: error:", "flower-lite compare: error:",
                                                       "flower-lite demo: error:")), out.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    out = flower_lite(*TINY_FIT, "--out", str(run))
    assert out.returncode == 0, out.stderr[-2000:]
    return run


@pytest.mark.parametrize("args, words", [
    (["fit", "--steps", "0"], ["--steps", "must be >= 1"]),
    (["fit", "--steps", "-5"], ["--steps", "must be >= 1"]),
    (["fit", "--titles", "-3"], ["--titles", "must be >= 1"]),
    (["fit", "--sample-size", "0"], ["--sample-size"]),
    (["fit", "--theta", "1.5"], ["--theta", "must be <= 1"]),
    (["fit", "--lr", "-1"], ["--lr", "must be >= 0"]),
    (["fit", "--loss", "ppo"], ["--loss", "invalid choice"]),
    (["fit", "--steps", "ten"], ["--steps", "whole number"]),
    (["recommend", "--run", "x", "--top", "0"], ["--top", "must be >= 1"]),
    (["recommend", "--run", "x", "--top", "-1"], ["--top", "must be >= 1"]),
    (["compare", "--variant", "mul_s"], ["--variant", "invalid choice"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] in ("fit", "recommend", "compare") else "")
def test_bad_numbers_and_choices_are_refused_by_the_parser(args, words):
    assert_user_error(flower_lite(*args), *words)


def test_a_missing_run_folder_says_how_to_make_one(tmp_path):
    for command in ("recommend", "evaluate"):
        line = assert_user_error(flower_lite(command, "--run", str(tmp_path / "nowhere")), "no run in")
        assert "flower-lite fit --out" in line


def test_missing_shared_data_names_the_environment_variable(tmp_path):
    line = assert_user_error(flower_lite("fit", "--data", "movies100", "--out", str(tmp_path / "r"),
                                         env={"FLOWER_LITE_DATA": str(tmp_path / "empty")}), "FLOWER_LITE_DATA")
    assert "shared=" not in line and not (tmp_path / "r").exists()
    assert_user_error(flower_lite("compare", "--data", str(tmp_path / "nowhere")), "unknown data set")


def test_a_sample_smaller_than_the_batch_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "r"
    assert_user_error(flower_lite("fit", "--sample-size", "8", "--batch-size", "32", "--out", str(run)),
                      "sample_size 8", "batch size 32")
    assert not run.exists()


def test_a_run_with_other_settings_is_refused_and_the_old_run_kept_byte_for_byte(finished_run):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    line = assert_user_error(flower_lite("fit", "--titles", "25", "--sample-size", "64", "--batch-size", "8", "--steps", "2",
                                         "--out", str(finished_run)), "other settings", "run.titles", "--out")
    assert "delete" in line
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_a_corrupt_model_file_is_named_with_the_way_out(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    weights = copy / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = assert_user_error(flower_lite("recommend", "--run", str(copy)), str(copy / "final"), "delete")
    assert "rerun" in line


def test_recommend_raises_the_beams_to_the_number_of_titles_asked_for(finished_run):
    out = flower_lite("recommend", "--run", str(finished_run), "--top", "15")
    assert out.returncode == 0, out.stderr[-2000:]
    ranked = [line for line in out.stdout.splitlines() if line.strip()[:3].strip().rstrip(".").isdigit()]
    assert len(ranked) == 15 and len(set(ranked)) == 15


def test_version_and_fast_help():
    out = flower_lite("--version")
    assert out.returncode == 0 and out.stdout.strip().startswith("flower-lite ")
    for command in ("fit", "compare", "demo", "recommend"):
        helped = flower_lite(command, "--help")
        assert helped.returncode == 0 and "(default:" in helped.stdout, command


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes_exactly(tmp_path):
    """SIGINT in the middle of a real ``fit``: exit 130 with the checkpoint's path; the rerun finishes and
    ends with the weights of an uninterrupted run; the log has every evaluation once."""
    from safetensors.torch import load_file
    import torch

    args = ["fit", "--titles", "20", "--sample-size", "64", "--batch-size", "8", "--steps", "30", "--eval-every", "3",
            "--save-every", "1000"]
    whole = flower_lite(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "flower_lite", *args, "--out", str(run)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = run / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)  # wait for steps 0, 3 and 6 to be logged
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "checkpoint.pt written; run the same command to resume" in stderr
    step = json.loads((run / "run.json").read_text())  # the run is recorded before training starts
    assert step["run"]["titles"] == 20 and (run / "checkpoint.pt").exists() and not (run / "final").exists()
    resumed = flower_lite(*args, "--out", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(tmp_path / "whole" / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(0, 31, 3)), steps
