"""Helpers of tests/test_browser.py: a throw-away JupyterLab server and a headless system Chromium."""
