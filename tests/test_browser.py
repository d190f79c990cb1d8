"""A real browser runs notebook 01 in JupyterLab and moves the reward-shaping panel's alpha slider.

JupyterLab (token off, localhost, a temporary root holding a copy of the notebook) and headless
Debian Chromium driven by Playwright, launched from ``$BROWSER_PATH`` (default /usr/bin/chromium;
Playwright never downloads a browser here). The test runs every cell from the Run menu, waits for
the kernel and the plotly figures, presses the arrow keys on the focused alpha slider handle and
checks that the target-distribution figure was redrawn with other data. Screenshots before and
after: ``test-artifacts/browser/``. It skips when Chromium or playwright is missing, except when
``CI=true``, where it fails (CI must run it).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import lab  # noqa: E402  (tests/browser/lab.py)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_trie_and_flows.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
TARGET_TITLE = "Target P(title)"  # RewardShapingPanel's distribution figure
ALPHA_LABEL = "popularity α"

# JS: the target figure's title, its data (decoded by plotly) and the SVG path of the target line.
SNAPSHOT_JS = """(prefix) => {
  const gds = [...document.querySelectorAll('.js-plotly-plot')]
    .filter(g => g.layout && g.layout.title && String(g.layout.title.text || g.layout.title).startsWith(prefix));
  if (gds.length !== 1) return {count: gds.length};
  const g = gds[0], t = g._fullData && g._fullData[0];
  const line = g.querySelector('.scatterlayer .trace path.js-line');
  return {count: 1, title: String(g.layout.title.text || g.layout.title),
          y: t ? Array.from(t.y) : null, d: line ? line.getAttribute('d') : null};
}"""

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


def require_browser() -> None:
    missing = lab.missing_requirements()
    if not missing:
        return
    reason = "browser test needs " + "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the browser test must run in CI)")
    pytest.skip(reason)


def wait_for(page, js: str, arg, check, timeout: float, what: str, fail: bool = True):
    """Poll ``js(arg)`` in the page until ``check(result)`` and return the result.

    After ``timeout`` s: fail with the last result, or return None when ``fail`` is False.
    """
    deadline, result = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        result = page.evaluate(js, arg)
        if check(result):
            return result
        page.wait_for_timeout(250)
    if not fail:
        return None
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state: {result!r}")


@pytest.mark.slow
def test_alpha_slider_redraws_the_target_in_jupyterlab(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    env = {"FLOWER_LITE_QUICK": "1"}
    with lab.jupyterlab(root, tmp_path / "lab-state", ARTIFACTS / "jupyterlab.log", env=env) as url, \
            sync_playwright() as pw:
        context = lab.launch_chromium(pw, tmp_path / "chromium-profile")
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.set_default_timeout(60_000)
            page.goto(f"{url}lab/tree/{NOTEBOOK}")
            page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell", timeout=90_000)
            kernel_id = lab.wait_for_one_kernel(url, page)

            # Run > Run All Cells; the cells must get queued ([*]) or run, else the click was lost: retry once
            for attempt in range(2):
                page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
                started = wait_for(page, CELLS_JS, None,
                                   lambda r: r["state"] != "running" or any(p != "[ ]:" for p in r["prompts"]),
                                   15, "Run All to start", fail=attempt == 1)
                if started:
                    break
            cells = wait_for(page, CELLS_JS, None, lambda r: r["state"] in ("done", "error", "dialog"), 120,
                             "all cells to run")
            assert cells["state"] != "dialog", f"JupyterLab shows a dialog:\n{cells['text']}"
            assert cells["state"] == "done", f"a cell failed in JupyterLab:\n{cells['text']}"
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            assert lab.kernel_ids(url) == ([kernel_id], [kernel_id])  # the kernel that ran the cells is still the one

            slider = page.locator(".widget-slider", has=page.get_by_text(ALPHA_LABEL, exact=True))
            handle, readout = slider.locator(".noUi-handle"), slider.locator(".widget-readout")
            handle.scroll_into_view_if_needed()
            alpha_before = float(readout.inner_text())
            # the figure of the panel's current state (the notebook's last cell moved the sliders)
            before = wait_for(page, SNAPSHOT_JS, TARGET_TITLE,
                              lambda r: r["count"] == 1 and f"α = {alpha_before:.2f}, β = 0.00" in r["title"] and r["d"],
                              30, f"the target distribution figure for α = {alpha_before:.2f}")
            assert page.locator(".js-plotly-plot").count() >= 8  # tables, icicle, bars, panel figures
            panel = page.locator(".jp-Cell", has=slider).locator(".jp-Cell-outputArea")
            page.wait_for_timeout(500)  # let plotly finish drawing before the screenshot
            panel.screenshot(path=str(ARTIFACTS / "01_alpha_before.png"))

            handle.focus()
            for _ in range(12):  # 12 steps of 0.05
                handle.press("ArrowLeft")
            page.wait_for_timeout(300)
            alpha_after = float(readout.inner_text())
            assert alpha_after == pytest.approx(alpha_before - 0.6), (alpha_before, alpha_after)

            after = wait_for(page, SNAPSHOT_JS, TARGET_TITLE,
                             lambda r: r["count"] == 1 and f"α = {alpha_after:.2f}" in (r["title"] or "") and r["d"],
                             30, f"the target figure redrawn for α = {alpha_after:.2f}")
            page.wait_for_timeout(500)  # let plotly finish drawing before the screenshot
            panel.screenshot(path=str(ARTIFACTS / "01_alpha_after.png"))

            assert len(after["y"]) == len(before["y"])
            assert after["y"] != before["y"] and after["d"] != before["d"]
            # a smaller alpha flattens the target: less mass on the most probable title
            assert after["y"][0] < before["y"][0]
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(ARTIFACTS / "01_failure.png"))
            raise
        finally:
            context.close()
    print(f"browser test: {time.monotonic() - start:.1f} s")
