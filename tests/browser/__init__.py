"""Helpers of tests/test_browser.py: a throw-away JupyterLab server and a headless system Chromium
(``lab``), and a notebook run in them whose figures and widgets the tests read and drive (``notebook``)."""
