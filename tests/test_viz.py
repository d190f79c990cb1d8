"""Figures of flower_lite.viz carry the data the math says (flows, token rewards, distributions)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from flower_lite import metrics, viz
from flower_lite.trie import Trie

REPO = Path(__file__).resolve().parents[1]
EOS = 0
WORDS = {0: "</s>", 1: "Star", 2: " Wars", 3: " Trek", 4: "Dune", 5: " II"}


def text(t: int) -> str:
    return WORDS.get(t, f"w{t}")


@pytest.fixture
def small_trie() -> Trie:
    # "Star Wars" twice (duplicate title), "Star" is a prefix of "Star Wars", "Dune II" extends "Dune".
    seqs = [[1, 2], [1, 3], [1], [4], [1, 2], [4, 5]]
    return Trie.from_sequences(seqs, [1.0, 2.0, 3.0, 4.0, 5.0, 0.5], EOS)


def _tree(trace) -> tuple[dict, dict]:
    ids, parents, values = list(trace.ids), list(trace.parents), np.asarray(trace.values, dtype=float)
    value = dict(zip(ids, values))
    kids: dict[str, list[str]] = {}
    for i, p in zip(ids, parents):
        if p:
            kids.setdefault(p, []).append(i)
    return value, kids


def _check_sums(trace) -> None:
    value, kids = _tree(trace)
    for parent, children in kids.items():
        assert math.isclose(sum(value[c] for c in children), value[parent], rel_tol=1e-12), parent


def test_trie_figure_sizes_are_flows(small_trie):
    fig = viz.trie_figure(small_trie, text, max_depth=3, max_children=12)
    (trace,) = fig.data
    assert isinstance(trace, go.Icicle) and trace.branchvalues == "total"
    assert trace.values[0] == pytest.approx(15.5)  # root = Z = sum of rewards
    _check_sums(trace)
    # every drawn node's box equals its exact flow F(s), and customdata holds F(s)/Z and r(a|s)
    flow = small_trie.log_flow.exp().numpy()
    for ident, val, (node, share, r) in zip(trace.ids, trace.values, trace.customdata):
        if ident.startswith("n"):
            n = int(ident[1:])
            assert val == pytest.approx(flow[n]) and share == pytest.approx(flow[n] / 15.5)
            if n:
                assert r == pytest.approx(flow[n] / flow[int(small_trie.structure.parent[n])])
    labels = list(trace.labels)
    assert viz.END_LABEL in labels and "Star" in labels and " Wars" in labels
    # the colour is log r(a|s): "Star" carries (1 + 2 + 3 + 5) / 15.5 of the root's flow
    star = labels.index("Star")
    assert trace.marker.colors[star] == pytest.approx(math.log(11 / 15.5))


def test_trie_figure_pools_small_children_and_cuts_depth():
    rng = np.random.default_rng(0)
    seqs = [[int(a), int(b), int(c)] for a, b, c in rng.integers(1, 40, size=(2000, 3))]
    trie = Trie.from_sequences(seqs, rng.random(2000), EOS)
    fig = viz.trie_figure(trie, lambda t: f"w{t}", max_depth=2, max_children=5, kind="sunburst")
    (trace,) = fig.data
    assert isinstance(trace, go.Sunburst)
    value, kids = _tree(trace)
    assert len(kids["n0"]) == 6  # 5 largest children + "(other)"
    assert any(lab.startswith(viz.OTHER_LABEL) for lab in trace.labels)
    assert trace.values[0] == pytest.approx(math.exp(trie.log_z), rel=1e-12)  # pooling keeps the sum
    _check_sums(trace)
    depth = {"n0": 0}
    for i, p in zip(trace.ids, trace.parents):
        if p:
            depth[i] = depth[p] + 1
    assert max(depth.values()) == 2


def test_trie_figure_rejects_bad_kind(small_trie):
    with pytest.raises(ValueError, match="kind"):
        viz.trie_figure(small_trie, text, kind="treemap")


def test_distribution_figure_overlays_models_ranked_by_target():
    p = np.array([1.0, 5.0, 3.0, 1.0])
    q = {"sft": np.array([0.1, 0.6, 0.2, 0.1]), "flower": torch.tensor([0.25, 0.25, 0.25, 0.25])}
    fig = viz.distribution_figure(p, q, labels=["a", "b", "c", "d"])
    assert [t.name for t in fig.data] == ["target P", "sft", "flower"]
    assert np.allclose(fig.data[0].y, [0.5, 0.3, 0.1, 0.1])  # normalised and ranked by P
    assert np.allclose(fig.data[1].y, [0.6, 0.2, 0.1, 0.1])  # models in the target's order
    assert list(fig.data[0].text) == ["b", "c", "a", "d"]
    assert fig.layout.yaxis.type == "log"
    assert len(viz.distribution_figure(p, q, top=2).data[2].y) == 2
    with pytest.raises(ValueError, match="expected 4"):
        viz.distribution_figure(p, {"bad": np.ones(3)})


def test_lorenz_figure_shows_gini():
    dists = {"skewed": np.array([0.0, 0.0, 1.0, 9.0]), "flat": np.ones(4)}
    fig = viz.lorenz_figure(dists)
    assert len(fig.data) == 3  # one curve each + equality
    assert f"{metrics.gini(dists['skewed']):.3f}" in fig.data[0].name
    assert np.allclose(fig.data[1].y, np.linspace(0, 1, 5))
    assert fig.data[0].y[-1] == pytest.approx(1.0)


def test_exposure_by_group_figure():
    fig = viz.exposure_by_group_figure(np.array([0.5, 0.3, 0.2]), {"sft": [0.8, 0.15, 0.05]})
    assert [type(t) for t in fig.data] == [go.Bar, go.Bar]
    assert list(fig.data[0].x) == ["1", "2", "3"]
    assert np.allclose(fig.data[1].y, [0.8, 0.15, 0.05])
    assert "most popular" in fig.layout.xaxis.title.text


def test_training_curves_from_histories_and_jsonl(tmp_path):
    hist = [{"step": s, "loss": 1.0 / (s + 1), "kl": 2.0 ** -s} for s in range(5)]
    log = tmp_path / "run_a.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in hist[:3]) + "\n\n" + json.dumps({"step": 3, "lr": 0.1}) + "\n")
    assert len(viz.read_jsonl(log)) == 4
    fig = viz.training_curves_figure({"toy": hist, "llm": log}, keys=("loss", "kl"))
    assert len(fig.data) == 4  # 2 keys x 2 runs
    assert list(fig.data[0].y) == [r["loss"] for r in hist]
    assert len(fig.data[1].x) == 3  # the record without "loss" is skipped
    assert fig.layout.yaxis.type == "linear" and fig.layout.yaxis2.type == "log"
    single = viz.training_curves_figure(log, keys=("kl",))
    assert single.data[0].name == "run_a"


def test_topk_popularity_figure_mean_rank_per_position():
    counts = np.array([10, 50, 30, 1])  # popularity ranks: item 1 -> 1, 2 -> 2, 0 -> 3, 3 -> 4
    fig = viz.topk_popularity_figure({"m": [[1, 0], [2, -1], [3, 1]]}, counts)
    assert np.allclose(fig.data[0].y, [(1 + 2 + 4) / 3, (3 + 1) / 2])  # the invalid -1 is skipped
    assert fig.data[1].y[0] == pytest.approx(2.5)  # uniform reference (N + 1) / 2
    counts_fig = viz.topk_popularity_figure({"m": [[1, 0]]}, counts, measure="count")
    assert list(counts_fig.data[0].y) == [50, 10]


def test_telescoping_table(small_trie):
    rows = viz.telescoping_table(small_trie, token_text=text)
    assert len(rows) == small_trie.num_items
    assert max(r["abs_err"] for r in rows) < 1e-12
    by_item = {r["item"]: r for r in rows}
    assert by_item[0]["title"] == "Star Wars" and by_item[0]["duplicates"] == 2
    assert by_item[0]["prod_r"] == pytest.approx((1 + 5) / 15.5)  # duplicates: the pooled share
    assert by_item[0]["item_share"] == pytest.approx(1 / 15.5)
    assert by_item[2]["prod_r"] == pytest.approx(3 / 15.5)  # "Star" alone, a prefix of "Star Wars"
    assert [r["item"] for r in viz.telescoping_table(small_trie, [3, 1])] == [3, 1]
    zero = Trie.from_sequences([[1, 2], [1, 3], [4]], [0.0, 1.0, 0.0], EOS)  # zero rewards: products are 0
    assert [r["prod_r"] for r in viz.telescoping_table(zero)] == [0.0, 1.0, 0.0]
    table = viz.table_figure(rows)
    assert isinstance(table.data[0], go.Table) and len(table.data[0].cells.values) == len(rows[0])


def test_path_rewards_figure_telescopes(small_trie):
    fig = viz.path_rewards_figure(small_trie, 1, text)
    bars, running, level = fig.data
    assert len(bars.y) == 3 and "end" in bars.x[-1]
    assert running.y[-1] == pytest.approx(math.log(2 / 15.5)) == pytest.approx(level.y[0])


def test_html_export_contains_the_figure_data(tmp_path, small_trie):
    fig = viz.trie_figure(small_trie, text)
    path = viz.save_html(fig, tmp_path / "trie.html")
    html = path.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and '"type":"icicle"' in html and "Star" in html
    assert "plotly.js v" in html and "src=\"https://cdn.plot.ly" not in html  # plotly.js embedded: offline


def png_exporter() -> str | None:
    """The Chromium kaleido would drive (its own search: ``$BROWSER_PATH``, PATH, a choreographer download), or
    None without kaleido or a browser."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def test_save_png_or_html_fallback(tmp_path, require):
    """With kaleido and a Chromium save_png writes a PNG; without one it writes HTML instead and warns (a
    missing exporter fails under CI=true, which installs Chromium)."""
    fig = go.Figure(go.Bar(y=[1, 2]))
    exporter = png_exporter()
    if exporter is None:
        require.fail_in_ci("a PNG exporter: kaleido and a Chromium", "apt-get install chromium, or set BROWSER_PATH")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = viz.save_png(fig, tmp_path / "bar.png")
    failed = [str(w.message) for w in record if "PNG export failed" in str(w.message)]
    if exporter is not None:
        assert out == tmp_path / "bar.png" and not failed, failed
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert out == tmp_path / "bar.html" and failed and not (tmp_path / "bar.png").exists()
        assert "<html>" in out.read_text() and "plotly" in out.read_text()


def test_setup_notebook_rendering(monkeypatch):
    before = pio.renderers.default
    try:
        assert viz.setup_notebook_rendering() == "plotly_mimetype+notebook"
        assert pio.renderers.default == "plotly_mimetype+notebook"
        monkeypatch.setitem(sys.modules, "google.colab", object())
        assert viz.setup_notebook_rendering() == "colab"
    finally:
        pio.renderers.default = before


def test_viz_imports_nothing_that_trains():
    code = "import sys, flower_lite.viz; bad = [m for m in ('flower_lite.toy', 'flower_lite.losses', 'flower_lite.tabular', 'flower_lite.train', 'transformers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def _execute(nb):
    from nbconvert.preprocessors import ExecutePreprocessor
    ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(REPO / "notebooks")}})
    return nb


def notebook_tools(require):
    """nbformat (nbconvert beside it), installed with the notebooks extra (skips without, fails under CI=true)."""
    require(all(importlib.util.find_spec(m) for m in ("nbformat", "nbconvert")), "nbformat and nbconvert",
            "pip install -e '.[notebooks]' (scripts/setup.sh installs it)")
    import nbformat

    return nbformat


def _html_checker():
    """notebooks/conftest.py's check, run by nbmake on every notebook of the test command."""
    spec = importlib.util.spec_from_file_location("notebooks_conftest", REPO / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_notebook_01_exports_to_html_with_figures(monkeypatch, require):
    """Notebook 01 executed and exported to HTML: the trie icicle and its other figures are in it."""
    nbformat = notebook_tools(require)
    monkeypatch.setenv("FLOWER_LITE_QUICK", "1")
    nb = nbformat.read(REPO / "notebooks" / "01_trie_and_flows.ipynb", as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code"), "commit the notebook clean"
    path = _html_checker().check_html_export(_execute(nb), "01_trie_and_flows")
    html = path.read_text(encoding="utf-8")
    assert html.count("Plotly.newPlot") >= 5
    assert '"type":"icicle"' in html and "Title trie" in html


def test_html_check_catches_a_figure_without_its_html(tmp_path, monkeypatch, require):
    """The export check that nbmake runs fails when a figure reaches the notebook only as JSON
    (a renderer without the HTML bundle: JupyterLab draws it, an exported HTML file does not)."""
    nbformat = notebook_tools(require)
    checker = _html_checker()
    monkeypatch.setattr(checker, "ARTIFACTS", tmp_path)
    show = ("import plotly.graph_objects as go, plotly.io as pio\n"
            "from flower_lite import viz\n"
            "viz.setup_notebook_rendering({renderer!r})\n"
            "go.Figure(go.Bar(x=[1, 2], y=[3, 4])).show()")
    good = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(show.format(renderer=None))])
    assert checker.check_html_export(_execute(good), "good").exists()
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(show.format(renderer="plotly_mimetype"))])
    with pytest.raises(AssertionError, match="1 plotly figures displayed, 0 in the exported HTML"), \
            pytest.warns(UserWarning, match="not able to be represented"):  # nbconvert: no HTML for the JSON
        checker.check_html_export(_execute(bad), "bad")


def test_token_rewards_figure_sums_to_one(small_trie):
    fig = viz.token_rewards_figure(small_trie, [1], text)  # state "Star": stop, " Wars" or " Trek"
    (bars,) = fig.data
    assert sum(bars.y) == pytest.approx(1.0)
    assert list(bars.customdata) == [2, EOS, 3]  # " Wars" 6, T 3, " Trek" 2 (largest first)
    assert np.allclose(bars.y, [6 / 11, 3 / 11, 2 / 11])
    pooled = viz.token_rewards_figure(small_trie, [1], text, max_children=1)
    assert pooled.data[0].x[-1].startswith(viz.OTHER_LABEL) and sum(pooled.data[0].y) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a state"):
        viz.token_rewards_figure(small_trie, [9], text)


def test_stop_log_probs_figure_shows_means_and_ranges():
    summaries = {"T = eos": {"complete_mean": -12.1, "complete_min": -20.0, "complete_max": -5.0,
                             "internal_mean": -21.4, "internal_min": -34.0, "internal_max": -5.0},
                 "T = newline": {"complete_mean": -1.0, "complete_min": -3.0, "complete_max": -0.1,
                                 "internal_mean": -9.0, "internal_min": -15.0, "internal_max": -2.0}}
    fig = viz.stop_log_probs_figure(summaries)
    complete, internal = fig.data
    assert list(complete.x) == ["T = eos", "T = newline"] and list(internal.y) == [-21.4, -9.0]
    assert internal.error_y.arrayminus[0] == pytest.approx(34.0 - 21.4) and internal.error_y.array[1] == pytest.approx(7.0)
    assert {round(s.y0, 1) for s in fig.layout.shapes} == {0.0, -15.0}
