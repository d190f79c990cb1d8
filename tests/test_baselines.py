"""Baselines: popularity, SASRec, IFairLRS sample weights, D3 (length_penalty 0) and temperature 1.5 decoding."""
import numpy as np
import pytest
import torch

from flower_lite import decoding
from flower_lite.config import Objective
from flower_lite.experiments import rq2 as rec
from flower_lite.experiments.rq2 import methods as bl
from flower_lite.metrics import popularity_group_ids
from flower_lite.models import build_tiny_model
from flower_lite.train import FitData, TrainConfig, Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(next_item_setup):
    return next_item_setup(train_rows=400, valid_rows=16, test_rows=16, seed=1, decode_batch_size=16)


@pytest.fixture(scope="module")
def sft(setup):
    """An untrained stand-in for the SFT model: the decoding tests only need a fixed policy whose
    next-token distributions are far from uniform (the tied embeddings are scaled up: logits std ~ 3)."""
    model = build_tiny_model(setup.tokenizer, hidden_size=32, seed=3)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    return rec.score("sft", setup, rec.decode(model, setup), model=model)


def test_popularity_and_sasrec_baselines(setup):
    pop = bl.popularity(setup)
    top = np.argsort(-setup.counts, kind="stable")[:10].tolist()
    assert all(row == top for row in pop.ranked)
    s = bl.sasrec(setup)
    assert s.ranked == setup.sasrec.recommend(setup.data.test.history, k=10)
    assert s.metrics["coverage"] > pop.metrics["coverage"]


def test_ifairlrs_weights_are_history_over_target_group_shares(setup):
    data = setup.data
    groups, w = bl.ifairlrs_group_weights(data, 8)
    counts = data.train_history_counts()
    assert [g.tolist() for g in groups] == [g.tolist() for g in popularity_group_ids(counts, 8)]
    g0 = groups[0]
    hist_share = counts[g0].sum() / counts.sum()
    grouped = np.isin(data.train.target, np.concatenate(groups))  # targets never in a history have no group
    tgt_share = np.isin(data.train.target, g0).sum() / grouped.sum()
    assert w[0] == pytest.approx(hist_share / tgt_share)
    rows = bl.ifairlrs_weights(data, 8)
    assert rows.shape == (len(data.train),)
    in_g0 = np.isin(data.train.target, g0)
    assert np.allclose(rows[in_g0], w[0])
    assert len(np.unique(np.round(rows, 12))) > 1  # the groups really get different weights


def test_ifairlrs_weights_reweight_the_sft_loss(setup):
    """Weighted SFT differs from unweighted (and from the reference's mean(w) * loss), and equals it for equal weights."""
    data = setup.data
    weights = bl.ifairlrs_weights(data, 8)
    rows = np.arange(16)
    assert len(np.unique(np.round(weights[rows], 12))) > 1
    model = build_tiny_model(setup.tokenizer, hidden_size=32)
    trainer = Trainer(model, setup.tokenizer, setup.trie, TrainConfig(objective=Objective("sft"), max_steps=1), setup.fit_data("train"),
                      progress=False)
    plain, _ = trainer.loss(setup.fit_data("train"), rows)
    weighted, _ = trainer.loss(setup.fit_data("train", weights), rows)
    assert abs(weighted.item() - plain.item()) > 1e-4
    assert abs(weighted.item() - weights[rows].mean() * plain.item()) > 1e-4  # not averaged away
    equal, _ = trainer.loss(setup.fit_data("train", np.full(len(data.train), 2.5)), rows)
    assert equal.item() == pytest.approx(plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        FitData(["a", "b"], [0, 1], weights=[1.0, -1.0])


def test_ifairlrs_trains_with_the_weights(setup, monkeypatch):
    captured = {}
    real = rec.run_method

    def spy(name, s, model, train, **kw):
        captured.update(kw, loss=train.objective.loss)
        return real(name, s, model, train, **kw)

    monkeypatch.setattr(bl, "run_method", spy)
    cfg = TrainConfig(objective=rec.FLOWER, lr=1e-3, batch_size=8, max_steps=1, eval_every=1, warmup_steps=0)
    result = bl.ifairlrs(setup, build_tiny_model(setup.tokenizer, hidden_size=32), cfg)
    assert captured["loss"] == "sft"
    np.testing.assert_array_equal(captured["weights"], bl.ifairlrs_weights(setup.data, 8))
    assert result.name == "IFairLRS" and len(result.ranked) == len(setup.data.test)


def spy_recommend(monkeypatch):
    """Record the (length_penalty, temperature) of every beam-search setting the methods decode with."""
    from flower_lite import beam_search

    calls = []
    real = beam_search.recommend_settings

    def spy(model, tokenizer, prompts, trie, settings, **kwargs):
        calls.extend({"length_penalty": s.length_penalty, "temperature": s.temperature} for s in settings)
        return real(model, tokenizer, prompts, trie, settings, **kwargs)

    monkeypatch.setattr(beam_search, "recommend_settings", spy)
    return calls


def test_d3_decodes_with_length_penalty_zero_and_can_change_rankings(setup, sft, monkeypatch):
    calls = spy_recommend(monkeypatch)
    d3 = bl.d3(setup, sft)
    assert calls[-1]["length_penalty"] == 0.0 and calls[-1]["temperature"] == 1.0
    assert rec.decode(sft.model, setup) == sft.ranked and calls[-1]["length_penalty"] == 1.0
    assert d3.ranked != sft.ranked  # sum vs length-normalised log-probs: some row's ranking changes
    assert all(len(set(r)) == 10 for r in d3.ranked)


def test_temperature_1_5_is_applied(setup, sft, monkeypatch):
    calls = spy_recommend(monkeypatch)
    hot = bl.sft_temperature(setup, sft)
    assert hot.name == "SFT T=1.5" and calls[-1]["temperature"] == 1.5 and calls[-1]["length_penalty"] == 1.0
    direct = decoding.recommend(sft.model, setup.tokenizer, setup.prompts["test"], setup.trie, num_beams=10,
                                num_return=10, temperature=1.5, batch_size=16)
    assert hot.ranked == direct
    assert hot.ranked != sft.ranked  # tempering reshapes the per-step log-probs, so beams change
