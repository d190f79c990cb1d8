"""pytest --nbmake notebooks/: every executed notebook is also exported to HTML and checked.

nbmake runs each notebook once; this hook keeps the executed notebook, exports it with
``jupyter nbconvert``'s HTML exporter to ``test-artifacts/html/<name>.html`` and fails the notebook's
test when the HTML does not carry every plotly figure the notebook displayed (or plotly.js itself, so
that the file works offline). A notebook must display at least one figure.
"""
from __future__ import annotations

from pathlib import Path

import pytest

try:
    from nbmake import pytest_items
except ImportError:  # plain pytest without nbmake: nothing to hook
    pytest_items = None

PLOTLY_MIME = "application/vnd.plotly.v1+json"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "html"
_executed: dict[str, object] = {}

if pytest_items is not None:
    _execute = pytest_items.NotebookRun.execute

    def _execute_and_keep(self):
        result = _execute(self)
        _executed[Path(self.filename).resolve().as_posix()] = result.nb
        return result

    pytest_items.NotebookRun.execute = _execute_and_keep


def plotly_outputs(nb) -> int:
    """Number of plotly figures among the cell outputs of an executed notebook."""
    return sum(PLOTLY_MIME in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def check_html_export(nb, name: str) -> Path:
    """Export ``nb`` to HTML under test-artifacts/html and check that every plotly figure is in it."""
    import nbconvert

    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    figures = plotly_outputs(nb)
    assert figures >= 1, f"{name}: the executed notebook displayed no plotly figure"
    drawn = html.count("Plotly.newPlot")
    assert drawn >= figures, f"{name}: {figures} plotly figures displayed, {drawn} in the exported HTML ({path})"
    assert "plotly.js v" in html, f"{name}: the exported HTML does not embed plotly.js ({path})"
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    outcome = yield  # a failing notebook raises here and is reported as nbmake reports it
    if pytest_items is not None and isinstance(item, pytest_items.NotebookItem):
        source = (Path(item.config.rootdir) / item.filename).resolve().as_posix()
        check_html_export(_executed.pop(source), Path(source).stem)
    return outcome
