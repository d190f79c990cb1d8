"""ipywidgets panels built on :mod:`flower_lite.viz`.

Pattern: every change recomputes the state and redraws *plain* plotly figures into an
``ipywidgets.Output`` (no ``FigureWidget``, no anywidget), by replacing the Output's ``outputs``
with the figures' display data (see ``display.redraw``; in Colab, ``clear_output`` + ``display`` inside
``with out:``). Outside a notebook kernel (tests, scripts) nothing is displayed, but the state and
the figures are still recomputed, so the panels can be driven by setting widget values:
``panel.alpha.value = 1.5`` updates everything, exactly as dragging the slider does.

* :class:`RewardShapingPanel` — popularity exponent alpha, uniform mix beta, personalisation
  weight w and a user picker reshape the item rewards R(i); the trie is re-weighted (never
  rebuilt) and the target distribution and the trie are redrawn.
* :class:`TrainPanel` — fit the tabular toy policy with any objective (the fit function is passed in:
  widgets import no training code) and plot its curves.
* :class:`RunExplorer` — pick cached runs (:func:`save_run`, :func:`load_runs`) by their settings
  (theta, n, reward variant, ...) and compare their distributions with the target.
"""
from __future__ import annotations

from .display import in_kernel, mime_bundle, panel_bundle, redraw
from .reward_panel import RewardShapingPanel
from .runs import RunExplorer, load_runs, save_run
from .train_panel import TrainPanel

__all__ = ["RewardShapingPanel", "TrainPanel", "RunExplorer", "save_run", "load_runs", "in_kernel", "mime_bundle", "panel_bundle", "redraw"]
