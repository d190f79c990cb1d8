"""Files that are never half-written: every write goes to a temporary file beside the target, then a rename.

A reader (or a rerun after a crash or Ctrl-C) sees the old file or the new one, never a mixture.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` a temporary file beside ``path``, then rename it onto ``path``; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
