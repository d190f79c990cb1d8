"""A tabular policy on the trie: one logit per edge (T included) and one early-stop logit per state.

The toy of docs/method.md without any LLM: pi(a | s) is a softmax over the children of s, plus, at a
state that is not a complete title, an "early stop" (writing T too soon, an invalid output, as an
LLM can). So ``log pi(T | s)`` exists at every state, as Flower's objective needs. The item
distribution is exact: probability mass is pushed down the trie depth by depth.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import OFF_ITEM_PENALTY
from .trie import ROOT, Trie


class TabularPolicy(nn.Module):
    """pi(a | s) with a free logit per trie edge (``edge_logit[c]`` for the edge into node c)."""

    def __init__(self, trie: Trie, early_stop: bool = True, init_std: float = 0.0, seed: int = 0):
        super().__init__()
        self.trie = trie
        s = trie.structure
        gen = torch.Generator().manual_seed(seed)
        self.edge_logit = nn.Parameter(init_std * torch.randn(trie.num_nodes, generator=gen, dtype=torch.float64))
        self.stop_logit = nn.Parameter(init_std * torch.randn(trie.num_nodes, generator=gen, dtype=torch.float64))
        terminal = s.token == trie.eos_id
        complete = trie.stop_child(torch.arange(trie.num_nodes)) >= 0
        self.register_buffer("can_stop_early", ~terminal & ~complete & torch.tensor(early_stop))

    # ------------------------------------------------------------------ probabilities
    def log_probs(self) -> tuple[Tensor, Tensor]:
        """(log pi of the edge into each node [num_nodes] (0 at the root), log pi(early stop | s) [num_nodes])."""
        s = self.trie.structure
        child, par = torch.arange(1, self.trie.num_nodes), s.parent[1:]
        stop = torch.where(self.can_stop_early, self.stop_logit, torch.full_like(self.stop_logit, -math.inf))
        top = stop.detach().clone().scatter_reduce(0, par, self.edge_logit.detach()[child], "amax")
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = torch.exp(stop - top).index_add(0, par, torch.exp(self.edge_logit[child] - top[par]))
        lse = top + torch.where(total > 0, total, torch.ones_like(total)).log()  # 0 at nodes with no action
        log_edge = torch.cat([torch.zeros(1, dtype=lse.dtype), self.edge_logit[child] - lse[par]])
        return log_edge, torch.where(self.can_stop_early, stop - lse, torch.full_like(lse, -math.inf))

    def log_stop_probs(self, nodes: Tensor, log_edge: Tensor, log_early: Tensor) -> Tensor:
        """log pi(T | s) at any-shaped nodes: the T edge at a complete title, else the early stop."""
        stop_nodes = self.trie.stop_child(nodes)
        return torch.where(stop_nodes >= 0, log_edge[stop_nodes.clamp_min(0)], log_early[nodes.clamp_min(0)])

    def path_log_probs(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: (log pi(a_t | s_t) [batch, K], log pi(T | s_t) [batch, K + 1]) along trajectories."""
        log_edge, log_early = self.log_probs()
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        nodes = self.trie.walk(tokens, mask)
        action = torch.where(mask, log_edge[nodes[:, 1:].clamp_min(0)], torch.zeros((), dtype=log_edge.dtype))
        return action, self.log_stop_probs(nodes, log_edge, log_early)

    def state_log_probs(self) -> Tensor:
        """[num_nodes] log P(the policy visits s), pushed down the trie depth by depth."""
        log_edge, _ = self.log_probs()
        return self.trie.path_sums(log_edge)

    def outcome_log_probs(self) -> tuple[Tensor, Tensor]:
        """Exact distribution of outcomes: (log P(title) [num_titles], log P(early stop at s) [num_nodes])."""
        visit = self.state_log_probs()
        _, log_early = self.log_probs()
        return visit[self.trie.terminal_nodes], visit + log_early

    def title_distribution(self) -> tuple[Tensor, float]:
        """(P(title) [num_titles] in ``trie.terminal_nodes`` order, total invalid (early-stop) mass)."""
        with torch.no_grad():
            titles, early = self.outcome_log_probs()
        return titles.exp(), float(early.exp().sum())

    # ------------------------------------------------------------------ sampling
    def sample(self, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sample ``num`` trajectories; returns (title tokens [num, K] padded with -1, lengths [num]).

        Exact: an outcome (a title, or an early stop at some state) is drawn from the pushed-down
        distribution and its token path is read off the trie.
        """
        with torch.no_grad():
            titles, early = self.outcome_log_probs()
            outcome_nodes = torch.cat([self.trie.structure.parent[self.trie.terminal_nodes], torch.arange(self.trie.num_nodes)])
            probs = torch.cat([titles, early]).exp()
            pick = torch.multinomial(probs / probs.sum(), num, replacement=True, generator=generator)
            return self.trie.prefix_tokens(outcome_nodes[pick])


def flow_optimum(trie: Trie) -> TabularPolicy:
    """The policy pi(a | s) = r(a | s) = F(s·a) / F(s) (never stops early): optimum of SFT-on-target, TB, DB."""
    policy = TabularPolicy(trie, early_stop=False)
    with torch.no_grad():
        policy.edge_logit.copy_(torch.where(torch.isfinite(trie.log_flow), trie.log_flow, -1e4))
    return policy


def stop_anywhere_optimum(trie: Trie, penalty: float = OFF_ITEM_PENALTY) -> TabularPolicy:
    """Optimum of Flower's modified sub-trajectory balance: the flow of rewards R~ on every state.

    Stopping at an incomplete state s has reward R~(s) = F(s) / Z * exp(penalty), so the total flow
    is F~(s) = sum_c F~(c) + [s incomplete] R~(s), bottom-up, and pi(a | s) = F~(s·a) / F~(s).
    Titles are then sampled exactly in proportion to R; the invalid mass is of order exp(penalty).
    """
    policy = TabularPolicy(trie, early_stop=True)
    s = trie.structure
    with torch.no_grad():
        log_early = torch.where(policy.can_stop_early, trie.log_flow - trie.log_z + penalty, -math.inf)
        stop_reward = torch.where(s.token == trie.eos_id, trie.log_flow - trie.log_z, -math.inf).exp() + log_early.exp()
        flow = trie.subtree_sums(stop_reward)
        policy.edge_logit.copy_(flow.log().clamp_min(-1e4))
        policy.stop_logit.copy_(log_early.clamp_min(-1e4))
        policy.edge_logit[ROOT] = 0.0
    return policy
