"""Every script in bench/ runs at its ``--smoke`` size and ends with the JSON fields it promises.

Benches are found with a glob, so a new one is covered as soon as it exists (and fails until its fields are
listed in ``EXPECTED``). Nothing here looks at the timings: a smoke run only shows that the bench still runs
on the current code and reports what it says it reports.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted((ROOT / "bench").glob("*.py"))

# Fields of each bench's last stdout line. "a.b" is a nested field; "*" stands for every element of a list
# or every value of a dict (which must not be empty).
EXPECTED: dict[str, list[str]] = {
    "contention": ["command", "alone_s", "beside_busy_s", "beside_busy_ratio", "beside_torch_s", "beside_torch_ratio"],
    "decoding": ["items", "nodes", "beam_search_ratio", "beam_search_in_run_ratio", "sampling_ratio",
                 "sample_titles_ratio", "beam_search_vs_naive_speedup", "beam_search_vs_naive_processor_speedup"],
    "exact_distribution": ["results.*.titles_per_s", "results.*.time_per_title_ratio", "results.*.time_per_token_ratio",
                           "results.*.mass_on_titles"],
    "flows": ["rows.*.range_sums_ms", "rows.*.cumsum_ms", "rows.*.time_ratio", "rows.*.range_sums_max_rel_error",
              "rows.*.cumsum_max_rel_error"],
    "gpu_check": ["device", "train.*.sft.ms", "train.*.flower_tf.ratio_to_sft", "train.*.flower_op.ratio_to_sft",
                  "train.*.flower_op.tokens_per_s", "beam_search.prompts_per_s", "largest_batch", "skipped"],
    "memory_cpu": ["results.*.sft_peak_gib", "results.*.flower_tf_peak_gib", "results.*.flower_op_peak_gib",
                   "results.*.flower_tf_peak_ratio", "results.*.flower_op_peak_ratio"],
    "train_step": ["sft_ms", "flower_tf_ratio", "flower_tf_paired_ratio", "flower_op_ratio", "flower_op_paired_ratio",
                   "sft_tokens_per_s", "sampling_ms", "real_tokens", "breakdown_ms.*.total"],
    "trie_build": ["results.*.build_s", "results.*.bytes_per_node", "results.*.lookups_per_s", "results.*.sorted_speedup"],
    "row_trunk": ["rows", "tokens", "states_s", "states_tokens_per_s", "matmul_limit_tokens_per_s", "step_matmul_limit_s",
                  "sft_step_s",
                  "sft_full_step_s", "sft_step_ratio",
                  "distill_step_s", "distill_full_step_s", "distill_step_ratio", "generate_s_per_row", "beam_s_per_row",
                  "beam_ratio", "rankings_equal", "pair_states_shared_s", "pair_states_apart_s", "pair_states_ratio",
                  "rloo_step_s", "rloo_full_step_s", "rloo_step_ratio"],
    "trunk": ["step_cached_s", "step_full_s", "step_ratio", "bf16_ratio", "dist_ratio", "sample_ratio", "cache_s"],
}


def has_field(obj: object, path: list[str]) -> bool:
    """Whether ``obj`` has the nested field ``path`` (see ``EXPECTED``)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        items = list(obj.values()) if isinstance(obj, dict) else obj if isinstance(obj, list) else []
        return bool(items) and all(has_field(x, rest) for x in items)
    return isinstance(obj, dict) and head in obj and has_field(obj[head], rest)


def test_has_field_reads_nested_and_wildcard_fields():
    data = {"a": 1, "rows": [{"r": 1}, {"r": 2}], "by": {"x": {"r": 1}, "y": {}}, "empty": []}
    assert has_field(data, ["a"]) and has_field(data, ["rows", "*", "r"]) and has_field(data, ["by", "x", "r"])
    assert not has_field(data, ["b"]) and not has_field(data, ["by", "*", "r"]) and not has_field(data, ["empty", "*"])
    assert not has_field(data, ["a", "b"])


def test_every_listed_bench_exists():
    stale = sorted(set(EXPECTED) - {p.stem for p in BENCHES})
    assert BENCHES and not stale, f"EXPECTED lists benches that are not in bench/: {stale}"


@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.stem)
def test_bench_docstring_documents_smoke(script: Path):
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    assert doc and "--smoke" in doc, f"{script.name}: its module docstring must say what --smoke runs"


@pytest.mark.slow  # a few seconds per bench
@pytest.mark.parametrize("script", BENCHES, ids=lambda p: p.stem)
def test_bench_smoke_run_ends_with_its_json(script: Path):
    assert script.stem in EXPECTED, (f"{script.name} has no entry in EXPECTED of tests/test_benches.py: "
                                     "add the JSON fields its last line promises")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"{script.name} --smoke exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script.name} --smoke printed nothing"
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"{script.name} --smoke: the last stdout line is not JSON: {lines[-1][:300]!r}")
    assert isinstance(data, dict), f"{script.name} --smoke: the last line is JSON but not an object"
    assert data.get("bench") == script.stem, f"{script.name}: its JSON must name the bench (\"bench\": \"{script.stem}\")"
    missing = [k for k in EXPECTED[script.stem] if not has_field(data, k.split("."))]
    assert not missing, f"{script.name} --smoke: fields missing from its last line: {missing}"
