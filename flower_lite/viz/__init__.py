"""Plotly figures of flower_lite: pure functions from data (tries, arrays, histories) to ``go.Figure``.

Nothing here trains or samples: the figures read a :class:`~flower_lite.trie.Trie`, numpy arrays
or training histories (lists of dicts, or JSON-lines logs) and draw them in the notation of
docs/method.md: flows F(s), token rewards r(a|s) = F(s·a) / F(s), the target P(i) = R(i) / Z.

Colours: the Okabe-Ito palette (safe for the common colour-vision deficiencies) for categories, and
``cividis`` for continuous values. Figure text is plain Unicode (no LaTeX), so figures render
offline without MathJax.

Rendering in notebooks: call :func:`setup_notebook_rendering` once at the top of a notebook.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from .charts import (distribution_figure, exposure_by_group_figure, lorenz_figure, read_jsonl, stop_log_probs_figure,
                     table_figure, topk_popularity_figure, training_curves_figure)
from .style import END_LABEL, OKABE_ITO, OTHER_LABEL, TARGET_COLOR
from .trie_figures import path_rewards_figure, telescoping_table, token_rewards_figure, trie_figure

__all__ = [
    "OKABE_ITO", "TARGET_COLOR", "END_LABEL", "OTHER_LABEL", "setup_notebook_rendering",
    "trie_figure", "token_rewards_figure", "distribution_figure", "lorenz_figure", "exposure_by_group_figure",
    "read_jsonl", "training_curves_figure", "topk_popularity_figure", "telescoping_table",
    "table_figure", "path_rewards_figure", "stop_log_probs_figure", "save_png", "save_html",
]


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
