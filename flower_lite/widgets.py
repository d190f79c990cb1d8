"""ipywidgets panels built on :mod:`flower_lite.viz`.

Pattern: every change recomputes the state and redraws *plain* plotly figures into an
``ipywidgets.Output`` (no ``FigureWidget``, no anywidget), by replacing the Output's ``outputs``
with the figures' display data (see ``_redraw``; in Colab, ``clear_output`` + ``display`` inside
``with out:``). Outside a notebook kernel (tests, scripts) nothing is displayed, but the state and
the figures are still recomputed, so the panels can be driven by setting widget values:
``panel.alpha.value = 1.5`` updates everything, exactly as dragging the slider does.

* :class:`RewardShapingPanel` — popularity exponent alpha, uniform mix beta, personalisation
  weight lambda and a user picker reshape the item rewards R(i); the trie is re-weighted (never
  rebuilt) and the target distribution and the trie are redrawn.
* :class:`TrainPanel` — fit the tabular toy policy with SFT / TB / DB / Flower and plot its curves.
* :class:`RunExplorer` — pick cached runs (:func:`save_run`, :func:`load_runs`) by their settings
  (theta, n, reward variant, ...) and compare their distributions with the target.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from IPython.display import display

from . import metrics, viz
from .rewards import mix_uniform, personalised_log_rewards, popularity_rewards
from .trie import Trie

__all__ = ["RewardShapingPanel", "TrainPanel", "RunExplorer", "save_run", "load_runs", "in_kernel"]


def in_kernel() -> bool:
    """True inside a Jupyter / Colab kernel (where Output widgets can show figures)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _redraw(out: W.Output, *objs) -> None:
    """Replace the content of ``out`` with the display of ``objs`` (only inside a kernel).

    The new outputs are set on the widget's ``outputs`` state in one update (no flicker), which
    JupyterLab 4 and VS Code render like any output. We avoid ``with out: display(...)`` there: its
    output capture makes headless executors (nbclient, so nbmake and ``nbconvert --execute``) send
    widget messages back on the shell channel, which with ipykernel 7 / pyzmq 27 intermittently
    stalls the cell until the executor's timeout (seen here in 3 of 6 runs of notebook 01). In
    Colab, where direct ``outputs`` updates are untested, the classic ``with out:`` pattern is used.
    """
    if not in_kernel():
        return
    if "google.colab" in sys.modules:  # pragma: no cover - Colab only
        with out:
            out.clear_output(wait=True)
            for obj in objs:
                display(obj)
        return
    out.outputs = tuple({"output_type": "display_data", "data": _mime_bundle(obj), "metadata": {}} for obj in objs)


def _mime_bundle(obj) -> dict:
    """The display data of ``obj``, computed without displaying it anywhere.

    (IPython's display formatter would *call* a figure's ``_ipython_display_``, which shows the
    figure in the current cell instead of returning its data.)
    """
    if isinstance(obj, go.Figure):
        # The mimetype renderers chosen by viz.setup_notebook_rendering. (Not fig._repr_mimebundle_:
        # in plotly 6-7 it re-activates the "notebook" renderer, re-sending 4.7 MB of plotly.js.)
        fig_dict = obj.to_dict()
        data = {}
        for name in (pio.renderers.default or "").split("+"):
            renderer = pio.renderers[name] if name in pio.renderers else None
            if renderer is not None and hasattr(renderer, "to_mimebundle"):
                data.update(renderer.to_mimebundle(fig_dict))
        if not data:  # no mimetype renderer chosen: plotly's JSON, which JupyterLab and VS Code draw
            data = pio.renderers["plotly_mimetype"].to_mimebundle(fig_dict)
        return {**data, "text/plain": f"<plotly figure: {obj.layout.title.text or 'untitled'}>"}
    from IPython import get_ipython

    data, _ = get_ipython().display_formatter.format(obj)
    return data


class RewardShapingPanel:
    """Sliders that reshape the item rewards R(i) of a title trie, with live figures.

    The reward of item i, in this order (METHOD.md section 4):

    1. popularity: R_pop(i) = (c(i) + eps) ** alpha  (``rewards.popularity_rewards``);
    2. personalisation (only with ``user_prefs``): log R_u(i) from the chosen user u's preference
       row p_u (``rewards.personalised_log_rewards`` with log p_pop = log R_pop / Z_pop):
       * ``variant="add_log_s"`` (default): log R_u(i) = log p_pop(i) + lam * log s'_ui, with s'_ui
         the min-max scaled preference (lam = the library's lambda);
       * ``variant="div_s"``: a geometric blend of popularity and the paper's div_s reward,
         log R_u(i) = (1 - lam) log p_pop(i) + lam * log p_pop(i) / s_ui (lam in [0, 1]);
       lam = 0 is popularity only;
    3. uniform mix: P(i) = (1 - beta) R(i) / Z + beta / N  (``rewards.mix_uniform``).

    The trie is built once; every change calls ``trie.reweight(P)``, so ``panel.trie.structure``
    stays the original structure object. The trie's rewards are then normalised (Z = 1).

    Args:
        catalog_titles: [N] item titles (duplicates allowed).
        counts: [N] popularity counts c(i).
        sequences: [N] token ids of each title, without T (one tokenization everywhere).
        eos_id: the termination token T.
        token_text: token id -> text, for the trie figure.
        user_prefs: [num_users, N] preference probabilities p_ui of an auxiliary recommender, or None.
        alpha, beta, lam, user: initial values; eps: smoothing of the counts (unseen items keep a reward).
        top: number of titles drawn in the distribution figure (None: all).
        max_depth, max_children: passed to ``viz.trie_figure``.
        head_fraction: the head is the ``head_fraction`` most popular titles (for ``head_share``).

    State: ``panel.trie`` (current trie), ``panel.target()`` (current P over distinct titles, in
    ``panel.trie.terminal_nodes`` order, duplicates pooled), ``panel.item_target()`` ([N] over
    items), ``panel.title_labels``, ``panel.head_share()``, ``panel.figures()`` ({"target", "trie"}),
    ``panel.widget`` (display this). Sliders: ``panel.alpha``, ``panel.beta``, ``panel.lam``;
    ``panel.user`` (Dropdown, only with ``user_prefs``).
    """

    def __init__(
        self,
        catalog_titles: Sequence[str],
        counts,
        sequences: Sequence[Sequence[int]],
        eos_id: int,
        token_text: Callable[[int], str],
        user_prefs=None,
        *,
        alpha: float = 1.0,
        beta: float = 0.0,
        lam: float = 0.0,
        user: int = 0,
        eps: float = 1.0,
        variant: str = "add_log_s",
        top: int | None = None,
        max_depth: int = 2,
        max_children: int = 10,
        head_fraction: float = 0.2,
    ):
        if variant not in ("add_log_s", "div_s"):
            raise ValueError(f"variant must be 'add_log_s' or 'div_s', got {variant!r}")
        self.titles = list(catalog_titles)
        self.counts = np.asarray(counts, dtype=np.float64)
        if self.counts.shape != (len(self.titles),) or len(sequences) != len(self.titles):
            raise ValueError("catalog_titles, counts and sequences must all have one entry per item")
        self.token_text = token_text
        self.eps, self.variant, self.top = eps, variant, top
        self.max_depth, self.max_children, self.head_fraction = max_depth, max_children, head_fraction
        self.prefs = None if user_prefs is None else torch.as_tensor(np.asarray(user_prefs, dtype=np.float64))
        if self.prefs is not None and (self.prefs.ndim != 2 or self.prefs.shape[1] != len(self.titles)):
            raise ValueError(f"user_prefs must have shape [num_users, {len(self.titles)}], got {tuple(self.prefs.shape)}")

        self.base_trie = Trie.from_sequences(sequences, np.ones(len(self.titles)), eos_id)
        self.trie = self.base_trie
        title_of_item = self.base_trie.item_title.numpy()
        self.title_labels = [""] * int(self.base_trie.terminal_nodes.numel())
        for i in range(len(self.titles) - 1, -1, -1):
            self.title_labels[title_of_item[i]] = self.titles[i]
        self.title_counts = np.bincount(title_of_item, weights=self.counts, minlength=len(self.title_labels))

        style = {"description_width": "150px"}
        layout = W.Layout(width="480px")
        self.alpha = W.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.05, continuous_update=False,
                                   description="popularity α", style=style, layout=layout,
                                   tooltip="R(i) = (c(i) + eps)^α: 0 = uniform, 1 = empirical")
        self.beta = W.FloatSlider(value=beta, min=0.0, max=1.0, step=0.05, continuous_update=False,
                                  description="uniform mix β", style=style, layout=layout,
                                  tooltip="P(i) = (1 - β) R(i)/Z + β/N")
        lam_max = 1.0 if variant == "div_s" else 2.0
        self.lam = W.FloatSlider(value=lam, min=0.0, max=lam_max, step=0.05, continuous_update=False,
                                 description="personalisation λ", style=style, layout=layout,
                                 disabled=self.prefs is None)
        controls = [self.alpha, self.beta, self.lam]
        self.user = None
        if self.prefs is not None:
            self.user = W.Dropdown(options=[(f"user {u}", u) for u in range(self.prefs.shape[0])], value=user,
                                   description="user", style=style, layout=W.Layout(width="300px"))
            controls.append(self.user)
        self.summary = W.HTML()
        self.out_target, self.out_trie = W.Output(), W.Output()
        self.widget = W.VBox([W.HBox([W.VBox(controls), self.summary]), self.out_target, self.out_trie])
        self._figures: dict = {}
        for w in controls:
            w.observe(self._on_change, names="value")
        self.update()

    # ------------------------------------------------------------------ the math
    def item_target(self) -> np.ndarray:
        """[N] P(i): the current normalised item rewards (steps 1-3 of the class docstring)."""
        r = popularity_rewards(self.counts, self.alpha.value, self.eps)
        lam = self.lam.value
        if self.prefs is not None and lam > 0:
            log_pop = torch.as_tensor(np.log(r) - np.log(r.sum()))
            p_u = self.prefs[self.user.value][None, :]
            if self.variant == "add_log_s":
                log_r = personalised_log_rewards(p_u, log_pop, "add_log_s", lam)[0]
            else:
                log_r = (1 - lam) * log_pop + lam * personalised_log_rewards(p_u, log_pop, "div_s")[0]
            r = (log_r - log_r.max()).exp().numpy()
        return mix_uniform(r, self.beta.value)

    def target(self) -> np.ndarray:
        """[num_titles] P(title) = F(title·T) / Z of the current trie (duplicate titles pooled)."""
        return self.trie.title_log_probs().exp().numpy()

    def head_share(self, fraction: float | None = None) -> float:
        """Target mass on the head: the ``fraction`` (default ``head_fraction``) most popular titles by c."""
        frac = self.head_fraction if fraction is None else fraction
        return 1.0 - metrics.tail_share(self.target(), self.title_counts, head_fraction=frac)

    def figures(self) -> dict:
        """The current figures: {"target": distribution figure, "trie": trie figure}."""
        return dict(self._figures)

    # ------------------------------------------------------------------ updating
    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        """Re-weight the trie (no rebuild) and redraw the figures."""
        self.trie = self.base_trie.reweight(self.item_target())
        p = self.target()
        who = f", user {self.user.value}" if self.user is not None and self.lam.value > 0 else ""
        self._figures = {
            "target": viz.distribution_figure(
                p, labels=self.title_labels, top=self.top, target_name="target P",
                title=f"Target P(title) = F(title·⏹)/Z  (α = {self.alpha.value:.2f}, β = {self.beta.value:.2f}, "
                      f"λ = {self.lam.value:.2f}{who})"),
            "trie": viz.trie_figure(self.trie, self.token_text, self.max_depth, self.max_children),
        }
        self.summary.value = (
            f"<div style='padding-left:1em'><b>target</b><br>"
            f"head share (top {self.head_fraction:.0%} titles): {self.head_share():.3f}<br>"
            f"entropy: {metrics.entropy(p):.3f} nats (uniform: {np.log(p.size):.3f})<br>"
            f"Gini: {metrics.gini(p):.3f}<br>titles: {p.size}, trie nodes: {self.trie.num_nodes}</div>")
        _redraw(self.out_target, self._figures["target"])
        _redraw(self.out_trie, self._figures["trie"])

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        display(self.widget)


class TrainPanel:
    """Fit the tabular toy policy (``toy.fit_toy``) with a chosen method and plot its curves.

    One click of "train" = one ``fit_toy`` call from scratch with the chosen method and number of
    steps (a fresh policy each time; there is no resumable training here). Runs are kept in
    ``panel.runs`` (name -> ``ToyRun``, named "method #k"); the figures show every run's loss and
    KL(P||Q) curves and the fitted title distributions against the target.

    Args:
        trie: the trie to fit, or a callable returning it (e.g. ``lambda: shaping_panel.trie`` to
            follow a :class:`RewardShapingPanel`); read at every click.
        steps, method, lr, seed: initial widget values. ``progress``: show tqdm.auto's bar.
        labels: titles in ``trie.terminal_nodes`` order, for the hover of the distribution figure.
        keys: history keys to plot.
    """

    def __init__(
        self,
        trie: Trie | Callable[[], Trie],
        *,
        steps: int = 200,
        method: str = "flower",
        lr: float = 0.3,
        seed: int = 0,
        progress: bool = True,
        labels: Sequence[str] | None = None,
        keys: Sequence[str] = ("loss", "kl"),
    ):
        from .toy import METHODS  # training code lives in toy.py, imported only by this panel

        self._get_trie = trie if callable(trie) else (lambda: trie)
        self.labels, self.keys, self.show_progress = labels, tuple(keys), progress
        self.method = W.Dropdown(options=list(METHODS), value=method, description="method")
        self.steps = W.IntSlider(value=steps, min=10, max=2000, step=10, description="steps", continuous_update=False)
        self.lr = W.FloatLogSlider(value=lr, base=10, min=-3, max=0, step=0.1, description="lr", continuous_update=False)
        self.seed = W.IntText(value=seed, description="seed", layout=W.Layout(width="200px"))
        self.button = W.Button(description="train", button_style="primary", icon="play")
        self.clear = W.Button(description="clear runs", icon="trash")
        self.out_progress, self.out_curves, self.out_dist = W.Output(), W.Output(), W.Output()
        self.widget = W.VBox([
            W.HBox([self.method, self.steps]), W.HBox([self.lr, self.seed, self.button, self.clear]),
            self.out_progress, self.out_curves, self.out_dist,
        ])
        self.runs: dict = {}
        self._figures: dict = {}
        self.button.on_click(self._on_click)
        self.clear.on_click(lambda _b: self.clear_runs())

    def _on_click(self, _button) -> None:
        """Button callback: its output (tqdm's bar, errors) has no cell to go to, so capture it."""
        with self.out_progress:
            self.out_progress.clear_output(wait=True)
            self.train()

    def train(self):
        """Run one ``fit_toy`` with the widgets' settings; store the run and redraw. Returns the ``ToyRun``.

        Called from a cell, tqdm's bar shows in that cell's output; from the button, in the panel.
        """
        from .toy import ToyConfig, fit_toy

        trie = self._get_trie()
        config = ToyConfig(method=self.method.value, steps=int(self.steps.value), lr=float(self.lr.value),
                           seed=int(self.seed.value))
        self.button.disabled = True
        try:
            run = fit_toy(trie, config, progress=self.show_progress)
        finally:
            self.button.disabled = False
        self.runs[f"{config.method} #{len(self.runs) + 1}"] = run
        self._target = trie.title_log_probs().exp().numpy()
        self.redraw()
        return run

    def clear_runs(self) -> None:
        """Forget every run and clear the figures."""
        self.runs.clear()
        self._figures = {}
        for out in (self.out_curves, self.out_dist):
            _redraw(out)

    def redraw(self) -> None:
        """Recompute and show the curves and distribution figures of the stored runs."""
        if not self.runs:
            return
        self._figures = {
            "curves": viz.training_curves_figure({k: r.history for k, r in self.runs.items()}, keys=self.keys,
                                                 title="Toy training curves (exact KL(P||Q) of the title distribution)"),
            "distribution": viz.distribution_figure(
                self._target, {k: r.policy.title_distribution()[0].numpy() for k, r in self.runs.items()},
                labels=self.labels, normalise=False,
                title="Target P vs fitted policies Q (valid titles; invalid mass not shown)"),
        }
        _redraw(self.out_curves, self._figures["curves"])
        _redraw(self.out_dist, self._figures["distribution"])

    def figures(self) -> dict:
        """The current figures: {"curves", "distribution"} (empty before the first run)."""
        return dict(self._figures)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        display(self.widget)


# ---------------------------------------------------------------------------- cached runs
def save_run(folder, name: str, q: Sequence[float], **settings) -> Path:
    """Cache a run's title distribution ``q`` (target order) with its settings (e.g. ``theta=0.995,
    n=1, variant="div_s"``) as ``<folder>/<name>.json``, written atomically; returns the path."""
    from .train import atomic_write_text

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
            "table": viz.table_figure(self.table(), title="Fit of each selected run to the target", digits=4),
        }
        _redraw(self.out, *self._figures.values())

    def figures(self) -> dict:
        """The current figures: {"distribution", "lorenz", "table"}."""
        return dict(self._figures)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        display(self.widget)
