"""Exact item distributions of a causal LM after one prompt (docs/method.md 6): no sampling noise.

* :func:`exact_item_distribution`: the unconstrained model's probability of writing every title, by
  teacher forcing each title path (the rest is the invalid mass: outputs that are no catalogue title).
* :func:`constrained_item_distribution`: the exact distribution of trie-constrained sampling
  (:func:`flower_lite.decoding.sample_titles`), renormalised over the trie children at every state.

Titles are indexed like ``trie.terminal_nodes`` (duplicate titles pooled).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .prompts import encode_prompts, model_device
from .rollout import teacher_forced_log_probs, teacher_forced_logits
from .threads import model_threads
from .trie import Trie, segment_log_softmax

__all__ = ["exact_item_distribution", "constrained_item_distribution", "stop_log_probs", "stop_summary"]


def _prompt_batch(tokenizer, prompt: str, rows: int, device: torch.device) -> dict[str, Tensor]:
    one = encode_prompts(tokenizer, [prompt])
    return {k: v.expand(rows, -1).to(device) for k, v in one.items()}


@model_threads
@torch.no_grad()
def exact_item_distribution(
    model: torch.nn.Module, tokenizer, prompt: str, trie: Trie, batch_size: int = 256
) -> tuple[Tensor, float]:
    """The unconstrained model's probability of writing each title (then T) after ``prompt``.

    Every title path (T included) is teacher-forced with :func:`teacher_forced_log_probs`, in batches
    of ``batch_size`` titles; ``p(title) = exp(sum_t log pi(a_t | s_t))``.

    Returns:
        p_title: float64 ``[num_titles]`` in ``trie.terminal_nodes`` order (duplicates pooled:
            the model writes one string for all of them).
        invalid_mass: ``1 - p_title.sum()``, the mass on outputs that are not catalogue titles
            (including ones that never write T).
    """
    trie = trie.to("cpu")
    device = model_device(model)
    paths = trie.node_trajectories(trie.terminal_nodes)  # title tokens and T
    tokens, mask = paths.tokens, paths.mask
    log_p = []
    for start in range(0, tokens.shape[0], batch_size):
        ids, m = tokens[start : start + batch_size].to(device), mask[start : start + batch_size].to(device)
        prompt_batch = _prompt_batch(tokenizer, prompt, ids.shape[0], device)
        log_pi, _ = teacher_forced_log_probs(model, **prompt_batch, continuation_ids=ids, continuation_mask=m)
        log_p.append(log_pi.double().sum(-1).cpu())
    p_title = torch.cat(log_p).exp()
    return p_title, float(1.0 - p_title.sum())


def _state_logits(model: torch.nn.Module, tokenizer, prompt: str, trie: Trie, batch_size: int):
    """Yield ``(nodes [n], logits [n, V])``: the logits after ``prompt`` at every state s of the trie (terminal
    nodes excepted), each state once, from teacher-forced passes over the *maximal* titles (a title that is
    not a token prefix of another one: the states of the others lie on their paths), ``batch_size`` at a time."""
    s = trie.structure
    device = model_device(model)
    terminals = trie.terminal_nodes
    maximal = terminals[(s.child_hi - s.child_lo)[s.parent[terminals]] == 1]
    paths = trie.node_trajectories(s.parent[maximal])  # titles without T: the last state's children hold T
    tokens, mask = paths.tokens, paths.mask
    done = torch.zeros(trie.num_nodes, dtype=torch.bool)
    for start in range(0, tokens.shape[0], batch_size):
        ids, m = tokens[start : start + batch_size], mask[start : start + batch_size]
        states = trie.walk(ids, m)  # [b, w + 1]; state t exists for t <= title length
        batch = _prompt_batch(tokenizer, prompt, ids.shape[0], device)
        logits = teacher_forced_logits(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"], ids.to(device), m.to(device))
        logits = logits.flatten(0, 1)  # [b * (w + 1), V], on the model's device
        flat = states.flatten()
        position = torch.arange(flat.numel())
        keep = flat >= 0
        first = torch.full((trie.num_nodes,), flat.numel(), dtype=torch.long)
        first.scatter_reduce_(0, flat[keep], position[keep], reduce="amin")
        nodes = torch.nonzero((first < flat.numel()) & ~done).flatten()  # distinct new states in this batch
        done[nodes] = True
        yield nodes, logits[first[nodes].to(device)]


def state_title_log_probs(trie: Trie, state_logits, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(log p_title, log q_title), float64 ``[num_titles]`` in ``trie.terminal_nodes`` order, from ``state_logits``: an
    iterable of ``(nodes [n], logits [n, V])`` that gives every non-terminal state of ``trie`` once. Every edge gets
    log pi (the full-vocabulary log-softmax) and log q (softmax of ``logits / temperature`` over the state's trie
    children); both are summed top-down (:meth:`Trie.path_sums`). Differentiable; on the logits' device."""
    s = trie.structure
    edge_pi = edge_q = None
    for nodes, logits in state_logits:
        device = logits.device
        if edge_pi is None:
            edge_pi = torch.zeros(trie.num_nodes, dtype=torch.float64, device=device)  # log pi(token[n] | parent[n])
            edge_q = torch.zeros_like(edge_pi)  # log q(token[n] | parent[n]), renormalised over the siblings
        seg, edges = trie.child_edges(nodes.to(trie.device))
        tokens, seg, edges = s.token[edges].to(device), seg.to(device), edges.to(device)
        vals = logits[seg, tokens].double()
        edge_pi = edge_pi.index_put((edges,), vals - logits.logsumexp(-1).double()[seg])
        edge_q = edge_q.index_put((edges,), segment_log_softmax(vals / temperature, seg, nodes.numel()))
    trie = trie.to(edge_pi.device)
    return trie.path_sums(edge_pi)[trie.terminal_nodes], trie.path_sums(edge_q)[trie.terminal_nodes]


def title_log_probs(model: torch.nn.Module, tokenizer, prompt: str, trie: Trie, temperature: float = 1.0,
                    batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Exact title log-probabilities after ``prompt``, with gradients when enabled: (log p_title, the unconstrained
    model's log-probability of writing each title then T; log q_title, trie-constrained sampling at
    ``temperature``), float64 ``[num_titles]`` in ``trie.terminal_nodes`` order, on the model's device: every state's
    logits once (``_state_logits``), then :func:`state_title_log_probs`. The whole-model twin of
    :meth:`flower_lite.trunk.CachedTrunkPolicy.title_log_probs`."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    trie = trie.to("cpu")
    return state_title_log_probs(trie, _state_logits(model, tokenizer, prompt, trie, batch_size), temperature)


@model_threads
@torch.no_grad()
def constrained_item_distribution(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    trie: Trie,
    batch_size: int = 256,
    temperature: float = 1.0,
) -> Tensor:
    """Exact title distribution of constrained sampling (``decoding.sample_titles``) after ``prompt``.

    At every state s the policy is ``q(a | s) = softmax(logits(s) / temperature)`` renormalised over
    the trie children of s, and ``p(title) = prod_t q(a_t | s_t)`` (T included); the result sums to 1.

    Cost: one teacher-forced forward pass per maximal title, in batches of ``batch_size``; each distinct
    trie node is normalised once (``_state_logits``), ``log q`` of every edge is stored per child node,
    and the title log-probs follow top-down, depth by depth. Memory: the batch's logits,
    ``batch_size x (max path + 1) x V`` floats.

    Returns float64 ``[num_titles]`` in ``trie.terminal_nodes`` order.
    """
    return title_log_probs(model, tokenizer, prompt, trie, temperature, batch_size)[1].exp().cpu()


@model_threads
@torch.no_grad()
def stop_log_probs(model: torch.nn.Module, tokenizer, prompt: str, trie: Trie, batch_size: int = 256) -> Tensor:
    """log pi(T | s) of the unconstrained model at every state s after ``prompt``: float64 [num_nodes] (NaN at
    terminal nodes, which are no states). At a complete title Flower's SubTB optimum needs log r(T | s), at an
    incomplete one its penalty (-15); :func:`stop_summary` summarises the two groups."""
    trie = trie.to("cpu")
    out = torch.full((trie.num_nodes,), math.nan, dtype=torch.float64)
    for nodes, logits in _state_logits(model, tokenizer, prompt, trie, batch_size):
        logits = logits.double()
        out[nodes] = (logits[:, trie.eos_id] - logits.logsumexp(-1)).cpu()
    return out


def stop_summary(trie: Trie, log_stop: Tensor) -> dict:
    """Mean, min and max of log pi(T | s) [num_nodes] over the complete titles and over the incomplete states."""
    states = ~torch.isnan(log_stop)
    complete = states & (trie.stop_child(torch.arange(trie.num_nodes)) >= 0)
    out = {}
    for name, sel in (("complete", complete), ("internal", states & ~complete)):
        v = log_stop[sel]
        out |= {f"{name}_mean": float(v.mean()), f"{name}_min": float(v.min()), f"{name}_max": float(v.max()),
                f"{name}_states": int(sel.sum())}
    return out
