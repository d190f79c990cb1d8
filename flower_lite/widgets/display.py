"""Showing plotly figures inside ipywidgets panels (JupyterLab, VS Code, Colab), and nothing outside a kernel."""
from __future__ import annotations

import sys

import ipywidgets as W
import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import display

__all__ = ["in_kernel", "redraw", "mime_bundle", "panel_bundle"]


def in_kernel() -> bool:
    """True inside a Jupyter / Colab kernel (where Output widgets can show figures)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def redraw(out: W.Output, *objs) -> None:
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
    out.outputs = tuple({"output_type": "display_data", "data": mime_bundle(obj), "metadata": {}} for obj in objs)


def mime_bundle(obj) -> dict:
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


def panel_bundle(widget: W.Widget, figures) -> dict:
    """The display data of a panel: the live widget, and the panel's current ``figures`` as static HTML.

    JupyterLab, VS Code and Colab draw the widget; an exported notebook (``jupyter nbconvert --to html``)
    has no widget state, so the exporter skips the widget and shows the static figures instead of the
    text ``VBox(...)``. The figures' HTML calls ``Plotly.newPlot`` on the plotly.js that
    ``viz.setup_notebook_rendering`` embedded at the top of the notebook.
    """
    bundle = dict(widget._repr_mimebundle_() or {})
    html = "".join(fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures)
    return {**bundle, "text/html": f"<div class='flower-lite-static-panel'>{html}</div>"}

