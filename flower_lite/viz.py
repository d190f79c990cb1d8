"""Plotly figures of flower_lite: pure functions from data (tries, arrays, histories) to ``go.Figure``.

Nothing here trains or samples: the figures read a :class:`~flower_lite.trie.Trie`, numpy arrays
or training histories (lists of dicts, or JSON-lines logs) and draw them in the notation of
METHOD.md: flows F(s), token rewards r(a|s) = F(s·a) / F(s), the target P(i) = R(i) / Z.

Colours: the Okabe-Ito palette (safe for the common colour-vision deficiencies) for categories, and
``cividis`` for continuous values. Figure text is plain Unicode (no LaTeX), so figures render
offline without MathJax.

Rendering in notebooks: call :func:`setup_notebook_rendering` once at the top of a notebook.
"""
from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

from . import metrics
from .trie import ROOT, Trie

__all__ = [
    "OKABE_ITO", "TARGET_COLOR", "END_LABEL", "OTHER_LABEL", "setup_notebook_rendering",
    "trie_figure", "token_rewards_figure", "distribution_figure", "lorenz_figure", "exposure_by_group_figure",
    "read_jsonl", "training_curves_figure", "topk_popularity_figure", "telescoping_table",
    "table_figure", "path_rewards_figure", "save_png", "save_html",
]

# Okabe & Ito (2008), "Color Universal Design"; black is kept for the target.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")
TARGET_COLOR = "#000000"
CONTINUOUS_SCALE = "cividis"
END_LABEL = "⏹ end"  # the termination token T
OTHER_LABEL = "(other)"
LOG_KEYS = ("kl", "kl_reverse", "js", "tv")  # history keys drawn on a log axis when positive


def _color(i: int) -> str:
    return OKABE_ITO[i % (len(OKABE_ITO) - 1)]  # black is reserved for the target


# ---------------------------------------------------------------------------- rendering
def setup_notebook_rendering(renderer: str | None = None) -> str:
    """Pick the plotly renderer for the running front end and return its name.

    * Google Colab (``google.colab`` imported): ``"colab"``.
    * Otherwise ``"plotly_mimetype+notebook"``: every figure output carries the plotly JSON
      (``application/vnd.plotly.v1+json``, drawn natively by JupyterLab 4 and VS Code) *and* an
      HTML/JS version (``text/html`` with ``Plotly.newPlot``) that ``jupyter nbconvert --to html``
      keeps; the ``notebook`` part embeds plotly.js itself once (in this call's output), so the
      exported HTML works offline. The cost is about 4.7 MB of plotly.js in that one output.

    ``renderer`` overrides the choice. Inside IPython the renderers are activated right away, so
    the plotly.js payload lands in the output of the cell that calls this function (and not, say,
    inside the first widget that happens to draw a figure).
    """
    if renderer is None:
        renderer = "colab" if "google.colab" in sys.modules else "plotly_mimetype+notebook"
    pio.renderers.default = renderer
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            pio.renderers._activate_pending_renderers()  # plotly's own hook, run on first display
    except (ImportError, AttributeError):  # pragma: no cover - older/newer plotly: activation is lazy
        pass
    return renderer


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
    prefix, F(s)/Z and r(a|s). The termination token T is labelled "⏹ end".

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
                prefixes.append(pre + (" ⏹" if tokens[c] == eos else ""))
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

    Largest first; beyond ``max_children`` the rest is pooled into one "(other)" bar. T is "⏹ end".
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
    fig.update_xaxes(title="next token a (⏹ end = stop here)")
    fig.update_yaxes(title="r(a|s) = F(s·a)/F(s)", rangemode="tozero")
    return fig


# ---------------------------------------------------------------------------- distributions
def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def distribution_figure(
    target,
    models: Mapping[str, object] | None = None,
    labels: Sequence[str] | None = None,
    top: int | None = None,
    normalise: bool = True,
    title: str = "Item distribution, ranked by target probability",
    target_name: str = "target P",
) -> go.Figure:
    """Target P and model distributions Q, ranked by P (rank 1 = most probable), log-scale y.

    ``target`` [N] and every array in ``models`` [N] (same item order; tensors or arrays) are
    normalised to sum 1 unless ``normalise=False`` (pass probabilities then, e.g. a policy's valid
    mass that leaves out invalid outputs). ``labels`` [N] (titles) appear in the hover. ``top``
    keeps the ``top`` most probable items under P. Zero probabilities have no point on a log axis.
    Traces: the target first (thick, black), then one per model in ``models`` order.
    """
    p = _as_array(target)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("target must be a non-empty 1-D array")
    if normalise:
        p = p / p.sum()
    order = np.argsort(-p, kind="stable")[: top or p.size]
    ranks = np.arange(1, order.size + 1)
    hover = [labels[i] for i in order] if labels is not None else [f"item {i}" for i in order]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=ranks, y=p[order], name=target_name, mode="lines+markers", text=hover,
        line=dict(color=TARGET_COLOR, width=4), marker=dict(size=5, color=TARGET_COLOR),
        hovertemplate="%{text}<br>rank %{x}<br>P = %{y:.3g}<extra>" + target_name + "</extra>",
    ))
    for k, (name, q) in enumerate((models or {}).items()):
        q = _as_array(q)
        if q.shape != p.shape:
            raise ValueError(f"model {name!r}: expected {p.size} probabilities, got shape {q.shape}")
        if normalise:
            q = q / q.sum()
        fig.add_trace(go.Scatter(
            x=ranks, y=q[order], name=name, mode="lines+markers", text=hover,
            line=dict(color=_color(k), width=1.5, dash=("solid", "dash", "dot", "dashdot")[k % 4]),
            marker=dict(size=4, color=_color(k), symbol=("circle", "square", "diamond", "triangle-up")[k % 4]),
            hovertemplate="%{text}<br>rank %{x}<br>Q = %{y:.3g}<extra>" + name + "</extra>",
        ))
    fig.update_layout(title=title, legend=dict(title="distribution"), height=420,
                      margin=dict(t=60, l=60, r=20, b=50))
    fig.update_xaxes(title="item rank under the target (1 = most probable)")
    fig.update_yaxes(title="probability (log scale)", type="log")
    return fig


def lorenz_figure(dists: Mapping[str, object], title: str = "Lorenz curves of exposure") -> go.Figure:
    """Lorenz curve of each distribution (items sorted from least to most exposed), Gini in the legend.

    x = cumulative share of items, y = cumulative share of probability mass (or exposure); the
    diagonal is perfect equality. Gini = ``metrics.gini``. One trace per distribution, then the diagonal.
    """
    fig = go.Figure()
    for k, (name, w) in enumerate(dists.items()):
        w = _as_array(w)
        x = np.sort(w)
        y = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
        share = np.linspace(0.0, 1.0, x.size + 1)
        g = metrics.gini(w)
        fig.add_trace(go.Scatter(
            x=share, y=y, name=f"{name} (Gini = {g:.3f})", mode="lines",
            line=dict(color=_color(k), width=2, dash=("solid", "dash", "dot", "dashdot")[k % 4]),
            hovertemplate="%{x:.1%} of items hold %{y:.1%} of the mass<extra>" + name + "</extra>",
        ))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], name="equality (Gini = 0)", mode="lines",
                             line=dict(color="#999999", dash="dot", width=1)))
    fig.update_layout(title=title, height=420, legend=dict(title="distribution"),
                      margin=dict(t=60, l=60, r=20, b=50))
    fig.update_xaxes(title="cumulative share of items, least exposed first", tickformat=".0%", range=[0, 1])
    fig.update_yaxes(title="cumulative share of mass", tickformat=".0%", range=[0, 1])
    return fig


def exposure_by_group_figure(
    gp_data, gp_rec: Mapping[str, object], title: str = "Exposure by popularity group"
) -> go.Figure:
    """Grouped bars of GP_data(g) (training interactions) and GP_rec(g) per model, g = 1..G.

    Group 1 holds the most popular items (``metrics.group_unfairness`` order). Shares in [0, 1].
    Traces: "training data" first, then one per model.
    """
    d = _as_array(gp_data)
    groups = [str(g) for g in range(1, d.size + 1)]
    fig = go.Figure(go.Bar(x=groups, y=d, name="training data (GP_data)", marker_color=TARGET_COLOR,
                           hovertemplate="group %{x}: %{y:.1%}<extra>GP_data</extra>"))
    for k, (name, rec) in enumerate(gp_rec.items()):
        rec = _as_array(rec)
        if rec.shape != d.shape:
            raise ValueError(f"{name!r}: expected {d.size} groups, got shape {rec.shape}")
        fig.add_trace(go.Bar(x=groups, y=rec, name=f"{name} (GP_rec)", marker_color=_color(k),
                             hovertemplate="group %{x}: %{y:.1%}<extra>" + name + "</extra>"))
    fig.update_layout(title=title, barmode="group", height=400, legend=dict(title="exposure"),
                      margin=dict(t=60, l=60, r=20, b=50))
    fig.update_xaxes(title="popularity group (1 = most popular items)")
    fig.update_yaxes(title="share of exposure", tickformat=".0%")
    return fig


# ---------------------------------------------------------------------------- training curves
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines log (one JSON object per line; blank lines skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {line_no}: not JSON ({e.msg})") from None
    return out


def _histories(histories) -> dict[str, list[dict]]:
    if isinstance(histories, (str, os.PathLike)):
        return {Path(histories).stem: read_jsonl(histories)}
    return {name: read_jsonl(h) if isinstance(h, (str, os.PathLike)) else list(h) for name, h in histories.items()}


def training_curves_figure(
    histories: Mapping[str, Sequence[dict] | str | os.PathLike] | str | os.PathLike,
    keys: Sequence[str] = ("loss", "kl"),
    x: str = "step",
    log_keys: Iterable[str] = LOG_KEYS,
    title: str = "Training curves",
) -> go.Figure:
    """One panel per key in ``keys``, one line per run, against ``x`` (optimizer step).

    ``histories``: run name -> list of record dicts (e.g. ``ToyRun.history``) or the path of a
    JSON-lines log; or a single path (the run is named after the file). Records without the key
    are skipped. Keys in ``log_keys`` (divergences) use a log y axis when all their values are > 0.
    Traces are ordered key by key, run by run; a run keeps its colour in every panel.
    """
    runs = _histories(histories)
    keys = list(keys)
    log_keys = set(log_keys)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys, horizontal_spacing=0.08)
    for col, key in enumerate(keys, start=1):
        all_pos = True
        for k, (name, recs) in enumerate(runs.items()):
            pts = [(r[x], r[key]) for r in recs if key in r and x in r and r[key] is not None]
            xs, ys = [p[0] for p in pts], [float(p[1]) for p in pts]
            all_pos &= all(v > 0 for v in ys)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, name=name, legendgroup=name, showlegend=col == 1, mode="lines",
                line=dict(color=_color(k), width=2, dash=("solid", "dash", "dot", "dashdot")[k % 4]),
                hovertemplate=f"{x} %{{x}}<br>{key} = %{{y:.4g}}<extra>{name}</extra>",
            ), row=1, col=col)
        fig.update_xaxes(title=f"{x} (optimizer steps)", row=1, col=col)
        log = key in log_keys and all_pos
        unit = " (nats, log scale)" if log and key in ("kl", "kl_reverse", "js") else (" (log scale)" if log else "")
        fig.update_yaxes(title=key + unit, type="log" if log else "linear", row=1, col=col)
    fig.update_layout(title=title, height=380, legend=dict(title="run"), margin=dict(t=70, l=60, r=20, b=50))
    return fig


# ---------------------------------------------------------------------------- recommendations
def topk_popularity_figure(
    ranked_lists: Mapping[str, Sequence[Sequence[int]]],
    counts,
    measure: str = "rank",
    title: str | None = None,
) -> go.Figure:
    """Popularity profile of ranked recommendation lists (e.g. beam-search top-K), per list position.

    ``ranked_lists``: model -> one ranked list of item ids per test row. ``counts`` [N]: training
    counts c(i). ``measure="rank"``: mean popularity rank of the item at each position (1 = the
    most popular item, ties by smaller id), with a dotted line at the catalogue's mean rank (N + 1)/2,
    what uniform recommendations would give; ``measure="count"``: mean c(i). Invalid ids (outside
    0..N-1) are skipped. One trace per model (then the reference line for ranks).
    """
    if measure not in ("rank", "count"):
        raise ValueError(f"measure must be 'rank' or 'count', got {measure!r}")
    c = _as_array(counts)
    n = c.size
    rank = np.empty(n)
    rank[np.argsort(-c, kind="stable")] = np.arange(1, n + 1)
    value = rank if measure == "rank" else c
    fig = go.Figure()
    k_max = 0
    for k, (name, rows) in enumerate(ranked_lists.items()):
        width = max((len(r) for r in rows), default=0)
        k_max = max(k_max, width)
        sums, nums = np.zeros(width), np.zeros(width)
        for row in rows:
            ids = np.asarray(row, dtype=np.int64)
            ok = (ids >= 0) & (ids < n)
            pos = np.flatnonzero(ok)
            np.add.at(sums, pos, value[ids[ok]])
            np.add.at(nums, pos, 1)
        mean = np.where(nums > 0, sums / np.maximum(nums, 1), np.nan)
        fig.add_trace(go.Scatter(
            x=np.arange(1, width + 1), y=mean, name=name, mode="lines+markers",
            line=dict(color=_color(k), width=2), marker=dict(color=_color(k)),
            hovertemplate="position %{x}: %{y:.1f}<extra>" + name + "</extra>",
        ))
    if measure == "rank":
        fig.add_trace(go.Scatter(x=[1, max(k_max, 1)], y=[(n + 1) / 2] * 2, mode="lines",
                                 name="uniform over the catalogue", line=dict(color="#999999", dash="dot")))
        fig.update_yaxes(title="mean popularity rank of the item (1 = most popular)", autorange="reversed")
    else:
        fig.update_yaxes(title="mean training count c(i) of the item (interactions)")
    fig.update_xaxes(title="position in the recommended list (1 = top)", dtick=1)
    fig.update_layout(title=title or "Popularity of the recommended items by list position", height=400,
                      legend=dict(title="model"), margin=dict(t=60, l=70, r=20, b=50))
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


def table_figure(rows: Sequence[dict], title: str | None = None, digits: int = 6) -> go.Figure:
    """A plotly Table of a list of dicts (columns = the first row's keys); floats to ``digits`` significant digits."""
    if not rows:
        raise ValueError("no rows")
    cols = list(rows[0].keys())

    def fmt(v):
        return f"{v:.{digits}g}" if isinstance(v, float) else v

    fig = go.Figure(go.Table(
        header=dict(values=[f"<b>{c}</b>" for c in cols], fill_color="#DDDDDD", align="left"),
        cells=dict(values=[[fmt(r.get(c)) for r in rows] for c in cols], align="left"),
    ))
    fig.update_layout(title=title, margin=dict(t=50 if title else 10, l=10, r=10, b=10),
                      height=min(120 + 28 * len(rows), 700))
    return fig


def path_rewards_figure(trie: Trie, item: int, token_text: Callable[[int], str]) -> go.Figure:
    """Telescoping along one item's path: bars = log r(a_t|s_t) per token (T labelled "⏹ end"),
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


# ---------------------------------------------------------------------------- export
def save_html(fig: go.Figure, path: str | os.PathLike, include_plotlyjs: bool | str = True) -> Path:
    """Write a standalone HTML file (plotly.js embedded by default, so it opens offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=include_plotlyjs, full_html=True)
    return path


def save_png(fig: go.Figure, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Write ``fig`` as PNG with kaleido; return the path written.

    kaleido >= 1 drives a Chrome/Chromium browser. Without one (or without kaleido) a standalone
    HTML file is written next to it instead (``path`` with suffix ``.html``), a warning says so,
    and that HTML path is returned.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.write_image(path, format="png", scale=scale)
        return path
    except Exception as e:  # noqa: BLE001 - kaleido raises RuntimeError / ValueError / ImportError variously
        html = path.with_suffix(".html")
        warnings.warn(f"PNG export failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}); "
                      f"wrote {html} instead", RuntimeWarning, stacklevel=2)
        return save_html(fig, html)
