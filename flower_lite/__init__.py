"""flower_lite: Flower (SIGIR 2025) for learners.

Item titles form a prefix tree (``Trie``) whose flows are exact, so every token gets an exact
reward ``r(a|s) = F(s·a) / F(s)``; GFlowNet objectives (``losses``) then teach a policy to produce
items in proportion to reward instead of amplifying popularity as SFT does.

Importing the package imports nothing heavy: ``Trie`` (and torch with it) loads on first use, so the
command line answers ``--help`` at once.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Trie", "Objective", "RewardSpec"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Trie":
        from .trie import Trie

        return Trie
    if name in ("Objective", "RewardSpec"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
