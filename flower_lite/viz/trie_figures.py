"""Figures of the title trie: the trie itself (flows and token rewards), the rewards along one path, the telescoping table."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from ..trie import ROOT, Trie
from .style import CONTINUOUS_SCALE, END_LABEL, OKABE_ITO, OTHER_LABEL, TARGET_COLOR


# ---------------------------------------------------------------------------- the trie
def _label(token: int, eos_id: int, token_text: Callable[[int], str]) -> str:
    return END_LABEL if token == eos_id else token_text(token)


def trie_figure(
    trie: Trie,
    token_text: Callable[[int], str],
    max_depth: int = 3,
    max_children: int = 12,
    kind: str = "icicle",
    title: str | None = None,
) -> go.Figure:
    """Icicle (or sunburst) of the trie's top ``max_depth`` levels.

    Box size = flow F(s) (``branchvalues="total"``, so a node's box is the sum of its children's),
    colour = log r(a|s) = log F(s·a) - log F(s) (0 at the root). Hover shows the token text, the
    prefix, F(s)/Z and r(a|s). The termination token T is labelled ``END_LABEL`` ("T (end)").

    Per node only the ``max_children`` largest children (by flow) are drawn; the others are pooled
    into one "(other)" box whose size is their summed flow, so sizes still add up to F(s) and the
    root's value is Z. Click a box to drill down (plotly's icicle/sunburst zoom).

    Trace arrays (``ids``, ``parents``, ``values`` ...) are in breadth-first order; ``customdata``
    holds ``[node id (-1 for "(other)"), F(s)/Z, r(a|s)]`` per box.
    """
    if kind not in ("icicle", "sunburst"):
        raise ValueError(f"kind must be 'icicle' or 'sunburst', got {kind!r}")
    if max_depth < 1 or max_children < 1:
        raise ValueError("max_depth and max_children must be >= 1")
    s = trie.structure
    flow = (trie.log_flow - trie.log_z).exp().cpu().numpy()  # F(s) / Z
    z = math.exp(trie.log_z)
    child_lo, child_hi = s.child_lo.cpu().numpy(), s.child_hi.cpu().numpy()
    tokens = s.token.cpu().numpy()
    eos = trie.eos_id

    ids, parents, labels, prefixes, share, log_r, node_of = ["n0"], [""], ["root"], [""], [1.0], [0.0], [ROOT]
    frontier = [(ROOT, 0, "")]  # (node, index in the arrays, prefix text)
    for _depth in range(max_depth):
        nxt = []
        for node, idx, prefix in frontier:
            kids = np.arange(child_lo[node], child_hi[node])
            if kids.size == 0:
                continue
            kids = kids[np.argsort(-flow[kids], kind="stable")]
            shown, pooled = kids[:max_children], kids[max_children:]
            for c in shown:
                text = _label(int(tokens[c]), eos, token_text)
                pre = prefix + ("" if tokens[c] == eos else token_text(int(tokens[c])))
                ids.append(f"n{c}")
                parents.append(ids[idx])
                labels.append(text)
                prefixes.append(pre + (" T" if tokens[c] == eos else ""))
                share.append(float(flow[c]))
                log_r.append(float(np.log(flow[c]) - np.log(flow[node])) if flow[c] > 0 else -np.inf)
                node_of.append(int(c))
                nxt.append((int(c), len(ids) - 1, pre))
            if pooled.size:
                pooled_share = float(flow[pooled].sum())
                ids.append(f"other{node}")
                parents.append(ids[idx])
                labels.append(f"{OTHER_LABEL} ×{pooled.size}")
                prefixes.append(prefix + " …")
                share.append(pooled_share)
                log_r.append(float(np.log(pooled_share) - np.log(flow[node])) if pooled_share > 0 else -np.inf)
                node_of.append(-1)
        frontier = nxt

    # Values in reward units, summed bottom-up over the drawn children, so that every parent is
    # exactly the sum of its boxes (plotly drops a "total" parent smaller than its children).
    values = np.array(share) * z
    index = {k: i for i, k in enumerate(ids)}
    has_kids = np.zeros(len(ids), dtype=bool)
    for i in range(len(ids) - 1, 0, -1):
        has_kids[index[parents[i]]] = True
    summed = np.where(has_kids, 0.0, values)
    for i in range(len(ids) - 1, 0, -1):
        summed[index[parents[i]]] += summed[i]
    finite = np.array(log_r)
    color_floor = float(finite[np.isfinite(finite)].min()) if np.isfinite(finite).any() else -1.0
    colors = np.where(np.isfinite(finite), finite, color_floor)
    r_values = np.exp(np.array(log_r))
    custom = np.stack([np.array(node_of, dtype=float), np.array(share), r_values], axis=1)
    hover = [
        f"<b>{lab!r}</b><br>prefix: {pre!r}<br>F(s)/Z = {sh:.4g}<br>r(a|s) = {r:.4g}<br>log r(a|s) = {lr:.3f}"
        for lab, pre, sh, r, lr in zip(labels, prefixes, share, r_values, log_r)
    ]
    trace_cls = go.Icicle if kind == "icicle" else go.Sunburst
    trace = trace_cls(
        ids=ids, parents=parents, labels=labels, values=summed, branchvalues="total",
        customdata=custom, hovertext=hover, hoverinfo="text",
        marker=dict(colors=colors, colorscale=CONTINUOUS_SCALE, cmax=0.0, cmin=min(color_floor, -1e-3),
                    showscale=True, colorbar=dict(title="log r(a|s)")),
        textinfo="label", sort=False,  # children stay largest-first, "(other)" last
    )
    fig = go.Figure(trace)
    fig.update_layout(
        title=title or (f"Title trie: box size = flow F(s), colour = log token reward "
                        f"(top {max_depth} levels, ≤ {max_children} children each; Z = {z:.4g})"),
        margin=dict(t=60, l=10, r=10, b=10), height=520,
    )
    return fig


def token_rewards_figure(
    trie: Trie, prefix: Sequence[int], token_text: Callable[[int], str], max_children: int = 20
) -> go.Figure:
    """Bars of r(a|s) = F(s·a)/F(s) over the children a of the state s = ``prefix`` (they sum to 1).

    Largest first; beyond ``max_children`` the rest is pooled into one "(other)" bar. T is ``END_LABEL``.
    One trace; ``customdata`` holds the token ids (-1 for "(other)").
    """
    node = trie.node_of(prefix)
    if node < 0:
        raise ValueError(f"prefix {list(prefix)} is not a state of the trie")
    s = trie.structure
    kids = torch.arange(int(s.child_lo[node]), int(s.child_hi[node]))
    if kids.numel() == 0:
        raise ValueError(f"prefix {list(prefix)} is a leaf (after T): it has no children")
    r = (trie.log_flow[kids] - trie.log_flow[node]).exp().cpu().numpy()
    order = np.argsort(-r, kind="stable")
    shown, pooled = order[:max_children], order[max_children:]
    toks = s.token[kids].cpu().numpy()
    labels = [repr(_label(int(toks[k]), trie.eos_id, token_text)) for k in shown]
    values, ids = list(r[shown]), [int(toks[k]) for k in shown]
    if pooled.size:
        labels.append(f"{OTHER_LABEL} ×{pooled.size}")
        values.append(float(r[pooled].sum()))
        ids.append(-1)
    state = "".join(token_text(t) for t in prefix) if len(prefix) else "root"
    colors = [OKABE_ITO[4] if t == trie.eos_id else OKABE_ITO[3] for t in ids]
    fig = go.Figure(go.Bar(x=labels, y=values, customdata=ids, marker_color=colors, name="r(a|s)",
                           hovertemplate="a = %{x}<br>r(a|s) = %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"Token rewards at s = {state!r}: Σ_a r(a|s) = {float(np.sum(values)):.6f}",
                      height=360, showlegend=False, margin=dict(t=60, l=60, r=20, b=80))
    fig.update_xaxes(title=f"next token a ({END_LABEL} = stop here)")
    fig.update_yaxes(title="r(a|s) = F(s·a)/F(s)", rangemode="tozero")
    return fig


# ---------------------------------------------------------------------------- telescoping
def telescoping_table(
    trie: Trie, items: Sequence[int] | None = None, token_text: Callable[[int], str] | None = None
) -> list[dict]:
    """Per item, the product of token rewards along its path (T included) against R(i)/Z.

    Returns one dict per item with ``item``, ``title`` (decoded when ``token_text`` is given),
    ``tokens`` (path length incl. T), ``prod_r`` = prod_t r(a_t|s_t), ``title_share`` =
    F(title·T)/Z, ``item_share`` = R(i)/Z, ``duplicates`` (items sharing the path) and
    ``abs_err`` = |prod_r - title_share|. The product telescopes to F(title·T)/Z, which is R(i)/Z
    for a unique title and the *pooled* share of all its items for a duplicate title.
    ``items=None`` means every item (one batched walk, no Python loop over tokens). An item of zero
    reward under a zero-flow prefix has ``prod_r`` = 0 (the step into that prefix has r = 0).
    """
    s = trie.structure
    items_t = torch.arange(trie.num_items) if items is None else torch.as_tensor(list(items), dtype=torch.long)
    paths = s.paths[items_t.to(s.paths.device)]
    mask = paths >= 0
    log_r = trie.log_token_rewards(paths.clamp_min(0), mask)
    log_r = torch.where(torch.isnan(log_r), torch.zeros_like(log_r), log_r)  # 0/0 below a zero-flow node
    prod = log_r.sum(1).exp().cpu().numpy()
    term = s.item_terminal[items_t]
    title_share = (trie.log_flow[term] - trie.log_z).exp().cpu().numpy()
    item_share = trie.item_log_probs()[items_t].exp().cpu().numpy()
    dup = torch.bincount(s.item_terminal, minlength=trie.num_nodes)[term].cpu().numpy()
    lengths = s.path_length[items_t].cpu().numpy()
    rows = []
    for j, i in enumerate(items_t.tolist()):
        row = {"item": i}
        if token_text is not None:
            row["title"] = "".join(token_text(t) for t in trie.item_path(i)[:-1])
        row.update(tokens=int(lengths[j]), prod_r=float(prod[j]), title_share=float(title_share[j]),
                   item_share=float(item_share[j]), duplicates=int(dup[j]),
                   abs_err=float(abs(prod[j] - title_share[j])))
        rows.append(row)
    return rows


def path_rewards_figure(trie: Trie, item: int, token_text: Callable[[int], str]) -> go.Figure:
    """Telescoping along one item's path: bars = log r(a_t|s_t) per token (T labelled ``END_LABEL``),
    line = running sum, which ends at log F(title·T) - log Z (= log R(i)/Z for a unique title).
    Traces: bars, running sum, the level log R(i)/Z.
    """
    path = trie.item_path(item)
    log_r = trie.log_token_rewards(torch.tensor([path], device=trie.device))[0].cpu().numpy()
    labels = [f"{t}: {_label(a, trie.eos_id, token_text)!r}" for t, a in enumerate(path)]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=log_r, name="log r(a_t | s_t)", marker_color=OKABE_ITO[1],
                         hovertemplate="%{x}<br>log r = %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=np.cumsum(log_r), name="running sum", mode="lines+markers",
                             line=dict(color=OKABE_ITO[4], width=2)))
    level = trie.item_log_prob(item)
    fig.add_trace(go.Scatter(x=[labels[0], labels[-1]], y=[level, level], mode="lines",
                             name=f"log R(i)/Z = {level:.4f}", line=dict(color=TARGET_COLOR, dash="dot")))
    fig.update_layout(title=f"Token rewards along item {item}'s path telescope to log R(i)/Z",
                      height=380, legend=dict(title="quantity"), margin=dict(t=60, l=60, r=20, b=80))
    fig.update_xaxes(title="position t: token a_t")
    fig.update_yaxes(title="log reward (nats)")
    return fig
