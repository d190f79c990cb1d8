"""The training panel of notebook 02: fit the tabular toy with a chosen objective and plot the runs."""
from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as W

from .. import viz
from ..config import LOSSES, Objective, ToyConfig
from ..trie import Trie
from .display import panel_bundle, redraw


class TrainPanel:
    """Fit the tabular toy policy with a chosen objective and plot its curves.

    One click of "train" = one ``fit(trie, ToyConfig, progress=...)`` call from scratch with the chosen
    loss, θ (the SFT weight of the mix) and number of steps (a fresh policy each time; there is no
    resumable training here). Runs are kept in ``panel.runs`` (name -> ``ToyRun``, named
    "<objective> #k"); the figures show every run's loss and KL(P||Q) curves and the fitted title
    distributions against the target.

    Args:
        trie: the trie to fit, or a callable returning it (e.g. ``lambda: shaping_panel.trie`` to
            follow a :class:`RewardShapingPanel`); read at every click.
        fit: the fit function, :func:`flower_lite.toy.fit_toy` (passed in: widgets import no training code).
        steps, loss, theta, lr, seed: initial widget values. ``progress``: show tqdm.auto's bar.
        labels: titles in ``trie.terminal_nodes`` order, for the hover of the distribution figure.
        keys: history keys to plot.
    """

    def __init__(
        self,
        trie: Trie | Callable[[], Trie],
        fit: Callable,
        *,
        steps: int = 200,
        loss: str = "subtb",
        theta: float = 0.0,
        lr: float = 0.3,
        seed: int = 0,
        progress: bool = True,
        labels: Sequence[str] | None = None,
        keys: Sequence[str] = ("loss", "kl"),
    ):
        self._fit = fit
        self._get_trie = trie if callable(trie) else (lambda: trie)
        self.labels, self.keys, self.show_progress = labels, tuple(keys), progress
        self.loss = W.Dropdown(options=list(LOSSES), value=loss, description="loss")
        self.theta = W.FloatSlider(value=theta, min=0.0, max=1.0, step=0.005, description="θ (SFT weight)",
                                   continuous_update=False, style={"description_width": "100px"})
        self.steps = W.IntSlider(value=steps, min=10, max=2000, step=10, description="steps", continuous_update=False)
        self.lr = W.FloatLogSlider(value=lr, base=10, min=-3, max=0, step=0.1, description="lr", continuous_update=False)
        self.seed = W.IntText(value=seed, description="seed", layout=W.Layout(width="200px"))
        self.button = W.Button(description="train", button_style="primary", icon="play")
        self.clear = W.Button(description="clear runs", icon="trash")
        self.out_progress, self.out_curves, self.out_dist = W.Output(), W.Output(), W.Output()
        self.widget = W.VBox([
            W.HBox([self.loss, self.theta, self.steps]), W.HBox([self.lr, self.seed, self.button, self.clear]),
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
        trie = self._get_trie()
        objective = Objective(self.loss.value, theta=0.0 if self.loss.value == "sft" else float(self.theta.value))
        config = ToyConfig(objective=objective, steps=int(self.steps.value), lr=float(self.lr.value),
                           seed=int(self.seed.value))
        self.button.disabled = True
        try:
            run = self._fit(trie, config, progress=self.show_progress)
        finally:
            self.button.disabled = False
        self.runs[f"{objective.name} #{len(self.runs) + 1}"] = run
        self._target = trie.title_log_probs().exp().numpy()
        self.redraw()
        return run

    def clear_runs(self) -> None:
        """Forget every run and clear the figures."""
        self.runs.clear()
        self._figures = {}
        for out in (self.out_curves, self.out_dist):
            redraw(out)

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
        redraw(self.out_curves, self._figures["curves"])
        redraw(self.out_dist, self._figures["distribution"])

    def figures(self) -> dict:
        """The current figures: {"curves", "distribution"} (empty before the first run)."""
        return dict(self._figures)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The live panel, with its figures as static HTML for exported notebooks (``display.panel_bundle``)."""
        return panel_bundle(self.widget, self._figures.values())
