"""Exact range sums of non-negative values, a batch of rows at once: one bottom-up segment tree per row.

The per-user flows of the trie (``Trie.batch_log_flows``) are range sums of R_u over the depth-first
item order; a tail item's flow is tiny against Z_u, and differences of a cumulative sum would lose it.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["range_sums"]


def range_sums(values: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``sum(values[b, lo[b, q] : hi[b, q]])`` for non-negative ``values`` [batch, n] and index
    tensors ``lo``, ``hi`` [batch, Q] (0 <= lo <= hi <= n).

    A bottom-up segment tree per row (``tree[i] = tree[2i] + tree[2i + 1]``, leaves at ``[n, 2n)``,
    any n): a range is the sum of at most 2 log2(n) tree nodes, every one a sum of non-negative
    terms. Unlike differences of a cumulative sum, ``C[hi] - C[lo]``, which lose the relative
    precision of a range whose sum is small against the row's total (a tail item's reward against
    ``Z``), the result has a relative error of order log2(n) roundings. Cost: one pass to build (2n
    values per row), then 2 log2(n) gathers of [batch, Q].
    """
    batch, n = values.shape
    tree = values.new_zeros(batch, 2 * n)
    tree[:, n:] = values
    end = n
    while end > 1:  # parents [start, end) of children [2 start, 2 end), all already built
        start = (end + 1) // 2
        tree[:, start:end] = tree[:, 2 * start : 2 * end : 2] + tree[:, 2 * start + 1 : 2 * end : 2]
        end = start
    left, right = lo + n, hi + n
    total = values.new_zeros(lo.shape)
    for _ in range((2 * n).bit_length()):  # climb one level per step while left < right
        active = left < right
        odd_left, odd_right = active & (left % 2 == 1), active & (right % 2 == 1)
        right = right - odd_right.long()
        total += torch.where(odd_left, tree.gather(1, left.clamp(max=2 * n - 1)), 0.0)
        total += torch.where(odd_right, tree.gather(1, right.clamp(max=2 * n - 1)), 0.0)
        left, right = (left + odd_left.long()) // 2, right // 2
    return total
