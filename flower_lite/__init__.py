"""flower_lite: Flower (SIGIR 2025) for learners.

Item titles form a prefix tree (``Trie``) whose flows are exact, so every token gets an exact
reward ``r(a|s) = F(s·a) / F(s)``; GFlowNet objectives (``losses``) then teach a policy to produce
items in proportion to reward instead of amplifying popularity as SFT does.
"""
from .trie import Trie, chunk_boundaries

__all__ = ["Trie", "chunk_boundaries"]
__version__ = "0.1.0"
