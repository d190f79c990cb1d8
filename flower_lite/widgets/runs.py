"""Cached runs (one JSON file per run) and the run explorer of notebook 02."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import ipywidgets as W
import numpy as np

from .. import metrics, viz
from ..files import atomic_write_text
from .display import panel_bundle, redraw


def save_run(folder, name: str, q: Sequence[float], **settings) -> Path:
    """Cache a run's title distribution ``q`` (target order) with its settings (e.g. ``theta=0.995,
    n=1, variant="div_s"``) as ``<folder>/<name>.json``, written atomically; returns the path."""
    if not name or name.startswith(".") or any(c in name for c in "/\\"):
        raise ValueError(f"run name {name!r} must be a plain file name (no '/', '\\', no leading '.')")
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 1 or not np.isfinite(q).all() or (q < 0).any():
        raise ValueError(f"run {name!r}: q must be a 1-D array of finite probabilities >= 0")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps({"name": name, "settings": settings, "q": q.tolist()}))
    return path


def load_runs(folder) -> dict[str, tuple[np.ndarray, dict]]:
    """Every run cached by :func:`save_run` in ``folder``: ``{name: (q, settings)}``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run folder at {folder}")
    runs = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            runs[record["name"]] = (np.asarray(record["q"], dtype=np.float64), dict(record["settings"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"corrupt run file {path}: {type(e).__name__}: {e}") from e
    return runs


class RunExplorer:
    """Pick cached runs by their settings and compare their title distributions with the target.

    One dropdown per setting (theta, n, reward variant, ...; "any" keeps every value) filters the runs;
    the matching runs are listed in a multi-select (all selected after a filter change). The panel
    shows the rank-ordered distributions against the target, their Lorenz curves and a table of
    KL(P||Q), JS, TV, coverage (titles with Q > 1e-4) and Gini per selected run.

    Args:
        runs: ``{name: (q, settings)}`` (:func:`load_runs`), every q in the order of ``target``.
        target: the target distribution P over titles.
        labels: title names for the hover.
    """

    ANY = "any"

    def __init__(self, runs: dict[str, tuple[Sequence[float], dict]], target: Sequence[float],
                 labels: Sequence[str] | None = None):
        if not runs:
            raise ValueError("no runs to explore")
        self.target = np.asarray(target, dtype=np.float64)
        self.runs = {k: (np.asarray(q, dtype=np.float64), dict(s)) for k, (q, s) in runs.items()}
        for name, (q, _) in self.runs.items():
            if q.shape != self.target.shape:
                raise ValueError(f"run {name!r} has {q.size} titles, the target {self.target.size}")
        self.labels = labels
        keys = sorted({k for _, s in self.runs.values() for k in s})
        self.filters = {k: W.Dropdown(options=[self.ANY] + sorted({str(s[k]) for _, s in self.runs.values() if k in s}),
                                      value=self.ANY, description=k) for k in keys}
        self.selected = W.SelectMultiple(description="runs", rows=min(8, len(self.runs)))
        self.out = W.Output()
        self.widget = W.VBox([W.HBox(list(self.filters.values())), self.selected, self.out])
        self._figures: dict = {}
        self._updating = False
        self._refilter()
        for dropdown in self.filters.values():
            dropdown.observe(lambda _change: self._refilter(), names="value")
        self.selected.observe(lambda _change: None if self._updating else self.redraw(), names="value")

    @classmethod
    def from_folder(cls, folder, target: Sequence[float], labels: Sequence[str] | None = None) -> "RunExplorer":
        """An explorer of every run cached in ``folder``."""
        return cls(load_runs(folder), target, labels)

    def matching(self) -> list[str]:
        """Names of the runs whose settings match every filter."""
        chosen = {k: d.value for k, d in self.filters.items() if d.value != self.ANY}
        return [n for n, (_, s) in self.runs.items() if all(str(s.get(k)) == v for k, v in chosen.items())]

    def _refilter(self) -> None:
        names = self.matching()
        self._updating = True  # setting the options clears the selection: redraw once, at the end
        try:
            self.selected.options = names
            self.selected.value = tuple(names)
        finally:
            self._updating = False
        self.redraw()

    def table(self) -> list[dict]:
        """One row per selected run: name, settings, KL(P||Q), JS, TV, coverage, Gini."""
        rows = []
        for name in self.selected.value:
            q, settings = self.runs[name]
            rows.append({"run": name, **settings, "kl": metrics.kl_divergence(self.target, q),
                         "js": metrics.js_divergence(self.target, q), "tv": metrics.total_variation(self.target, q),
                         "coverage": metrics.support_size(q, 1e-4), "gini": metrics.gini(q)})
        return rows

    def redraw(self) -> None:
        """Recompute the figures of the selected runs and show them."""
        chosen = {name: self.runs[name][0] for name in self.selected.value}
        self._figures = {
            "distribution": viz.distribution_figure(self.target, chosen, labels=self.labels,
                                                    title=f"Target P vs {len(chosen)} cached run(s)"),
            "lorenz": viz.lorenz_figure({"target": self.target, **chosen}),
            "table": viz.table_figure(self.table() or [{"run": "no run selected: select runs or change a filter"}],
                                      title="Fit of each selected run to the target", digits=4),
        }
        redraw(self.out, *self._figures.values())

    def figures(self) -> dict:
        """The current figures: {"distribution", "lorenz", "table"}."""
        return dict(self._figures)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The live panel, with its figures as static HTML for exported notebooks (``display.panel_bundle``)."""
        return panel_bundle(self.widget, self._figures.values())
