"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest


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
