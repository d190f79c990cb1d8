"""Figures of distributions, exposure, training curves, top-K lists and tables."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import metrics
from .style import LOG_KEYS, TARGET_COLOR, as_array, color


# ---------------------------------------------------------------------------- distributions
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
    p = as_array(target)
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
        q = as_array(q)
        if q.shape != p.shape:
            raise ValueError(f"model {name!r}: expected {p.size} probabilities, got shape {q.shape}")
        if normalise:
            q = q / q.sum()
        fig.add_trace(go.Scatter(
            x=ranks, y=q[order], name=name, mode="lines+markers", text=hover,
            line=dict(color=color(k), width=1.5, dash=("solid", "dash", "dot", "dashdot")[k % 4]),
            marker=dict(size=4, color=color(k), symbol=("circle", "square", "diamond", "triangle-up")[k % 4]),
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
    A distribution named ``target...`` is drawn in black and the others take the palette in order, as in
    :func:`distribution_figure`, so a model has the same colour in both figures.
    """
    fig = go.Figure()
    k = -1
    for name, w in dists.items():
        is_target = name.lower().startswith("target")
        k += 0 if is_target else 1
        line = dict(color=TARGET_COLOR, width=3) if is_target else dict(
            color=color(k), width=2, dash=("solid", "dash", "dot", "dashdot")[k % 4])
        w = as_array(w)
        x = np.sort(w)
        y = np.concatenate([[0.0], np.cumsum(x) / x.sum()])
        share = np.linspace(0.0, 1.0, x.size + 1)
        g = metrics.gini(w)
        fig.add_trace(go.Scatter(
            x=share, y=y, name=f"{name} (Gini = {g:.3f})", mode="lines", line=line,
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
    d = as_array(gp_data)
    groups = [str(g) for g in range(1, d.size + 1)]
    fig = go.Figure(go.Bar(x=groups, y=d, name="training data (GP_data)", marker_color=TARGET_COLOR,
                           hovertemplate="group %{x}: %{y:.1%}<extra>GP_data</extra>"))
    for k, (name, rec) in enumerate(gp_rec.items()):
        rec = as_array(rec)
        if rec.shape != d.shape:
            raise ValueError(f"{name!r}: expected {d.size} groups, got shape {rec.shape}")
        fig.add_trace(go.Bar(x=groups, y=rec, name=f"{name} (GP_rec)", marker_color=color(k),
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
                line=dict(color=color(k), width=2, dash=("solid", "dash", "dot", "dashdot")[k % 4]),
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
    c = as_array(counts)
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
            line=dict(color=color(k), width=2), marker=dict(color=color(k)),
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


def stop_log_probs_figure(summaries: Mapping[str, Mapping[str, float]], penalty: float = -15.0,
                          title: str = "log π(T | s) of the initial model") -> go.Figure:
    """Mean (bar) and range (whiskers) of log pi(T | s) over complete titles and over incomplete states, one
    group per summary (``distributions.stop_summary``: e.g. T = EOS and T = newline), against what Flower's
    SubTB optimum needs: log r(T | s) (0 for a title no other title continues) and ``penalty`` inside titles."""
    fig = go.Figure()
    for k, (kind, label) in enumerate((("complete", "after a complete title"), ("internal", "inside a title"))):
        names = list(summaries)
        means = [summaries[n][f"{kind}_mean"] for n in names]
        fig.add_trace(go.Bar(
            x=names, y=means, name=label, marker_color=color(k),
            error_y=dict(type="data", symmetric=False,
                         array=[summaries[n][f"{kind}_max"] - m for n, m in zip(names, means)],
                         arrayminus=[m - summaries[n][f"{kind}_min"] for n, m in zip(names, means)]),
            hovertemplate="%{x}<br>mean %{y:.2f}<extra>" + label + "</extra>",
        ))
    fig.add_hline(y=0.0, line=dict(color=color(0), dash="dot"), annotation_text="needed after a title: log r(T|s) ≈ 0")
    fig.add_hline(y=penalty, line=dict(color=color(1), dash="dot"), annotation_text=f"needed inside a title: {penalty:g}")
    fig.update_layout(title=title, barmode="group", height=400, legend=dict(title="states"),
                      margin=dict(t=60, l=60, r=20, b=50))
    fig.update_yaxes(title="log π(T | s) (nats)")
    return fig
