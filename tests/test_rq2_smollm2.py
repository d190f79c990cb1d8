"""RQ2 with SmolLM2 end to end on a few rows: the per-row trunk trains, the prefill-once beam search recommends,
the table carries the paired differences to BIGRec (SFT). The measured tables are in results/README.md."""
import math

import pytest

from flower_lite.config import Objective, RQ2Run
from flower_lite.experiments.rq2 import rq2_table
from flower_lite.experiments.rq2.lm import run_config, run_setup
from flower_lite.row_trunk import RowTrunkPolicy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("smollm2", "movielens")]

RUN = dict(model="smollm2", data="movielens", train_rows=48, valid_rows=8, test_rows=6)


@pytest.fixture(scope="module")
def states_dir(tmp_path_factory):
    """One folder of stored states for the SmolLM2 tests of this module: the second finds the first's states."""
    return tmp_path_factory.mktemp("row_states")


def test_smollm2_rq2_table_on_a_few_rows(states_dir):
    run = RQ2Run(**RUN, cache_dir=str(states_dir))
    rows, results = rq2_table(run, run_config(run, steps=4, eval_every=2), progress=False,
                              methods=["popularity", "BIGRec (SFT)", "D3"], objectives=[Objective("distill")])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"popularity", "BIGRec (SFT)", "D3", "Flower (distill)", "R_u ceiling (div_s)"}
    assert len(results["BIGRec (SFT)"].ranked) == 6
    for name in ("BIGRec (SFT)", "D3", "Flower (distill)"):
        assert all(len(r) == 10 and len(set(r)) == 10 for r in results[name].ranked), name
        assert results[name].history[0]["valid_loss"] > results[name].history[-1]["valid_loss"], name  # it learned
    assert "d_hit@10" not in by["BIGRec (SFT)"]
    for name in ("popularity", "D3", "Flower (distill)"):
        d = by[name]
        assert d["d_hit@10_lo"] <= d["d_hit@10"] <= d["d_hit@10_hi"] and 0 < d["p_hit@10"] <= 1
        for key in ("hit@10", "dgu", "tail_share"):  # the list-level metrics' differences, too
            assert math.isclose(d[f"d_{key}"], by[name][key] - by["BIGRec (SFT)"][key], abs_tol=2e-4), (name, key)
        assert d["d_dgu_lo"] <= d["d_dgu_hi"] and 0 < d["p_dgu"] <= 1
    # one folder of stored states serves every method
    assert len([p for p in states_dir.iterdir() if p.is_dir()]) == 1


def test_every_method_trains_from_the_same_initial_weights_on_shared_states(states_dir):
    run = RQ2Run(**RUN, cache_dir=str(states_dir))
    setup, new_policy, _ = run_setup(run)
    a, b = new_policy(), new_policy()
    assert isinstance(a, RowTrunkPolicy) and a.states is b.states and a.module is not b.module
    assert a.split == 28 and setup.trie.eos_id == setup.tokenizer.encode("\n", add_special_tokens=False)[0]
    trainable = [n for n, p in a.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".28." in n or ".29." in n) for n in trainable)


def test_every_new_policy_starts_from_the_same_adapters_whatever_ran_before(tmp_path):
    import torch

    run = RQ2Run(**{**RUN, "model": "tiny", "data": "default", "trunk_layers": 1, "lora_rank": 4}, cache_dir=str(tmp_path))
    _, new_policy, _ = run_setup(run)
    first = {n: p.detach().clone() for n, p in new_policy().module.named_parameters() if "lora_A" in n}
    torch.rand(100)  # the global generator moves on
    second = {n: p.detach() for n, p in new_policy().module.named_parameters() if "lora_A" in n}
    assert first and all(torch.equal(first[n], second[n]) for n in first)
