"""results/README.md and its commands stay in step.

Every table block of the README is generated from a record (``results/records/*.json``) that its command
wrote (``results/tables.py``); these tests check that no table was edited by hand or left behind by its
record, that every record's command is a valid command writing that record, and they rerun the cheapest
table's command and compare its numbers with the table.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_tables", ROOT / "results" / "tables.py")
tables = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tables  # dataclasses look their module up while the file runs
spec.loader.exec_module(tables)
RECORDS = sorted(p for p in (ROOT / "results" / "records").glob("*.json") if not p.name.endswith(".partial.json"))


def test_every_table_of_the_readme_equals_the_rendering_of_its_records():
    text = tables.README.read_text(encoding="utf-8")
    names = [m["name"] for m in tables.BLOCK.finditer(text)]
    assert set(names) == set(tables.TABLES), "every table spec has its block in the README, and no block lacks one"
    assert tables.check(text) == []


def test_the_check_catches_a_number_edited_by_hand():
    text = tables.README.read_text(encoding="utf-8")
    block = next(tables.BLOCK.finditer(text))
    body = block["body"]
    row = next(line for line in body.splitlines() if line.startswith("| ") and any(ch.isdigit() for ch in line))
    at = next(i for i, ch in enumerate(row) if ch.isdigit())
    changed = row[:at] + str((int(row[at]) + 1) % 10) + row[at + 1:]  # one digit of one number
    edited = text.replace(row, changed, 1)
    assert tables.check(edited) == [block["name"]]


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_record_was_written_by_a_valid_command_that_names_it(path, results_script):
    record = json.loads(path.read_text(encoding="utf-8"))
    argv = shlex.split(record["command"])
    out = argv[argv.index("--out") + 1]
    assert (ROOT / out).resolve() == path.resolve(), "the command writes this very record"
    if argv[0] == "flower-lite":
        from flower_lite.cli import build_parser

        build_parser().parse_args(argv[1:])  # raises SystemExit on an invalid command
    else:
        assert argv[0] == "python" and argv[1].startswith("results/"), argv
        module = results_script(Path(argv[1]).name)  # its main() runs only when called
        module.build_parser().parse_args(argv[2:])  # raises SystemExit on an invalid command
    assert record["rows"] and record["environment"]["torch"]
    script = (ROOT / "results" / "regenerate.sh").read_text(encoding="utf-8")
    names = [re.sub(r"\$\w+", "*", n) for n in re.findall(r"^\s*run (\S+) ", script, re.M)]  # a loop's $s: any
    assert any(fnmatch.fnmatchcase(path.stem, n) for n in names), "results/regenerate.sh reruns it"


SIMD = {  # torch's level -> (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA) that pin a run to it
    "DEFAULT": ("default", "SSE4_2", "SSE41"),
    "AVX2": ("avx2", "AVX2", "AVX2"),
    "AVX512": ("avx512", "AVX512", "AVX512_CORE"),
}
CROSS_LEVEL = {"coverage": 0, "default": 0.0}
"""Largest move of a number of the ``rq2_check`` command between SIMD levels, measured on one AVX-512 machine with
every level pinned (avx512, avx2, default): none, to the last digit. Only a machine that lacks the record's level
(no AVX2) runs unpinned, and must then agree within these (results/README.md, "Numbers on other machines")."""


def simd_pin(level: str) -> dict[str, str]:
    """Environment that runs torch, MKL and oneDNN at ``level`` (a record's ``cpu_capability``), or {} when this
    machine lacks it."""
    import torch

    order = list(SIMD)
    here = torch.backends.cpu.get_cpu_capability()
    if level not in SIMD or here not in SIMD or order.index(level) > order.index(here):
        return {}
    aten, mkl, onednn = SIMD[level]
    return {"ATEN_CPU_CAPABILITY": aten, "MKL_ENABLE_INSTRUCTIONS": mkl, "ONEDNN_MAX_CPU_ISA": onednn}


@pytest.mark.slow
def test_the_pipeline_check_table_is_reproduced_by_its_command(tmp_path):
    """Rerun ``rq2_check``'s command (about a minute) pinned to the record's SIMD level: its numbers are the table's
    exactly. A machine without that level runs at its own and must agree within :data:`CROSS_LEVEL`."""
    record = json.loads((ROOT / "results" / "records" / "rq2_check.json").read_text(encoding="utf-8"))
    argv = shlex.split(record["command"])
    argv[argv.index("--out") + 1] = str(tmp_path / "again.json")
    pin = simd_pin(record["environment"]["cpu_capability"])
    subprocess.run([sys.executable, "-m", "flower_lite", *argv[1:]], check=True, capture_output=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1", **pin}, timeout=900)
    again = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert [r["method"] for r in again["rows"]] == [r["method"] for r in record["rows"]]
    if pin:
        assert again["environment"]["cpu_capability"] == record["environment"]["cpu_capability"]
    for old, new in zip(record["rows"], again["rows"]):
        for key, value in old.items():
            if key == "method" or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
                continue
            tolerance = 0 if pin else CROSS_LEVEL.get(key, CROSS_LEVEL["default"])
            assert new[key] == pytest.approx(value, abs=tolerance), (old["method"], key, value, new[key])


def test_target_fit_script_over_seeds_records_each_seed_and_their_mean(tmp_path, monkeypatch, results_script):
    """``results/target_fit.py --seeds``: the comparison once per seed (the seed reaches the set-up and the training),
    every seed's rows kept, and each run's mean with its 95% t-interval; fewer than 2 distinct seeds are refused.
    The script runs on one torch thread, which its record states, and gives the caller's setting back (the
    conftest's check). The comparison itself is a stand-in whose KL is the seed plus a per-run offset."""
    module = results_script("target_fit.py")
    seeds_seen = []

    def fake_setup(data, seed, sasrec_config):
        seeds_seen.append((seed, sasrec_config.seed))
        return None, lambda: None, None

    def fake_fit(setup, new_model, trains, rows):
        seed = next(iter(trains.values())).seed
        runs = ["initial weights", *(n for name in trains for n in (name, name + ", reversed popularity"))]
        return {run: {"kl": seed + i, "kl_reverse": 2 * seed + i} for i, run in enumerate(runs)}

    monkeypatch.setattr(module.rq2, "rq2_setup", fake_setup)
    monkeypatch.setattr(module.rq2, "target_fit_comparison", fake_fit)
    out = tmp_path / "fit.json"
    monkeypatch.setattr(sys, "argv", ["target_fit.py", "--steps", "3", "--seeds", "0", "1", "2", "--out", str(out)])
    module.main()
    record = json.loads(out.read_text(encoding="utf-8"))
    assert seeds_seen == [(0, 0), (1, 1), (2, 2)] and list(record["per_seed"]) == ["0", "1", "2"]
    assert record["environment"]["torch_threads"] == 1
    for i, row in enumerate(record["rows"]):
        assert row["run"] == record["per_seed"]["0"][i]["run"] and row["seeds"] == 3
        assert row["kl"] == pytest.approx(1 + i) and row["kl_reverse"] == pytest.approx(2 + i)
        assert row["kl_lo"] < row["kl"] < row["kl_hi"]
    monkeypatch.setattr(sys, "argv", ["target_fit.py", "--seeds", "4", "4"])
    with pytest.raises(SystemExit, match="at least 2 different seeds"):
        module.main()
