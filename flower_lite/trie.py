"""The title trie: items as token paths with exact flows (docs/method.md sections 2 and 3).

Item i's path is ``tokens(title_i) + [T]`` with T the termination token (``eos_id``). A state s is
a node of the prefix tree; its flow is ``F(s) = sum of R(i) over the items whose path passes through
s``, so ``F(root) = Z`` and the token reward ``r(a|s) = F(s·a) / F(s)`` telescopes along a path to
``R(i) / Z``. Nothing is learned here: every flow is exact.

Layout (all ``torch.int64`` / ``float64`` tensors, no Python objects per node):

* Nodes are numbered breadth-first, and within a depth by (parent, token). Hence the children of a
  node are a contiguous id range ``[child_lo[n], child_hi[n])`` sorted by token, and the edge keys
  ``parent * K + token`` are strictly increasing, so ``child(node, token)`` is one ``searchsorted``.
* Items are ordered depth-first (lexicographically by path, ties by item id). Every node covers the
  contiguous item range ``[lo, hi)``, so ``F(s)`` is a range sum of R in that order: flows for a batch
  of reward vectors (per-user rewards) are range sums over one segment tree per row (``range_sums``;
  ``C[hi] - C[lo]`` of a cumulative sum would lose small flows to cancellation).

Duplicate titles (several items, one token path) share one path and one terminal node: the
terminal's flow is the sum of their rewards, a policy that writes the title has written all of them,
and ``title_log_probs`` pools them; ``item_log_prob(i)`` is item i's own share ``R(i) / Z``.
A title that is a prefix of another is a complete item: its node has the child T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .range_sums import range_sums

ROOT = 0
NO_NODE = -1
SORTED_LOOKUP_MIN = 1 << 15
"""Batches of at least this many lookups are searched in key order: consecutive queries then walk the
sorted edge keys forward, one cache miss per lookup instead of one per level of a binary search over
all nodes (5x faster at 13M nodes on CPU); smaller batches skip the sort."""


@dataclass(frozen=True)
class TrieStructure:
    """Token structure of a trie; shared unchanged by every re-weighting (see ``Trie.reweight``)."""

    token: Tensor  # [num_nodes] token on the edge into the node (-1 at the root)
    parent: Tensor  # [num_nodes] parent node (-1 at the root)
    depth: Tensor  # [num_nodes] number of tokens in the prefix
    lo: Tensor  # [num_nodes] first item position (depth-first order) below the node
    hi: Tensor  # [num_nodes] one past the last item position below the node
    child_lo: Tensor  # [num_nodes] first child id
    child_hi: Tensor  # [num_nodes] one past the last child id
    edge_key: Tensor  # [num_nodes] parent * key_base + token, strictly increasing (-1 at the root)
    depth_start: Tensor  # [max_depth + 2] nodes of depth d are ids depth_start[d]..depth_start[d+1]-1
    item_order: Tensor  # [num_items] item id at each depth-first position
    item_terminal: Tensor  # [num_items] terminal node (after T) of item i
    paths: Tensor  # [num_items, max_len + 1] item i's path incl. T, right-padded with -1
    path_length: Tensor  # [num_items] path length of item i incl. T
    eos_id: int
    key_base: int  # larger than every token id

    def to(self, device: torch.device | str) -> "TrieStructure":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return TrieStructure(**moved)


@dataclass
class Trajectories:
    """Title tokens ``[batch, K]`` (0 past the end) and ``lengths [batch]`` (tokens before T): a batch of
    trajectories s_0 -> ... -> s_k on the trie, T implied after the last token."""

    tokens: Tensor
    lengths: Tensor

    @property
    def mask(self) -> Tensor:
        """[batch, K] True on title tokens."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :] < self.lengths[:, None]


def segment_log_softmax(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """log-softmax of ``values`` [E] within each segment (``segment`` [E] in 0..num_segments-1), e.g. the edges
    of :meth:`Trie.child_edges`: ``log q(a | s) = v(s·a) - log sum_b exp v(s·b)`` over the children b of s.

    Shifted by each segment's max (``scatter_reduce`` "amax"), in the dtype of ``values``; returns [E].
    """
    peak = values.new_full((num_segments,), -math.inf).scatter_reduce(0, segment, values, reduce="amax")
    total = values.new_zeros(num_segments).index_add_(0, segment, (values - peak[segment]).exp())
    return values - (peak + total.log())[segment]


def _check_weights(weights: Sequence[float] | np.ndarray | Tensor, num_items: int) -> Tensor:
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64) if not isinstance(weights, Tensor) else weights)
    w = w.detach().to(dtype=torch.float64, device="cpu")
    if w.ndim != 1 or w.numel() != num_items:
        raise ValueError(f"weights: expected {num_items} rewards (one per sequence), got shape {tuple(w.shape)}")
    if torch.isnan(w).any():
        raise ValueError(f"weights: NaN reward for item(s) {torch.nonzero(torch.isnan(w)).flatten()[:5].tolist()}")
    if torch.isinf(w).any():
        raise ValueError(f"weights: infinite reward for item(s) {torch.nonzero(torch.isinf(w)).flatten()[:5].tolist()}")
    if (w < 0).any():
        raise ValueError(f"weights: negative reward for item(s) {torch.nonzero(w < 0).flatten()[:5].tolist()}")
    if not (w > 0).any():
        raise ValueError("weights: all rewards are zero, so Z = 0 and no flow is defined")
    return w


def _padded_paths(sequences: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
    """Validate ``sequences`` and return paths ``seq + [T]`` as an int64 array [N, max_len + 1] padded with -1."""
    if len(sequences) == 0:
        raise ValueError("sequences: no sequences (empty catalogue)")
    if eos_id < 0:
        raise ValueError(f"eos_id must be a non-negative token id, got {eos_id}")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if (lengths == 0).any():
        raise ValueError(f"sequences: empty sequence for item {int(np.flatnonzero(lengths == 0)[0])}")
    flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(lengths.sum()))
    if (flat < 0).any():
        raise ValueError("sequences: negative token id")
    if (flat == eos_id).any():
        item = int(np.searchsorted(np.cumsum(lengths), int(np.flatnonzero(flat == eos_id)[0]), side="right"))
        raise ValueError(f"sequences: eos_id {eos_id} occurs inside the sequence of item {item}")
    paths = np.full((len(sequences), int(lengths.max()) + 1), NO_NODE, dtype=np.int64)
    rows = np.repeat(np.arange(len(sequences)), lengths)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    paths[rows, cols] = flat
    paths[np.arange(len(sequences)), lengths] = eos_id
    return paths


def _build_structure(paths: np.ndarray, eos_id: int) -> TrieStructure:
    """Build the node arrays from item paths [N, L] (padded with -1) in O(N L log N)."""
    n_items, width = paths.shape
    order = np.lexsort(paths.T[::-1])  # depth-first item order; stable, so duplicates keep id order
    a = paths[order]
    changed = np.ones_like(a, dtype=bool)  # does row r's prefix up to column d differ from row r-1's?
    changed[1:] = np.logical_or.accumulate(a[1:] != a[:-1], axis=1)
    valid = a != NO_NODE

    token, parent, depth, lo, hi = [np.array([NO_NODE])], [np.array([NO_NODE])], [np.array([0])], [np.array([0])], [np.array([n_items])]
    depth_start = [0, 1]
    prev_lo, prev_offset = np.array([0]), 0
    terminal_sorted = np.empty(n_items, dtype=np.int64)
    for d in range(width):
        starts = np.flatnonzero(changed[:, d] & valid[:, d])
        if starts.size == 0:
            break
        bounds = np.append(np.flatnonzero(changed[:, d]), n_items)
        offset = depth_start[-1]
        token.append(a[starts, d])
        parent.append(np.searchsorted(prev_lo, starts, side="right") - 1 + prev_offset)
        depth.append(np.full(starts.size, d + 1))
        lo.append(starts)
        hi.append(bounds[np.searchsorted(bounds, starts, side="right")])
        ends = np.flatnonzero(a[:, d] == eos_id)
        terminal_sorted[ends] = np.searchsorted(starts, ends, side="right") - 1 + offset
        depth_start.append(offset + starts.size)
        prev_lo, prev_offset = starts, offset

    token_, parent_ = np.concatenate(token), np.concatenate(parent)
    num_nodes = token_.size
    key_base = int(paths.max()) + 1
    edge_key = np.where(parent_ >= 0, parent_ * key_base + token_, NO_NODE)
    child_counts = np.bincount(parent_[1:], minlength=num_nodes)
    child_lo = np.empty(num_nodes, dtype=np.int64)
    child_lo[0] = 1
    child_lo[1:] = 1 + np.cumsum(child_counts)[:-1]
    item_terminal = np.empty(n_items, dtype=np.int64)
    item_terminal[order] = terminal_sorted
    t = torch.from_numpy
    return TrieStructure(
        token=t(token_), parent=t(parent_), depth=t(np.concatenate(depth)),
        lo=t(np.concatenate(lo)), hi=t(np.concatenate(hi)),
        child_lo=t(child_lo), child_hi=t(child_lo + child_counts), edge_key=t(edge_key),
        depth_start=t(np.asarray(depth_start, dtype=np.int64)), item_order=t(order.astype(np.int64)),
        item_terminal=t(item_terminal), paths=t(paths), path_length=t((paths != NO_NODE).sum(1)),
        eos_id=int(eos_id), key_base=key_base,
    )


class Trie:
    """A prefix tree of item token paths with exact flows ``F(s)`` for item rewards ``R(i)``.

    Build it with ``Trie.from_sequences``. All batched methods accept tensors on any device (after
    ``trie.to(device)``) and never loop in Python over the batch or the vocabulary.
    """

    def __init__(self, structure: TrieStructure, weights: Tensor):
        self.structure = structure
        self.weights = weights  # [num_items] float64 R(i), on the structure's device
        self.log_flow = self._log_flows(weights)  # [num_nodes] float64 log F(s)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], weights: Sequence[float], eos_id: int) -> "Trie":
        """Trie whose item i has path ``sequences[i] + [eos_id]`` and reward ``R(i) = weights[i]``.

        Raises ``ValueError`` naming the problem for: no sequences, an empty sequence, ``eos_id``
        inside a sequence, a negative token, a length mismatch, negative / NaN / infinite rewards
        and all-zero rewards. Zero rewards for some items are allowed (their flow is 0).
        """
        if len(weights) != len(sequences):
            raise ValueError(f"length mismatch: {len(sequences)} sequences but {len(weights)} weights")
        paths = _padded_paths(sequences, eos_id)
        w = _check_weights(weights, len(sequences))
        return cls(_build_structure(paths, eos_id), w)

    def reweight(self, weights: Sequence[float] | Tensor) -> "Trie":
        """Same structure, new rewards R(i): recomputes the flows without rebuilding the tree."""
        w = _check_weights(weights, self.num_items).to(self.device)
        return Trie(self.structure, w)

    def to(self, device: torch.device | str) -> "Trie":
        """The trie with every tensor on ``device`` (itself when already there)."""
        if torch.device(device) == self.device:
            return self
        return Trie(self.structure.to(device), self.weights.to(device))

    def _log_flows(self, weights: Tensor) -> Tensor:
        """log F(s) for every node, summed bottom-up depth by depth (exact up to float64 rounding)."""
        at_terminal = torch.zeros(self.num_nodes, dtype=torch.float64, device=weights.device)
        return self.subtree_sums(at_terminal.index_add_(0, self.structure.item_terminal, weights)).log()

    # ------------------------------------------------------------------ sizes
    @property
    def device(self) -> torch.device:
        return self.structure.token.device

    @property
    def num_items(self) -> int:
        return int(self.structure.item_order.numel())

    @property
    def num_nodes(self) -> int:
        return int(self.structure.token.numel())

    @property
    def eos_id(self) -> int:
        return self.structure.eos_id

    @property
    def max_path_length(self) -> int:
        """Longest item path, T included."""
        return int(self.structure.paths.shape[1])

    @property
    def log_z(self) -> float:
        """log Z = log F(root) = log sum_i R(i)."""
        return float(self.log_flow[ROOT])

    @property
    def terminal_nodes(self) -> Tensor:
        """[num_titles] the distinct terminal nodes (one per distinct title), ascending."""
        return torch.unique(self.structure.item_terminal)

    @property
    def item_title(self) -> Tensor:
        """[num_items] index of item i's title in ``terminal_nodes`` (duplicates share an index)."""
        return torch.searchsorted(self.terminal_nodes, self.structure.item_terminal)

    def title_items(self) -> list[list[int]]:
        """Item ids of every title index (``terminal_nodes`` order), ascending; duplicates share a title."""
        item_title = self.item_title.cpu()
        order = torch.argsort(item_title, stable=True)
        counts = torch.bincount(item_title, minlength=int(self.terminal_nodes.numel()))
        return [chunk.tolist() for chunk in torch.split(order, counts.tolist())]

    def title_first_item(self) -> Tensor:
        """[num_titles] the lowest item id of each title (the item a duplicate title stands for)."""
        item_title = self.item_title.cpu()
        first = torch.full((int(self.terminal_nodes.numel()),), self.num_items, dtype=torch.long)
        return first.scatter_reduce(0, item_title, torch.arange(self.num_items), reduce="amin")

    def title_labels(self, item_titles: Sequence[str]) -> list[str]:
        """The text of every title index (``terminal_nodes`` order) from the items' titles [num_items]."""
        if len(item_titles) != self.num_items:
            raise ValueError(f"item_titles: expected {self.num_items} titles (one per item), got {len(item_titles)}")
        return [item_titles[i] for i in self.title_first_item().tolist()]

    def nbytes(self) -> int:
        """Memory held by the tensors of the trie (structure and flows)."""
        tensors = [v for v in self.structure.__dict__.values() if isinstance(v, Tensor)] + [self.weights, self.log_flow]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ batched walking
    def child(self, nodes: Tensor, tokens: Tensor) -> Tensor:
        """Node ``s·a`` for states ``nodes`` and tokens ``tokens`` (same shape); -1 when a leaves the trie."""
        s = self.structure
        nodes, tokens = torch.broadcast_tensors(nodes.to(s.edge_key.device), tokens.to(s.edge_key.device))
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < s.key_base)
        key = torch.where(ok, nodes * s.key_base + tokens, torch.full_like(nodes, -2)).reshape(-1)  # -2: no edge has it
        order = None
        if key.numel() >= SORTED_LOOKUP_MIN:
            key, order = key.sort()
        idx = torch.searchsorted(s.edge_key, key).clamp_max(self.num_nodes - 1)
        found = torch.where(s.edge_key[idx] == key, idx, torch.full_like(idx, NO_NODE))
        if order is not None:
            found = torch.empty_like(found).index_copy_(0, order, found)
        return found.view(nodes.shape)

    def walk(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """States along token paths: ``[batch, time]`` tokens -> ``[batch, time + 1]`` nodes.

        ``out[:, 0]`` is the root and ``out[:, t + 1] = child(out[:, t], tokens[:, t])``; positions
        after a masked-out token, and every state after leaving the trie, are -1.
        """
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        out = torch.full((tokens.shape[0], tokens.shape[1] + 1), NO_NODE, dtype=torch.long, device=tokens.device)
        out[:, 0] = ROOT
        for t in range(tokens.shape[1]):
            nxt = self.child(out[:, t], tokens[:, t]).to(tokens.device)
            out[:, t + 1] = torch.where(mask[:, t], nxt, NO_NODE)
        return out

    def stop_child(self, nodes: Tensor) -> Tensor:
        """The child ``s·T`` of each state (-1 where s is not a complete title)."""
        return self.child(nodes, torch.full_like(nodes, self.eos_id))

    def allowed_mask(self, nodes: Tensor, vocab_size: int) -> Tensor:
        """Allowed next tokens of a batch of states: ``[batch]`` nodes -> bool ``[batch, vocab_size]``.

        A state -1 (off the trie) allows nothing.
        """
        rows, edges = self.child_edges(nodes)
        mask = torch.zeros(nodes.numel(), vocab_size, dtype=torch.bool, device=rows.device)
        mask[rows, self.structure.token[edges]] = True
        return mask

    def child_edges(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Every child edge of states ``nodes`` [b], flat: (segment [E], edges [E]), E the summed fan-out.

        Edge e leaves state ``nodes[segment[e]]`` into node ``edges[e]`` (its token: ``structure.token[edges[e]]``);
        edges are grouped by state in order, by token within a state (children are the id range
        ``child_lo..child_hi``). T's terminal is the child of a complete title; a terminal node and -1 (off the
        trie) have none. On the trie's device. The padded form is :meth:`children_of`.
        """
        s = self.structure
        nodes = nodes.to(s.child_lo.device)
        safe = nodes.clamp_min(0)
        lo = s.child_lo[safe]
        counts = torch.where(nodes >= 0, s.child_hi[safe] - lo, 0)
        segment = torch.repeat_interleave(counts)
        first = (counts.cumsum(0) - counts)[segment]  # the flat position of each state's first edge
        return segment, lo[segment] + torch.arange(segment.numel(), device=nodes.device) - first

    def children_of(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Children of states: nodes [*] -> (child nodes [*, C] padded with -1, real [*, C]: True on a child), C the
        largest fan-out among them; T's terminal is the child of a complete title, -1 (off the trie) has none.
        The flat form is :meth:`child_edges`."""
        s = self.structure
        safe = nodes.clamp_min(0)
        lo = s.child_lo[safe]
        count = torch.where(nodes >= 0, s.child_hi[safe] - lo, torch.zeros_like(lo))
        offsets = torch.arange(int(count.max()) if count.numel() else 0, device=nodes.device)
        mask = offsets < count[..., None]
        return torch.where(mask, lo[..., None] + offsets, torch.full_like(mask, NO_NODE, dtype=torch.long)), mask

    def prefix_tokens(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Token prefixes of states: ``[batch]`` nodes -> (tokens ``[batch, max_depth]`` padded with -1, lengths ``[batch]``)."""
        s = self.structure
        lengths = s.depth[nodes]
        width = int(lengths.max()) if nodes.numel() else 0
        tokens = torch.full((nodes.numel(), width), NO_NODE, dtype=torch.long, device=nodes.device)
        node = nodes.clone()
        for d in range(width - 1, -1, -1):  # climb one level per step, filling position d where depth > d
            here = lengths > d
            tokens[:, d] = torch.where(here, s.token[node], tokens[:, d])
            node = torch.where(here, s.parent[node], node)
        return tokens, lengths

    def node_trajectories(self, nodes: Tensor) -> Trajectories:
        """The token prefixes of states ``nodes`` [batch] as trajectories (T included for terminal nodes)."""
        tokens, lengths = self.prefix_tokens(nodes)
        return Trajectories(tokens.clamp_min(0), lengths)

    def title_trajectories(self, titles: Tensor) -> Trajectories:
        """The token paths of title indices ``titles`` [batch] (``terminal_nodes`` order), T excluded."""
        return self.node_trajectories(self.structure.parent[self.terminal_nodes[titles]])

    def item_trajectories(self, items: Tensor) -> Trajectories:
        """The title token paths of catalogue ``items`` [batch] (T excluded), cut to the longest one."""
        s = self.structure
        lengths = s.path_length[items] - 1
        width = int(lengths.max()) if items.numel() else 0
        tokens = s.paths[items, :width].clamp_min(0)
        mask = torch.arange(width, device=tokens.device)[None, :] < lengths[:, None]
        return Trajectories(torch.where(mask, tokens, torch.zeros_like(tokens)), lengths)

    # ------------------------------------------------------------------ sums along the tree
    def path_sums(self, edge_values: Tensor) -> Tensor:
        """Sums from the root down: ``edge_values`` [num_nodes] (the value of the edge into each node, unused at
        the root) -> [num_nodes], the sum over the edges of each node's path (0 at the root); e.g. log P(prefix)
        from log pi of every edge. Top-down, one depth at a time (``structure.depth_start``: a depth is an id
        range, parents before children); differentiable."""
        s = self.structure
        total = torch.zeros_like(edge_values)
        for d in range(1, len(s.depth_start) - 1):
            n = torch.arange(int(s.depth_start[d]), int(s.depth_start[d + 1]), device=edge_values.device)
            total.index_copy_(0, n, total[s.parent[n]] + edge_values[n])
        return total

    def subtree_sums(self, node_values: Tensor) -> Tensor:
        """Sums from the leaves up: ``node_values`` [num_nodes] -> [num_nodes], the sum over each node's subtree
        (itself included); e.g. the flows F(s) from R(i) at the terminal nodes. Bottom-up, one depth at a time."""
        s = self.structure
        total = node_values.clone()
        for d in range(len(s.depth_start) - 2, 0, -1):
            n = torch.arange(int(s.depth_start[d]), int(s.depth_start[d + 1]), device=node_values.device)
            total.index_add_(0, s.parent[n], total[n])
        return total

    # ------------------------------------------------------------------ flows and token rewards
    def log_flows_at(self, nodes: Tensor) -> Tensor:
        """log F(s) at any-shaped node tensor (-inf at -1)."""
        vals = self.log_flow[nodes.clamp_min(0)]
        return torch.where(nodes >= 0, vals, torch.full_like(vals, -math.inf))

    def log_token_rewards(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """log r(a_t | s_t) = log F(s_t·a_t) - log F(s_t) for ``[batch, time]`` tokens.

        -inf where a token leaves the trie; 0 at masked-out positions.
        """
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        nodes = self.walk(tokens, mask)
        log_f = self.log_flows_at(nodes)
        inside = (nodes[:, 1:] >= 0) & (log_f[:, :-1] > -math.inf)  # a zero-flow state gives every token -inf
        step = torch.where(inside, log_f[:, 1:] - log_f[:, :-1], torch.full_like(log_f[:, 1:], -math.inf))
        return torch.where(mask, step, torch.zeros_like(step))

    def batch_log_flows(self, log_rewards: Tensor, nodes: Tensor) -> Tensor:
        """Per-user flows: ``log F_u(s)`` for rewards ``log R_u`` [batch, num_items] at nodes [batch, S].

        ``F_u(s)`` is the sum of ``R_u`` over the node's depth-first item range ``[lo, hi)``
        (:func:`range_sums`: sums of non-negative terms only, so every flow, however small against
        ``Z_u``, has a relative error of order log2(num_items) float64 roundings), in float64 after
        subtracting each row's max. Returns [batch, S] float64; -inf at node -1 and where the flow is 0.
        """
        s = self.structure
        log_rewards = log_rewards.to(torch.float64)
        shift = log_rewards.max(dim=1, keepdim=True).values
        r = (log_rewards - shift).exp()[:, s.item_order.to(log_rewards.device)]
        safe = nodes.clamp_min(0).to(log_rewards.device)
        flow = range_sums(r, s.lo[safe], s.hi[safe])
        return torch.where(nodes >= 0, flow.log() + shift, torch.full_like(flow, -math.inf))

    # ------------------------------------------------------------------ single-path conveniences
    def node_of(self, prefix: Sequence[int]) -> int:
        """Node of a token prefix (-1 if the prefix is not in the trie)."""
        if len(prefix) == 0:
            return ROOT
        return int(self.walk(torch.tensor([list(prefix)], dtype=torch.long, device=self.device))[0, -1])

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Sorted tokens a with ``prefix·a`` in the trie ([] for a prefix outside the trie)."""
        node = self.node_of(prefix)
        if node < 0:
            return []
        s = self.structure
        return s.token[int(s.child_lo[node]) : int(s.child_hi[node])].tolist()

    def log_token_reward(self, prefix: Sequence[int], token: int) -> float:
        """log r(a | s) = log F(s·a) - log F(s) for s = ``prefix`` (-inf when a leaves the trie)."""
        node = self.node_of(prefix)
        if node < 0:
            return -math.inf
        nxt = self.child(torch.tensor([node], device=self.device), torch.tensor([token], device=self.device))
        return float(self.log_flows_at(nxt)[0] - self.log_flow[node])

    def item_log_prob(self, item: int) -> float:
        """log R(i) - log Z: the probability that a policy with pi = r gives item i's own reward share."""
        if not 0 <= item < self.num_items:
            raise ValueError(f"unknown item {item}: the trie has items 0..{self.num_items - 1}")
        return float(self.weights[item].log() - self.log_flow[ROOT])

    def item_log_probs(self) -> Tensor:
        """[num_items] log R(i) - log Z."""
        return self.weights.log() - self.log_flow[ROOT]

    def title_log_probs(self) -> Tensor:
        """[num_titles] log F(terminal) - log Z per distinct title (duplicate items pooled)."""
        return self.log_flow[self.terminal_nodes] - self.log_flow[ROOT]

    def item_path(self, item: int) -> list[int]:
        """Item i's token path, T included."""
        return self.structure.paths[item, : int(self.structure.path_length[item])].tolist()
