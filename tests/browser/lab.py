"""A throw-away JupyterLab server and a headless system Chromium driven by Playwright.

Nothing here downloads a browser: Playwright launches the Chromium at ``$BROWSER_PATH`` (default
``/usr/bin/chromium``, Debian's ``chromium`` package; kaleido reads the same variable).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# JupyterLab user settings for a quiet, deterministic page: every cell stays in the DOM (no
# virtual scrolling), the notebook's kernel starts without a "Select Kernel" dialog, no news or
# update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                   "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def chromium_path() -> str:
    return os.environ.get("BROWSER_PATH") or DEFAULT_CHROMIUM


def missing_requirements() -> list[str]:
    """What the browser test lacks here (empty when it can run)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[browser]')")
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        missing.append("jupyterlab (pip install -e '.[notebooks]')")
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        missing.append(f"a Chromium at {path} (apt-get install chromium, or set BROWSER_PATH)")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
        return r.read()


@contextlib.contextmanager
def jupyterlab(root_dir: Path, state_dir: Path, log_path: Path, env: dict | None = None,
               start_timeout: float = 60.0) -> Iterator[str]:
    """Run ``jupyter lab`` on a free localhost port, token off, in ``root_dir``; yield its base URL.

    Settings, workspaces, runtime files and config live under ``state_dir`` (nothing of the
    user's JupyterLab state is read or written). On exit the server is asked to shut down (which
    stops its kernels); its process group is killed if it is still alive after 10 s.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = state_dir / "settings"
    for rel, values in LAB_SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    full_env = {
        **os.environ, **(env or {}),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(state_dir / "workspaces"),
        "JUPYTER_CONFIG_DIR": str(state_dir / "config"),
        "JUPYTER_RUNTIME_DIR": str(state_dir / "runtime"),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False", "--ServerApp.token=", "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True", "--ServerApp.allow_root=True",
        "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, cwd=root_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {proc.returncode}; see {log_path}")
            try:
                _get(url + "api/status")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jupyter lab did not answer on {url} within {start_timeout:.0f} s; see {log_path}")
                time.sleep(0.3)
        yield url
    finally:
        _stop(proc, url)
        log.close()


def kernel_ids(url: str) -> tuple[list[str], list[str]]:
    """Ids of the server's running kernels, and of the kernels of its sessions."""
    kernels = [k["id"] for k in json.loads(_get(url + "api/kernels"))]
    return kernels, [s["kernel"]["id"] for s in json.loads(_get(url + "api/sessions")) if s.get("kernel")]


def wait_for_one_kernel(url: str, page, stable_s: float = 3.0, timeout: float = 90.0) -> str:
    """Wait until the server runs exactly one kernel, the notebook's, unchanged for ``stable_s`` s
    while the page shows it idle; return its id.

    Opening a notebook, JupyterLab sometimes starts a kernel and replaces it by another a second
    later (seen here on a slow machine); a "Run All" sent before that goes to the dead kernel.
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        kernels, in_sessions = kernel_ids(url)
        idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() == 1
        state = (kernels, in_sessions, idle)
        if state != last or not (idle and len(kernels) == 1 and in_sessions == kernels):
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= stable_s:
            return kernels[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no single idle kernel after {timeout:.0f} s: kernels, sessions, idle = {last}")
        page.wait_for_timeout(250)


def _stop(proc: subprocess.Popen, url: str) -> None:
    if proc.poll() is None:
        with contextlib.suppress(Exception):  # the server stops its kernels on /api/shutdown
            urllib.request.urlopen(urllib.request.Request(url + "api/shutdown", method="POST"), timeout=5)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started; its kernels (own sessions) exit with their parent
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def launch_chromium(playwright, user_data_dir: Path, viewport: tuple[int, int] = (1280, 1400)):
    """A headless persistent context of the system Chromium with a fresh ``user_data_dir``."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": viewport[0], "height": viewport[1]}, timeout=60_000,
    )
