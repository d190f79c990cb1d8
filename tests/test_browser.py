"""A real browser runs notebooks 01 and 02 in JupyterLab and drives every control of their panels.

Per notebook one JupyterLab server (token off, localhost, a temporary root holding a copy of the
notebook) and one headless Debian Chromium driven by Playwright, launched from ``$BROWSER_PATH``
(default /usr/bin/chromium; Playwright never downloads a browser here). Every cell runs once, in
quick mode (``FLOWER_LITE_QUICK=1``), from the Run menu; then the tests of that notebook drive its
controls one after the other, as a user does (arrow, Page and Home/End keys on slider handles,
picking dropdown entries, clicking list options and buttons), and check that the panel's plotly
figures were redrawn with the data that control should produce:

* notebook 01, ``RewardShapingPanel``: popularity α, uniform mix β and personalisation w sliders
  and the user dropdown -> the target distribution figure;
* notebook 02, ``RunExplorer``: its filters (``loss``, ``sft_weight``, ``subtb_lambda``, ``n``) and runs list ->
  its distribution, Lorenz and table figures; ``TrainPanel``: the loss dropdown, the θ slider and
  the train button -> the training-curve and distribution figures gain the new run.

The tests of one notebook share its page (class-scoped fixtures) and run in the order written, each
starting from the state the previous one left. Screenshots of the panel before and after each
control: ``test-artifacts/browser/<notebook>_<control>_{before,after}.png`` (a failure adds
``<notebook>_<control>_failure.png`` of the page). The module skips when Chromium or playwright is
missing, except when ``CI=true``, where it fails (CI must run it): the rule of tests/conftest.py.
"""
from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import lab  # noqa: E402  (tests/browser/)
from browser.notebook import figure, open_notebook, poll  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
ENV = {"FLOWER_LITE_QUICK": "1"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pw(require):
    """Playwright, once for the module (each notebook launches its own Chromium); skips without it or
    without Chromium, fails instead under CI=true (tests/conftest.py)."""
    missing = lab.missing_requirements()
    require(not missing, "; ".join(missing))  # each entry says how to get it
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    with sync_playwright() as p:
        yield p
    print(f"\nbrowser tests: {time.monotonic() - start:.1f} s")


def read_number(readout) -> float:
    return float(readout.inner_text())


# ipywidgets draws the spaces of option labels as no-break spaces
OPTIONS_JS = "s => [...s.options].map(o => o.text.replace(/\\u00a0/g, ' '))"
SELECTED_JS = "s => [...s.selectedOptions].map(o => o.text.replace(/\\u00a0/g, ' '))"


def option_texts(select) -> list[str]:
    return select.evaluate(OPTIONS_JS)


def selected_text(select) -> str:
    return select.evaluate(SELECTED_JS)[0]


def choose(select, label: str) -> None:
    """Pick the option labelled ``label`` of a dropdown, as a user does."""
    select.select_option(index=option_texts(select).index(label))


# ====================================================================== notebook 01
TARGET = "Target P(title)"  # RewardShapingPanel's distribution figure


def log_gap(fig) -> tuple[float, set[str]]:
    """The widest gap between consecutive probabilities of a ranked distribution figure's target
    (decades of the log scale) and the titles below it."""
    t = fig["traces"][0]
    ys = [math.log10(v) for v in t["y"]]
    gaps = [a - b for a, b in zip(ys, ys[1:])]
    k = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[k], set(t["text"][k + 1:])


class TestNotebook01RewardPanel:
    """Notebook 01's reward-shaping panel; its last cell left α = 1.6, β = 0, w = 0, user 0."""

    @pytest.fixture(scope="class")
    @classmethod
    def nb(cls, pw, tmp_path_factory):
        with open_notebook(pw, REPO / "notebooks" / "01_trie_and_flows.ipynb", tmp_path_factory.mktemp("nb01"),
                           ARTIFACTS, env=ENV, run_timeout=120) as nb:
            yield nb

    @pytest.fixture(scope="class")
    @classmethod
    def cell(cls, nb):
        return nb.cell(nb.page.get_by_text("popularity α", exact=True))

    @staticmethod
    def target(nb, cell, title_has: str, what: str) -> dict:
        """The drawn target figure once its title contains ``title_has`` (the panel's state)."""
        def ready(snap):
            f = figure(snap, TARGET)
            return f is not None and title_has in f["title"] and f["paths"] and f["traces"][0]["y"]
        snap = nb.wait_figures(cell, ready, what, timeout=30)
        return figure(snap, TARGET)

    def test_alpha_slider_sharpens_and_flattens_the_target(self, nb, cell):
        with nb.control("alpha"):
            handle, readout = nb.slider(cell, "popularity α")
            alpha_before = read_number(readout)
            assert alpha_before >= 0.6
            before = self.target(nb, cell, f"α = {alpha_before:.2f}, β = 0.00",
                                 f"the target distribution figure for α = {alpha_before:.2f}")
            assert nb.page.locator(".js-plotly-plot").count() >= 8  # tables, icicle, bars, panel figures
            nb.screenshot(cell, "alpha_before")

            nb.press(handle, "PageDown", 2)  # 2 pages of 5 steps of 0.05
            nb.press(handle, "ArrowLeft", 2)  # and 2 steps
            alpha_after = poll(lambda: read_number(readout), lambda a: a == pytest.approx(alpha_before - 0.6), 10,
                               "the α readout to move by -0.6", nb.page)
            after = self.target(nb, cell, f"α = {alpha_after:.2f}", f"the target redrawn for α = {alpha_after:.2f}")
            nb.screenshot(cell, "alpha_after")

            assert len(after["traces"][0]["y"]) == len(before["traces"][0]["y"])
            assert after["traces"][0]["y"] != before["traces"][0]["y"] and after["paths"] != before["paths"]
            # a smaller α flattens the target: less mass on the most probable title, more on the least
            assert after["traces"][0]["y"][0] < before["traces"][0]["y"][0]
            assert after["traces"][0]["y"][-1] > before["traces"][0]["y"][-1]

    def test_beta_slider_mixes_in_the_uniform_distribution(self, nb, cell):
        with nb.control("beta"):
            handle, readout = nb.slider(cell, "uniform mix β")
            assert read_number(readout) == 0.0
            before = self.target(nb, cell, "β = 0.00", "the target figure for β = 0")
            y0 = before["traces"][0]["y"]
            assert max(y0) / min(y0) > 10  # popularity: far from flat
            nb.screenshot(cell, "beta_before")

            nb.press(handle, "End")  # β = 1: P(i) = 1/N
            poll(lambda: read_number(readout), lambda b: b == 1.0, 10, "the β readout to reach 1", nb.page)
            after = self.target(nb, cell, "β = 1.00", "the target redrawn for β = 1")
            nb.screenshot(cell, "beta_after")

            y1 = after["traces"][0]["y"]
            assert len(y1) == len(y0) and after["paths"] != before["paths"]
            # flat: every title holds 1/N per item it names (a duplicate title pools its items)
            unit = min(y1)
            multiples = [v / unit for v in y1]
            assert all(m == pytest.approx(round(m), abs=1e-9) for m in multiples), multiples
            assert sum(round(m) == 1 for m in multiples) >= 0.9 * len(y1)
            assert max(y1) / min(y1) <= 3

            nb.press(handle, "Home")  # β = 0 gives the popularity target back, exactly
            back = self.target(nb, cell, "β = 0.00", "the target redrawn for β = 0")
            assert back["traces"][0]["y"] == pytest.approx(y0, rel=1e-12)

    def test_weight_slider_personalises_the_target(self, nb, cell):
        with nb.control("weight"):
            handle, readout = nb.slider(cell, "personalisation w")
            assert read_number(readout) == 0.0
            before = self.target(nb, cell, "w = 0.00)", "the target figure for w = 0")
            gap_before, _ = log_gap(before)
            assert gap_before < 1
            nb.screenshot(cell, "weight_before")

            nb.press(handle, "PageUp", 4)  # 4 pages of 5 steps of 0.05
            poll(lambda: read_number(readout), lambda w: w == pytest.approx(1.0), 10, "the w readout to reach 1",
                 nb.page)
            after = self.target(nb, cell, "w = 1.00, user 0)", "the target redrawn for w = 1, user 0")
            nb.screenshot(cell, "weight_after")

            t0, t1 = before["traces"][0], after["traces"][0]
            assert len(t1["y"]) == len(t0["y"]) and t1["y"] != t0["y"] and after["paths"] != before["paths"]
            assert t1["text"] != t0["text"]  # the titles are no longer ranked by popularity alone
            # log R_u = log p_pop + w log s'_u: the user's least-liked genre (s' = 0, clamped to 1e-6)
            # falls far below every other title
            gap_after, disliked = log_gap(after)
            assert gap_after > 1.5 and len(disliked) >= 10, (gap_after, len(disliked))

    def test_user_dropdown_changes_whose_target_it_is(self, nb, cell):
        with nb.control("user"):
            user = nb.dropdown(cell, "user")
            assert selected_text(user) == "user 0"
            before = self.target(nb, cell, "w = 1.00, user 0)", "the target figure for w = 1, user 0")
            nb.screenshot(cell, "user_before")

            choose(user, "user 1")
            after = self.target(nb, cell, "w = 1.00, user 1)", "the target redrawn for user 1")
            nb.screenshot(cell, "user_after")

            t0, t1 = before["traces"][0], after["traces"][0]
            assert len(t1["y"]) == len(t0["y"]) and t1["y"] != t0["y"] and after["paths"] != before["paths"]
            assert t1["text"] != t0["text"]
            # another user, other tastes: another genre is pushed to the bottom
            (_, disliked0), (gap1, disliked1) = log_gap(before), log_gap(after)
            assert gap1 > 1.5 and len(disliked1) >= 10
            assert disliked1 != disliked0 and len(disliked1 & disliked0) < 0.5 * len(disliked1)


# ====================================================================== notebook 02
EXPLORER_DIST, LORENZ, TABLE = "Target P vs ", "Lorenz curves", "Fit of each selected run"  # RunExplorer
CURVES, TRAINED = "Toy training curves", "Target P vs fitted policies"  # TrainPanel


def explorer_state(snap) -> dict | None:
    """RunExplorer's figures read back: the runs drawn (distribution traces), the Lorenz curves and
    the table rows; None unless the three figures agree on one set of runs."""
    dist, lorenz, table = figure(snap, EXPLORER_DIST), figure(snap, LORENZ), figure(snap, TABLE)
    if not (dist and lorenz and table) or not dist["paths"]:
        return None
    m = re.match(r"Target P vs (\d+) cached run", dist["title"])
    header = [re.sub(r"</?b>", "", h) for h in table["traces"][0]["header"]]
    columns = table["traces"][0]["cells"]
    rows = [dict(zip(header, values)) for values in zip(*columns)]
    runs = [t["name"] for t in dist["traces"][1:]]
    lorenz_runs = [t["name"].split(" (Gini")[0] for t in lorenz["traces"][1:-1]]
    if not m or int(m.group(1)) != len(runs) or lorenz_runs != runs or [r["run"] for r in rows] != runs:
        return None
    return {"runs": runs, "rows": rows, "y": {t["name"]: t["y"] for t in dist["traces"][1:]}}


def train_state(snap) -> dict | None:
    """TrainPanel's figures read back: the runs (distribution traces) and each run's KL curve."""
    curves, dist = figure(snap, CURVES), figure(snap, TRAINED)
    if not (curves and dist) or not dist["paths"]:
        return None
    runs = [t["name"] for t in dist["traces"][1:]]
    kl = {t["name"]: t["y"] for t in curves["traces"] if t["xaxis"] == "x2"}  # the second panel: kl
    loss_curves = [t["name"] for t in curves["traces"] if t["xaxis"] == "x"]
    if list(kl) != runs or loss_curves != runs:
        return None
    return {"runs": runs, "kl": kl, "y": {t["name"]: t["y"] for t in dist["traces"][1:]},
            "target": dist["traces"][0]["y"]}


def train_button(cell):
    # by its text alone ("train"; the button also holds an icon)
    return cell.locator("button.widget-button", has_text=re.compile(r"^\s*train\s*$"))


class TestNotebook02Panels:
    """Notebook 02's run explorer (its cell left the filter loss = subtb) and training panel (two runs,
    subtb #1 and sft #2, trained from code; the loss dropdown left at sft)."""

    @pytest.fixture(scope="class")
    @classmethod
    def nb(cls, pw, tmp_path_factory):
        with open_notebook(pw, REPO / "notebooks" / "02_toy_distribution_fitting.ipynb",
                           tmp_path_factory.mktemp("nb02"), ARTIFACTS, env=ENV, run_timeout=240,
                           viewport=(1280, 2000)) as nb:  # the explorer's output is about 1500 px high
            yield nb

    @pytest.fixture(scope="class")
    @classmethod
    def explorer(cls, nb):
        return nb.cell(nb.page.locator(".widget-select-multiple"))

    @pytest.fixture(scope="class")
    @classmethod
    def trainer(cls, nb):
        return nb.cell(nb.page.locator("button.widget-button", has_text="clear runs"))

    # ------------------------------------------------------------------ the run explorer
    @staticmethod
    def explorer_state(nb, cell, check, what: str) -> dict:
        """Poll the explorer's figures until they agree with each other, with the runs list, and ``check``."""
        runs = cell.locator(".widget-select-multiple select")

        def read():
            snap = nb.figures(cell)
            state = explorer_state(snap)
            if state is not None:
                state["selected"] = runs.evaluate(SELECTED_JS)
                state["options"] = option_texts(runs)
            return {"error": snap["error"], "state": state}

        def ready(r):
            if r["error"]:
                raise AssertionError(f"the explorer shows an error while waiting for {what}:\n{r['error']}")
            s = r["state"]
            return s is not None and s["selected"] == s["runs"] and check(s)

        return poll(read, ready, 30, what, nb.page)["state"]

    def widen(self, nb, cell, label: str) -> dict:
        """Set the filter ``label`` back to "any" and wait for the explorer to show more runs."""
        shown = self.explorer_state(nb, cell, lambda s: True, "the explorer's figures")["runs"]
        choose(nb.dropdown(cell, label), "any")
        return self.explorer_state(nb, cell, lambda s: len(s["runs"]) > len(shown),
                                   f"more runs than {shown} once {label} = any")

    def filter_narrows(self, nb, cell, label: str, pick, keep, stem: str) -> tuple[dict, dict]:
        """Pick the option ``pick(options)`` of the filter ``label``; the explorer must then show exactly
        the runs of before whose table row passes ``keep(row, option)``."""
        before = self.explorer_state(nb, cell, lambda s: True, "the explorer's figures")
        nb.screenshot(cell, f"{stem}_before")
        dropdown = nb.dropdown(cell, label)
        choice = pick([o for o in option_texts(dropdown) if o != "any"])
        expected = [r["run"] for r in before["rows"] if keep(r, choice)]
        assert 0 < len(expected) < len(before["runs"]), (choice, expected, before["runs"])
        choose(dropdown, choice)
        after = self.explorer_state(nb, cell, lambda s: s["runs"] == expected,
                                    f"the explorer to keep {expected} for {label} = {choice}")
        nb.screenshot(cell, f"{stem}_after")
        assert all(keep(r, choice) for r in after["rows"])
        assert set(after["runs"]) < set(before["runs"])
        for run in after["runs"]:  # the kept runs are drawn with their cached data
            assert after["y"][run] == before["y"][run]
        return before, after

    def test_explorer_loss_filter_keeps_the_runs_of_that_loss(self, nb, explorer):
        with nb.control("explorer_loss"):
            assert selected_text(nb.dropdown(explorer, "loss")) == "subtb"
            every = self.widen(nb, explorer, "loss")  # start from every cached run
            assert len({r["loss"] for r in every["rows"]}) >= 3
            _, after = self.filter_narrows(nb, explorer, "loss", lambda options: "subtb",
                                           lambda row, choice: row["loss"] == choice, "explorer_loss")
            assert len(after["runs"]) >= 3

    def test_explorer_sft_weight_filter_keeps_the_runs_of_that_weight(self, nb, explorer):
        with nb.control("explorer_sft_weight"):
            zero = lambda options: next(o for o in options if float(o) == 0)  # noqa: E731
            _, after = self.filter_narrows(nb, explorer, "sft_weight", zero,
                                           lambda row, choice: float(row["sft_weight"]) == float(choice),
                                           "explorer_sft_weight")
            assert all(r["loss"] == "subtb" for r in after["rows"])  # the loss filter still holds

    def test_explorer_subtb_lambda_filter_keeps_the_runs_of_that_lambda(self, nb, explorer):
        with nb.control("explorer_subtb_lambda"):
            below_one = lambda options: next(o for o in options if float(o) < 1)  # noqa: E731
            _, after = self.filter_narrows(nb, explorer, "subtb_lambda", below_one,
                                           lambda row, choice: float(row["subtb_lambda"]) == float(choice),
                                           "explorer_subtb_lambda")
            assert all(r["loss"] == "subtb" and float(r["sft_weight"]) == 0 for r in after["rows"])

    def test_explorer_n_filter_keeps_the_runs_of_that_granularity(self, nb, explorer):
        with nb.control("explorer_n"):
            self.widen(nb, explorer, "subtb_lambda")
            _, after = self.filter_narrows(nb, explorer, "n", lambda options: "2",
                                           lambda row, choice: str(row["n"]) == choice, "explorer_n")
            assert all(r["loss"] == "subtb" and float(r["sft_weight"]) == 0 for r in after["rows"])

    def test_explorer_runs_list_draws_the_selected_runs(self, nb, explorer):
        with nb.control("explorer_runs"):
            before = self.widen(nb, explorer, "n")
            assert len(before["runs"]) >= 3
            nb.screenshot(explorer, "explorer_runs_before")

            options = explorer.locator(".widget-select-multiple select option")
            first, third = before["options"][0], before["options"][2]
            options.nth(0).click()  # a plain click selects that run only
            options.nth(2).click(modifiers=["Control"])  # ctrl adds one
            after = self.explorer_state(nb, explorer, lambda s: s["runs"] == [first, third],
                                        f"the explorer to draw {first!r} and {third!r} only")
            nb.screenshot(explorer, "explorer_runs_after")

            assert after["options"] == before["options"]  # the filters did not change: same runs listed
            assert [r["run"] for r in after["rows"]] == [first, third]
            for run in (first, third):
                assert after["y"][run] == before["y"][run]

    # ------------------------------------------------------------------ the training panel
    @staticmethod
    def train_state(nb, cell, check, what: str, timeout: float = 90) -> dict:
        button = train_button(cell)

        def ready(snap):
            s = train_state(snap)
            return s is not None and check(s) and button.is_enabled()

        return train_state(nb.wait_figures(cell, ready, what, timeout=timeout))

    def click_train(self, nb, cell, stem: str, expected_name: str) -> tuple[dict, dict]:
        """Screenshot, click train, wait for the run ``expected_name`` in both figures, screenshot."""
        before = self.train_state(nb, cell, lambda s: True, "the training panel's figures")
        nb.screenshot(cell, f"{stem}_before")
        train_button(cell).click()
        after = self.train_state(nb, cell, lambda s: len(s["runs"]) == len(before["runs"]) + 1,
                                 f"the training panel to draw the new run {expected_name!r}")
        nb.screenshot(cell, f"{stem}_after")
        assert after["runs"] == before["runs"] + [expected_name]  # one trace more, in each figure
        for run in before["runs"]:  # the old runs are kept as they were
            assert after["y"][run] == before["y"][run] and after["kl"][run] == before["kl"][run]
        assert after["target"] == before["target"]
        return before, after

    def test_train_button_adds_a_run(self, nb, trainer):
        with nb.control("train_button"):
            loss = nb.dropdown(trainer, "loss")
            assert selected_text(loss) == "sft"
            before = self.train_state(nb, trainer, lambda s: True, "the training panel's figures")
            assert before["runs"] == ["subtb #1", "sft #2"]
            before, after = self.click_train(nb, trainer, "train_button", "sft #3")
            # a fresh policy with the same settings and seed: the same fit as the run trained from code
            assert after["y"]["sft #3"] == pytest.approx(after["y"]["sft #2"], rel=1e-9)
            assert after["kl"]["sft #3"] == pytest.approx(after["kl"]["sft #2"], rel=1e-9)

    def test_train_loss_dropdown_trains_that_loss(self, nb, trainer):
        with nb.control("train_loss"):
            choose(nb.dropdown(trainer, "loss"), "db")
            k = len(self.train_state(nb, trainer, lambda s: True, "the training panel's figures")["runs"]) + 1
            _, after = self.click_train(nb, trainer, "train_loss", f"db #{k}")
            kl = {run: curve[-1] for run, curve in after["kl"].items()}
            # detailed balance on the exact flows reaches the target; SFT on a finite sample does not
            assert kl[f"db #{k}"] < 0.1 * kl["sft #2"], kl
            assert after["y"][f"db #{k}"] != after["y"]["sft #2"]

    def test_train_theta_slider_mixes_in_sft(self, nb, trainer):
        with nb.control("train_theta"):
            choose(nb.dropdown(trainer, "loss"), "subtb")
            handle, readout = nb.slider(trainer, "θ (SFT weight)")
            assert read_number(readout) == 0.0
            nb.press(handle, "PageUp", 20)  # 20 pages of 5 steps of 0.005
            poll(lambda: read_number(readout), lambda t: t == pytest.approx(0.5), 10, "the θ readout to reach 0.5",
                 nb.page)
            k = len(self.train_state(nb, trainer, lambda s: True, "the training panel's figures")["runs"]) + 1
            _, after = self.click_train(nb, trainer, "train_theta", f"sft+subtb θ=0.5 #{k}")
            kl = {run: curve[-1] for run, curve in after["kl"].items()}
            # θ = 0.5 pulls SubTB towards the finite sample: a worse fit than SubTB alone, better than SFT
            assert kl["subtb #1"] < kl[f"sft+subtb θ=0.5 #{k}"] < kl["sft #2"], kl
