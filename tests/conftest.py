"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and two OpenMP threads on a busy 2-core machine spin-wait
    badly: a module that asks for this runs with one torch thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def next_item_setup():
    """``make(train_rows, valid_rows, test_rows, seed, decode_batch_size)``: a :class:`RecSetup` on a
    subsample of the default catalogue's next-item rows, with an untrained SASRec (its p_ui still differ
    per history) and a tiny tokenizer trained on the titles and some prompts."""
    from flower_lite import recommend as rec
    from flower_lite.data import load_default_catalog, next_item_data_from_catalog
    from flower_lite.models import make_tiny_model
    from flower_lite.sasrec import SASRec, SASRecConfig

    full = next_item_data_from_catalog(load_default_catalog())

    def make(train_rows: int, valid_rows: int, test_rows: int, seed: int, decode_batch_size: int):
        data = rec.subsample(full, train_rows=train_rows, valid_rows=valid_rows, test_rows=test_rows, seed=seed)
        with torch.random.fork_rng():  # SASRec's constructor draws from the global RNG: fix it here
            torch.manual_seed(0)
            sasrec = SASRec(data.num_items, SASRecConfig(progress=False, seed=0)).eval()
        prompts = rec.history_prompts(data, "train", "movies")
        _, tok = make_tiny_model(data.titles + prompts[:50], hidden_size=32)
        config = rec.RecommendConfig(category="movies", decode_batch_size=decode_batch_size)
        return rec.prepare(data, tok, sasrec, config)

    make.full = full
    return make
