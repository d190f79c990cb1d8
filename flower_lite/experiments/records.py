"""Results records: what a results command measured, with the command itself and where it ran.

``flower-lite compare --out X.json``, ``results/target_fit.py --out X.json`` and the RQ1 table write one
record each; ``results/tables.py`` renders the tables of ``results/README.md`` from them (and checks that
every table still equals its record), so a table and the command beside it cannot drift apart.
"""
from __future__ import annotations

import json
import platform
import shlex
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..files import atomic_write_text

__all__ = ["command_line", "environment", "write_record", "read_record"]


def command_line(program: str, argv: list[str]) -> str:
    """The shell command that reproduces a run: ``program`` and its arguments, quoted."""
    return " ".join([program, *map(shlex.quote, argv)])


def environment(seconds: float | None = None) -> dict:
    """Versions, CPU capability (torch's SIMD level: float results can differ between levels), threads, the
    process's peak resident memory so far and date."""
    import resource

    import torch

    versions = {}
    for dist in ("torch", "transformers", "tokenizers", "numpy", "accelerate", "peft"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {**versions, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "seconds": None if seconds is None else round(seconds, 1),
            "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_record(path: str | Path, command: str, rows: list[dict], started: float | None = None, **extra) -> Path:
    """Write ``{"command", "rows", "environment", **extra}`` to ``path`` atomically (``started``: a
    ``time.perf_counter()`` value, for the wall time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = None if started is None else time.perf_counter() - started
    record = {"command": command, "rows": rows, "environment": environment(seconds), **extra}
    return atomic_write_text(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def read_record(path: str | Path) -> dict:
    """A record written by :func:`write_record` (``ValueError`` naming the file when it is not one)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read the results record {path}: {err}") from None
    if not isinstance(record, dict) or not {"command", "rows", "environment"} <= set(record):
        raise ValueError(f"{path} is not a results record (command, rows, environment)")
    return record
