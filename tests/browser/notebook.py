"""A notebook open in JupyterLab in a headless Chromium: run its cells, read its figures, drive its widgets.

:func:`open_notebook` starts one JupyterLab server (a temporary root holding a copy of the notebook)
and one Chromium for it, opens the notebook, runs every cell from the Run menu and yields a
:class:`Notebook`. Tests then drive the notebook's ipywidgets controls one after the other and read
the plotly figures drawn in a cell's output (:meth:`Notebook.figures`): the title, and per trace the
name, the ``_fullData`` y values, the hover text and table cells, and the SVG path of every line.
Every wait polls with a timeout (:func:`poll`); only the settling before a screenshot is a fixed pause.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from . import lab

# JS: are all code cells executed ([n]: prompts, nothing queued)? Or did one fail?
CELLS_JS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return {state: 'no notebook'};
  const dialog = document.querySelector('.jp-Dialog');
  if (dialog) return {state: 'dialog', text: dialog.innerText};
  const errors = [...nb.querySelectorAll('.jp-OutputArea-output')]
    .map(o => o.innerText).filter(t => t.includes('Traceback (most recent call last)'));
  if (errors.length) return {state: 'error', text: errors[0].slice(-2000)};
  const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.innerText.trim());
  const done = prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
  return {state: done ? 'done' : 'running', prompts};
}"""

# JS: every plotly figure under an element (a cell): title, traces (the data plotly decoded and drew)
# and the SVG path of each drawn line; an error shown in that cell (a widget callback's traceback).
FIGURES_JS = """(root) => {
  const list = v => (v == null || typeof v === 'string') ? null : Array.from(v);
  const figures = [...root.querySelectorAll('.js-plotly-plot')].map(g => {
    const title = g.layout && g.layout.title != null ? String(g.layout.title.text ?? g.layout.title) : '';
    const traces = (g._fullData || []).map((t, i) => {
      const raw = (g.data || [])[i] || {};
      const cells = raw.cells && raw.cells.values ? raw.cells.values.map(c => Array.from(c)) : null;
      const header = raw.header && raw.header.values ? Array.from(raw.header.values) : null;
      return {name: t.name, type: t.type, xaxis: t.xaxis || null, y: list(t.y), text: list(t.text), cells, header};
    });
    const paths = [...g.querySelectorAll('.scatterlayer .trace path.js-line')].map(p => p.getAttribute('d'));
    return {title, traces, paths};
  });
  const errors = [...root.querySelectorAll('.jp-OutputArea-output')]
    .map(o => o.innerText).filter(t => t.includes('Traceback'));
  return {figures, error: errors.length ? errors[0].slice(-2000) : null};
}"""

SETTLE_MS = 200  # plotly finishes drawing (fonts, legend) before a screenshot


def poll(fn: Callable, check: Callable, timeout: float, what: str, page=None, fail: bool = True):
    """Call ``fn()`` every 250 ms until ``check(result)`` and return the result.

    After ``timeout`` s: fail with the last result, or return None when ``fail`` is False.
    """
    deadline, result = time.monotonic() + timeout, None
    while True:
        result = fn()
        if check(result):
            return result
        if time.monotonic() >= deadline:
            break
        if page is not None:
            page.wait_for_timeout(250)
        else:
            time.sleep(0.25)
    if not fail:
        return None
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state: {result!r}"[:6000])


def figure(snapshot: dict, title_prefix: str) -> dict | None:
    """The one figure of ``snapshot`` (a :meth:`Notebook.figures` result) whose title starts with
    ``title_prefix``, or None when there is not exactly one (e.g. while a panel redraws)."""
    found = [f for f in snapshot["figures"] if f["title"].startswith(title_prefix)]
    return found[0] if len(found) == 1 else None


class Notebook:
    """A notebook whose cells have all run in JupyterLab: its page, server URL and kernel id."""

    def __init__(self, name: str, page, url: str, kernel_id: str, artifacts: Path):
        self.name, self.page, self.url, self.kernel_id, self.artifacts = name, page, url, kernel_id, artifacts
        self.prefix = name.split("_", 1)[0]  # "01" for 01_trie_and_flows.ipynb

    # ------------------------------------------------------------------ cells and figures
    def cell(self, has):
        """The code cell whose output holds ``has`` (a locator), e.g. a panel's control."""
        return self.page.locator(".jp-CodeCell", has=has)

    def figures(self, cell) -> dict:
        """``{"figures": [...], "error": traceback text or None}`` of the plotly figures in ``cell``'s output."""
        return cell.locator(".jp-Cell-outputArea").evaluate(FIGURES_JS)

    def wait_figures(self, cell, check: Callable[[dict], bool], what: str, timeout: float = 60) -> dict:
        """Poll ``cell``'s figures until ``check`` holds; fail at once if the cell shows a traceback."""
        def ready(snap):
            if snap["error"]:
                raise AssertionError(f"the panel shows an error while waiting for {what}:\n{snap['error']}")
            return check(snap)
        return poll(lambda: self.figures(cell), ready, timeout, what, self.page)

    def screenshot(self, cell, stem: str) -> Path:
        """Screenshot of ``cell``'s output as ``<artifacts>/<notebook prefix>_<stem>.png``, after a short settling."""
        self.page.wait_for_timeout(SETTLE_MS)
        path = self.artifacts / f"{self.prefix}_{stem}.png"
        cell.locator(".jp-Cell-outputArea").screenshot(path=str(path))
        return path

    # ------------------------------------------------------------------ controls
    def slider(self, cell, label: str):
        """(handle, readout) of the ipywidgets slider described ``label`` in ``cell``."""
        slider = cell.locator(".widget-slider", has=self.page.get_by_text(label, exact=True))
        return slider.locator(".noUi-handle"), slider.locator(".widget-readout")

    def press(self, handle, key: str, times: int = 1) -> None:
        """Press ``key`` ``times`` on a focused slider handle (each press is one value change)."""
        handle.scroll_into_view_if_needed()
        handle.focus()
        for _ in range(times):
            handle.press(key)

    def dropdown(self, cell, label: str):
        """The ``<select>`` of the ipywidgets Dropdown described ``label`` in ``cell``."""
        return cell.locator(".widget-dropdown", has=self.page.get_by_text(label, exact=True)).locator("select")

    def check_kernel(self) -> None:
        """The kernel that ran the cells still serves the notebook (no restart, no second kernel)."""
        assert lab.kernel_ids(self.url) == ([self.kernel_id], [self.kernel_id])

    @contextlib.contextmanager
    def control(self, stem: str) -> Iterator[None]:
        """Drive one control: on failure save ``<prefix>_<stem>_failure.png`` of the whole page; on
        success check that the notebook's kernel is still the one that ran the cells."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(self.artifacts / f"{self.prefix}_{stem}_failure.png"), full_page=False)
            raise
        self.check_kernel()


def run_all_cells(page, timeout: float) -> None:
    """Run > Run All Cells and wait until every code cell has run; fail on a traceback or a dialog."""
    # the cells must get queued ([*]) or run, else the click was lost: retry once
    for attempt in range(2):
        page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        started = poll(lambda: page.evaluate(CELLS_JS),
                       lambda r: r["state"] != "running" or any(p != "[ ]:" for p in r["prompts"]),
                       15, "Run All to start", page, fail=attempt == 1)
        if started:
            break
    cells = poll(lambda: page.evaluate(CELLS_JS), lambda r: r["state"] in ("done", "error", "dialog"), timeout,
                 "all cells to run", page)
    assert cells["state"] != "dialog", f"JupyterLab shows a dialog:\n{cells['text']}"
    assert cells["state"] == "done", f"a cell failed in JupyterLab:\n{cells['text']}"
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')


@contextlib.contextmanager
def open_notebook(playwright, source: Path, workdir: Path, artifacts: Path, env: dict | None = None,
                  run_timeout: float = 150, viewport: tuple[int, int] = (1280, 1400)) -> Iterator[Notebook]:
    """JupyterLab and Chromium for a copy of the notebook ``source``, all its cells run; yields a :class:`Notebook`.

    ``viewport``: the page size; a panel's screenshot shows all of it only if its output fits in the
    notebook's scrolling area (about 100 px less than the height). The server log is
    ``<artifacts>/jupyterlab-<prefix>.log``; if opening or running fails, the page is saved as
    ``<prefix>_failure.png``. Stale screenshots of this notebook are removed first. Prints how long
    each stage took (server, page, kernel, cells).
    """
    prefix = source.name.split("_", 1)[0]
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob(f"{prefix}_*.png"):
        old.unlink()
    root = workdir / "root"
    root.mkdir(parents=True)
    shutil.copy(source, root / source.name)
    start, times = time.monotonic(), []

    def lap(what: str) -> None:
        times.append(f"{what} {time.monotonic() - start:.1f} s")

    with lab.jupyterlab(root, workdir / "lab-state", artifacts / f"jupyterlab-{prefix}.log", env=env) as url:
        lap("server up")
        context = lab.launch_chromium(playwright, workdir / "chromium-profile", viewport)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{url}lab/tree/{source.name}")
                page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=90_000)
                lap("notebook shown")
                kernel_id = lab.wait_for_one_kernel(url, page)
                lap("kernel idle")
                run_all_cells(page, run_timeout)
                lap("cells run")
                notebook = Notebook(source.name, page, url, kernel_id, artifacts)
                notebook.check_kernel()  # the kernel that ran the cells is still the one
                print(f"\n{source.name}: " + ", ".join(times))
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(artifacts / f"{prefix}_failure.png"))
                raise
            yield notebook
        finally:
            context.close()
