"""The widget panels move their figures in the direction the math says, without rebuilding the trie."""
from __future__ import annotations

import numpy as np
import pytest

from flower_lite import widgets
from flower_lite.data import load_default_catalog
from flower_lite.tokenizer import WordTokenizer
from flower_lite.toy import fit_toy
from flower_lite.trie import Trie


@pytest.fixture(scope="module")
def catalog_bits():
    catalog = load_default_catalog()
    tok = WordTokenizer.fit(catalog.titles)
    sequences = [tok.encode(t) for t in catalog.titles]
    prefs = np.random.default_rng(0).dirichlet(np.full(catalog.num_items, 0.3), size=4)
    return catalog, tok, sequences, prefs


def make_panel(catalog_bits, with_prefs=True, **kw) -> widgets.RewardShapingPanel:
    catalog, tok, sequences, prefs = catalog_bits
    return widgets.RewardShapingPanel(catalog.titles, catalog.counts(), sequences, tok.eos_id, tok.token_text,
                                      prefs if with_prefs else None, **kw)


def target_trace(panel):
    return np.asarray(panel.figures()["target"].data[0].y)


def trie_values(panel) -> dict:
    """Box sizes of the trie figure by node id."""
    trace = panel.figures()["trie"].data[0]
    return dict(zip(trace.ids, trace.values))


def test_initial_state(catalog_bits):
    catalog = catalog_bits[0]
    panel = make_panel(catalog_bits)
    assert panel.target().shape == (len(catalog.distinct_titles()),)
    assert panel.target().sum() == pytest.approx(1.0)
    assert set(panel.figures()) == {"target", "trie"}
    assert np.allclose(target_trace(panel), np.sort(panel.target())[::-1])  # the figure shows the target
    assert panel.widget is not None and panel.user is not None
    # alpha = 1, beta = 0, w = 0: the target is the smoothed popularity (c(i) + 1) / Z
    c = catalog.counts() + 1.0
    assert np.allclose(panel.item_target(), c / c.sum())


def test_raising_alpha_raises_the_head_share(catalog_bits):
    panel = make_panel(catalog_bits)
    original = panel.trie
    head, fig_before, values_before = panel.head_share(), target_trace(panel), trie_values(panel)
    panel.alpha.value = 1.8  # setting the value programmatically triggers the update
    assert panel.head_share() > head
    assert target_trace(panel)[0] > fig_before[0]  # the most probable title gets more mass
    values_after = trie_values(panel)
    common = [k for k in values_before if k in values_after and k != "n0"]
    assert not np.allclose([values_after[k] for k in common], [values_before[k] for k in common])
    assert panel.trie is not original and panel.trie.structure is original.structure  # re-weighted, not rebuilt
    panel.alpha.value = 0.0
    assert np.allclose(panel.item_target(), 1 / len(panel.titles))  # alpha = 0: uniform


def test_beta_one_makes_the_target_uniform(catalog_bits):
    panel = make_panel(catalog_bits, alpha=1.5)
    original_structure = panel.trie.structure
    panel.beta.value = 1.0
    n = len(panel.titles)
    assert np.allclose(panel.item_target(), 1 / n)
    # over titles, a duplicate title pools its items: P(title) = (number of its items) / N
    per_title = np.bincount(panel.trie.item_title.numpy()) / n
    assert np.allclose(panel.target(), per_title)
    assert np.allclose(np.unique(target_trace(panel)), np.unique(per_title))
    assert panel.trie.structure is original_structure
    panel.beta.value = 0.5
    assert 0 < panel.head_share() < make_panel(catalog_bits, alpha=1.5).head_share()


def test_personalisation_and_user_change_the_target(catalog_bits):
    panel = make_panel(catalog_bits)
    base = panel.target().copy()
    panel.user.value = 1  # with w = 0 the user does not matter
    assert np.allclose(panel.target(), base)
    panel.weight.value = 1.0
    user1 = panel.target().copy()
    assert not np.allclose(user1, base)
    fig1 = target_trace(panel)
    panel.user.value = 2
    assert not np.allclose(panel.target(), user1)
    assert not np.allclose(target_trace(panel), fig1)
    # add_log_s: the user's favourite item gains relative to popularity
    prefs = catalog_bits[3]
    fav = int(np.argmax(prefs[2]))
    pop = make_panel(catalog_bits).item_target()
    assert panel.item_target()[fav] / pop[fav] > 1.0
    assert panel.trie.structure is panel.base_trie.structure


def test_div_s_variant_blends(catalog_bits):
    """log R_u(i) = (1 - w) log p_pop(i) + w log p_pop(i) / s_ui, s_ui = (p_ui - mean_j p_uj) / (max - min) + 1,
    p_pop(i) ∝ c(i) + 1 (alpha 1, eps 1): the panel's target is R_u / Z_u, pooled over duplicate titles."""
    catalog, _, _, prefs = catalog_bits
    panel = make_panel(catalog_bits, variant="div_s", user=2)
    c = catalog.counts().astype(np.float64) + 1.0
    log_pop = np.log(c / c.sum())
    p = prefs[2]
    s = np.maximum((p - p.mean()) / (p.max() - p.min()) + 1.0, 1e-6)
    assert panel.weight.max == 1.0
    for w in (0.0, 0.4, 1.0):
        panel.weight.value = w
        log_r = (1 - w) * log_pop + w * log_pop / s
        expected = np.exp(log_r - log_r.max())
        expected /= expected.sum()
        np.testing.assert_allclose(panel.item_target(), expected, rtol=1e-9, atol=1e-15)
        titles = np.bincount(panel.base_trie.item_title.numpy(), weights=expected)
        np.testing.assert_allclose(panel.target(), titles, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="variant"):
        make_panel(catalog_bits, variant="logp")


def test_without_prefs_there_is_no_user(catalog_bits):
    panel = make_panel(catalog_bits, with_prefs=False)
    assert panel.user is None and panel.weight.disabled
    base = panel.target().copy()
    panel.weight.value = 1.0  # ignored without preferences
    assert np.allclose(panel.target(), base)


def test_train_panel_runs_and_plots():
    trie = Trie.from_sequences([[1, 2], [1, 3], [4]], [3.0, 1.0, 2.0], 0)
    panel = widgets.TrainPanel(trie, fit_toy, steps=10, loss="sft", progress=False)
    assert panel.figures() == {}
    run = panel.train()
    assert len(run.history) == 2  # steps 0 and 10
    panel.loss.value = "db"
    panel.train()
    assert list(panel.runs) == ["sft #1", "db #2"]
    figs = panel.figures()
    assert len(figs["curves"].data) == 2 * 2  # (loss, kl) x 2 runs
    assert [t.name for t in figs["distribution"].data] == ["target P", "sft #1", "db #2"]
    assert np.allclose(sorted(figs["distribution"].data[0].y, reverse=True), sorted(trie.title_log_probs().exp().numpy(), reverse=True))
    panel.clear_runs()
    assert panel.runs == {} and panel.figures() == {}


def test_train_panel_follows_a_trie_callable(catalog_bits):
    shaping = make_panel(catalog_bits, with_prefs=False)
    panel = widgets.TrainPanel(lambda: shaping.trie, fit_toy, steps=10, loss="sft", progress=False)
    shaping.alpha.value = 0.0
    panel.train()
    assert np.allclose(panel.figures()["distribution"].data[0].y, np.sort(shaping.target())[::-1])


def test_mime_bundle_of_a_figure_does_not_display_it(catalog_bits):
    fig = make_panel(catalog_bits, with_prefs=False).figures()["target"]
    bundle = widgets.mime_bundle(fig)
    assert "application/vnd.plotly.v1+json" in bundle and "text/plain" in bundle


def test_run_explorer_filters_cached_runs_and_measures_each(tmp_path):
    from flower_lite import metrics

    rng = np.random.default_rng(0)
    target = rng.dirichlet(np.ones(30))
    close, far = 0.9 * target + 0.1 / 30, rng.dirichlet(np.ones(30) * 0.2)
    widgets.save_run(tmp_path, "flower θ=0.9", close, theta=0.9, variant="div_s")
    widgets.save_run(tmp_path, "flower θ=0.995", far, theta=0.995, variant="div_s")
    widgets.save_run(tmp_path, "logp", far, theta=0.995, variant="logp")
    explorer = widgets.RunExplorer.from_folder(tmp_path, target)
    assert set(explorer.filters) == {"theta", "variant"}
    assert explorer.selected.value == ("flower θ=0.9", "flower θ=0.995", "logp")
    assert len(explorer.figures()["distribution"].data) == 1 + 3  # the target and each run

    explorer.filters["theta"].value = "0.995"  # moving a filter re-selects and redraws
    assert explorer.selected.value == ("flower θ=0.995", "logp")
    explorer.filters["variant"].value = "div_s"
    assert explorer.selected.value == ("flower θ=0.995",)
    assert [t.name for t in explorer.figures()["distribution"].data][1:] == ["flower θ=0.995"]
    explorer.filters["theta"].value = explorer.ANY
    rows = {r["run"]: r for r in explorer.table()}
    assert set(rows) == {"flower θ=0.9", "flower θ=0.995"}
    assert rows["flower θ=0.9"]["kl"] == pytest.approx(metrics.kl_divergence(target, close))
    assert rows["flower θ=0.9"]["kl"] < rows["flower θ=0.995"]["kl"]  # the closer run measures closer
    assert rows["flower θ=0.9"]["theta"] == 0.9 and rows["flower θ=0.9"]["coverage"] == 30
    explorer.selected.value = ("flower θ=0.9",)  # picking runs by hand redraws too
    assert [t.name for t in explorer.figures()["distribution"].data][1:] == ["flower θ=0.9"]

    explorer.selected.value = ()  # deselecting every run, or a filter no run matches, draws the target alone
    assert [t.name for t in explorer.figures()["distribution"].data][1:] == []
    assert "no run selected" in str(explorer.figures()["table"].data[0].cells.values)
    explorer.filters["theta"].value, explorer.filters["variant"].value = "0.9", "logp"
    lorenz = [t.name for t in explorer.figures()["lorenz"].data]
    assert explorer.selected.value == () and len(lorenz) == 2 and lorenz[0].startswith("target")


def test_cached_runs_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="probabilities"):
        widgets.save_run(tmp_path, "nan", [0.5, float("nan")])
    with pytest.raises(ValueError, match="plain file name"):
        widgets.save_run(tmp_path, "../escape", [1.0])
    with pytest.raises(FileNotFoundError, match="no run folder"):
        widgets.load_runs(tmp_path / "missing")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt run file .*broken.json"):
        widgets.load_runs(tmp_path)
    with pytest.raises(ValueError, match="titles"):
        widgets.RunExplorer({"short": (np.ones(3) / 3, {})}, np.ones(4) / 4)
