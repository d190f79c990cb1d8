"""Preference alignment (RQ3) on the tiny model: stored reference log-probs, DPO and S-DPO raise the margin."""
import copy

import numpy as np
import pytest
import torch

from flower_lite.experiments import rq3
from flower_lite.models import make_tiny_model
from flower_lite.pairs import uniform_negatives
from flower_lite.prompts import build_prompt, encode_titles, title_trie
from flower_lite.rollout import LMPolicy, prompt_pass

pytestmark = pytest.mark.usefixtures("one_thread")

TITLES = [f"The {a} {b}" for a in ("Red", "Blue", "Green", "Silent", "Last") for b in ("River", "Night", "King")]


@pytest.fixture(scope="module")
def reference():
    prompts = [build_prompt("Recommend a movie.", TITLES[i:i + 3], "movies") for i in range(12)]
    model, tok = make_tiny_model(prompts + TITLES, vocab_size=300, seed=0)
    return model.eval(), tok, prompts


def _pairs(reference, k, seed=0):
    model, tok, prompts = reference
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(TITLES), len(prompts))
    rejected = uniform_negatives(chosen, len(TITLES), k, rng)
    return rq3.preference_pairs(LMPolicy(model, tok), _trie(tok), prompts, chosen, rejected, batch_size=5)


def _trie(tok):
    return title_trie(tok, TITLES, [1.0] * len(TITLES))


def test_stored_reference_log_probs_are_the_sequence_log_probs(reference):
    model, tok, prompts = reference
    pairs = _pairs(reference, k=2)
    titles = encode_titles(tok, TITLES)
    for row in (0, 5, 11):  # a naive per-token loop over the full model
        for item, stored in [(pairs.chosen[row], pairs.ref_chosen[row]), (pairs.rejected[row, 1], pairs.ref_rejected[row, 1])]:
            ids = tok(prompts[row])["input_ids"]
            total = 0.0
            for t in titles[item] + [tok.eos_token_id]:
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                total += (logits.log_softmax(-1)[t]).item()
                ids = ids + [t]
            assert stored.item() == pytest.approx(total, abs=1e-4)
    assert not pairs.ref_chosen.requires_grad
    with pytest.raises(ValueError, match="equals its row's chosen"):
        rq3.preference_pairs(LMPolicy(model, tok), _trie(tok), prompts[:1], np.array([3]), np.array([[3]]))


@pytest.mark.parametrize("loss,k", [("dpo", 1), ("sdpo", 3), ("dmpo_as_coded", 3)])
def test_alignment_raises_the_margin_and_never_reruns_the_reference(reference, loss, k):
    model, tok, _ = reference
    calls = {"reference": 0}
    hook = model.register_forward_hook(lambda *a: calls.__setitem__("reference", calls["reference"] + 1))
    try:
        pairs = _pairs(reference, k)
        built = calls["reference"]
        policy = copy.deepcopy(model)  # start = reference
        policy._forward_hooks.clear()
        passes = {"policy": 0}
        policy.register_forward_hook(lambda *a: passes.__setitem__("policy", passes["policy"] + 1))
        log = rq3.align(LMPolicy(policy, tok), _trie(tok), pairs, loss=loss, beta=0.3, lr=3e-3, steps=30, batch_size=4)
    finally:
        hook.remove()
    assert built > 0 and calls["reference"] == built  # the reference ran only while the pairs were built
    assert passes["policy"] == 30  # one pass per step: chosen and rejected together
    assert abs(log[0]["margin"]) < 1e-5  # start = reference
    assert np.mean([x["margin"] for x in log[-5:]]) > 1.0
    assert np.mean([x["loss"] for x in log[-5:]]) < log[0]["loss"]


def test_unknown_preference_loss_is_named(reference):
    model, tok, _ = reference
    with pytest.raises(ValueError, match="unknown preference loss 'ppo'"):
        rq3.align(LMPolicy(model, tok), _trie(tok), _pairs(reference, 1), loss="ppo", steps=1)


def test_rloo_raises_the_expected_reward_with_exact_constrained_log_probs():
    """RQ1's RL baseline on the tiny trunk policy: the title log-probs it differentiates are the exact constrained
    distribution; 40 steps raise Σ q R toward the rewarded titles, and the KL penalty keeps q nearer the reference."""
    from flower_lite.prompts import title_trie
    from flower_lite.models import build_tiny_tokenizer
    from flower_lite.trunk import CachedTrunkPolicy

    from test_trunk import tiny_model

    prompt = "Recommend a movie."
    tok = build_tiny_tokenizer(TITLES + [prompt], vocab_size=300)
    trie = title_trie(tok, TITLES, [1.0] * len(TITLES))
    rewards = torch.linspace(0, 1, len(TITLES), dtype=torch.float64) ** 4

    def fit(kl):
        policy = CachedTrunkPolicy(tiny_model("qwen2-sdpa", tok), tok, trie, top_layers=2)
        log_p, log_q = policy.title_log_probs(prompt, trie)
        _, _, q = policy.item_distributions(prompt, trie)
        assert torch.allclose(log_q.exp(), q) and log_q.requires_grad
        return rq3.rloo_fit(policy, trie, prompt, rewards, steps=40, samples=8, kl_coef=kl, lr=3e-3)

    free, held = fit(0.0), fit(1.0)
    assert free[-1]["expected_reward"] > free[0]["expected_reward"] + 0.1
    assert held[-1]["kl_to_reference"] < free[-1]["kl_to_reference"]
    with pytest.raises(ValueError, match="samples >= 2"):
        rq3.rloo_fit(None, trie, prompt, rewards, samples=1)


def test_whole_model_title_log_probs_are_the_exact_distributions_with_gradients(reference):
    from flower_lite.distributions import constrained_item_distribution, exact_item_distribution, title_log_probs

    model, tok, prompts = reference
    trie = title_trie(tok, TITLES, [1.0] * len(TITLES))
    log_p, log_q = title_log_probs(model, tok, prompts[0], trie, temperature=1.5, batch_size=4)
    p, _ = exact_item_distribution(model, tok, prompts[0], trie)
    q = constrained_item_distribution(model, tok, prompts[0], trie, temperature=1.5)
    assert torch.allclose(log_p.exp(), p, atol=1e-6) and torch.allclose(log_q.exp(), q, atol=1e-6)
    log_q[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_rq1_dpo_and_rloo_rows_beat_their_broken_reward_controls():
    """RQ1's reward-maximising baselines on the tiny model (whole-model policy), 60 steps each from the initial
    weights: DPO on the popularity pairs and RLOO on the target probability end with a larger expected target
    probability E_Q[P] than the same training on the swapped pairs / the reversed popularity (what a maximiser of
    that reward must do; it need not match P's spread, which is KL's business)."""
    from flower_lite.config import RQ1Run
    from flower_lite.experiments.rq1 import RQ1_PROMPT
    from flower_lite.experiments.rq1_table import ALIGN_ROWS, fit_row, prepare

    bench = prepare(RQ1Run(model="tiny", titles=40, sample_size=100))
    p = bench.trie.title_log_probs().exp()
    expected = {}
    for row in ALIGN_ROWS:
        _, history = fit_row(bench, row, 60, bench.initial, lr=3e-3)
        q = bench.policy.item_distributions(RQ1_PROMPT, bench.trie)[2]
        expected[row.label] = float((q * p).sum())
        assert len(history) == 60
    print({k: round(v, 4) for k, v in expected.items()}, "uniform:", round(float(p.pow(2).sum()), 4))
    for name in ("dpo", "rloo"):
        assert expected[f"{name}, from the SFT weights"] > expected[f"{name}, reversed popularity, from the SFT weights"]


def test_rq3_table_aligns_every_start_and_pairs_it_with_its_own_start(tmp_path):
    """The tiny RQ2 set-up, a few steps: each aligner runs from BIGRec (SFT) and Flower, each aligned row carries its
    paired difference to its own start, and alignment moves the start's recommendations."""
    from flower_lite.config import RQ2Run
    from flower_lite.experiments.rq2.lm import run_config

    run = RQ2Run(train_rows=300, valid_rows=8, test_rows=12, cache_dir=str(tmp_path))
    rows, results, _ = rq3.rq3_table(run, run_config(run, steps=4, seed=0),
                                  rq3.AlignConfig(steps=5, batch_size=4, rows=64, lr=3e-3), progress=False)
    names = [r["method"] for r in rows]
    assert names[:3] == ["popularity", "BIGRec (SFT)", "Flower"]
    for aligner in rq3.ALIGNERS:
        for start in ("BIGRec (SFT)", "Flower"):
            row = next(r for r in rows if r["method"] == f"{aligner} from {start}")
            assert {"d_hit@10", "d_hit@10_lo", "d_hit@10_hi", "p_hit@10", "d_dgu", "p_dgu", "d_tail_share"} <= set(row)
            start_row = next(r for r in rows if r["method"] == start)
            assert row["d_dgu"] == pytest.approx(row["dgu"] - start_row["dgu"], abs=2e-4)
            assert len(results[row["method"]].history) == 5
    moved = [results[f"S-DPO from {s}"].ranked != results[s].ranked for s in ("BIGRec (SFT)", "Flower")]
    assert any(moved)


def test_preference_rows_on_the_per_row_trunk_score_as_the_whole_model(tmp_path):
    """RQ3 on the per-row frozen trunk (the tiny model, top layer trained with LoRA): the pairs' rows are stored once,
    their sequence log-probs equal the whole model's, and S-DPO on them raises the margin."""
    from flower_lite.config import RQ2Run
    from flower_lite.experiments.rq2.lm import run_setup
    from flower_lite.row_trunk import RowTrunkPolicy

    run = RQ2Run(train_rows=200, valid_rows=4, test_rows=4, trunk_layers=1, lora_rank=4, cache_dir=str(tmp_path))
    setup, new_policy, _ = run_setup(run)
    policy = new_policy()
    rng = np.random.default_rng(0)
    rejected = rq3.rejected_items(setup, "uniform", 3, rng)[-16:]
    prompts, chosen = setup.prompts["train"][-16:], np.asarray(setup.data.train.target)[-16:]
    paired = rq3.on_pairs(policy, setup, prompts, chosen, rejected, str(tmp_path))
    assert isinstance(paired, RowTrunkPolicy) and paired.module is policy.module and paired.states is not policy.states
    pairs = rq3.preference_pairs(paired, setup.trie, prompts, chosen, rejected)
    whole = rq3.preference_pairs(LMPolicy(policy.module, setup.tokenizer), setup.trie, prompts, chosen, rejected)
    assert torch.allclose(pairs.ref_chosen, whole.ref_chosen, atol=1e-4)
    assert torch.allclose(pairs.ref_rejected, whole.ref_rejected, atol=1e-4)
    log = rq3.align(paired, setup.trie, pairs, "sdpo", beta=0.3, lr=1e-2, steps=20, batch_size=4)
    assert np.mean([x["margin"] for x in log[-5:]]) > np.mean([x["margin"] for x in log[:3]]) + 0.5
    with pytest.raises(ValueError, match="unknown rejected items"):
        rq3.rejected_items(setup, "random", 1, rng)


def test_rq3_results_script_writes_its_record(tmp_path, results_script):
    import json

    script = results_script("rq3_table.py")
    out = tmp_path / "rq3.json"
    script.main(["--train-rows", "200", "--valid-rows", "4", "--test-rows", "6", "--steps", "2", "--align-steps", "2",
                 "--align-rows", "16", "--aligners", "RosePO", "--cache-dir", str(tmp_path), "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["command"].startswith("python results/rq3_table.py --train-rows 200")
    names = [r["method"] for r in record["rows"]]
    assert names == ["popularity", "BIGRec (SFT)", "Flower", "RosePO from BIGRec (SFT)", "RosePO from Flower"]


def test_rloo_from_a_start_raises_the_sasrec_reward_of_its_samples(tmp_path):
    """The RQ3 RL baseline on the tiny set-up: the sampled titles map back to their items, and 30 steps raise the
    mean min-max-normalised SASRec reward of the samples above the first steps (measured 0.049 -> 0.108)."""
    from flower_lite.config import RQ2Run
    from flower_lite.experiments.rq2.lm import run_setup

    run = RQ2Run(train_rows=300, valid_rows=4, test_rows=4, cache_dir=str(tmp_path))
    setup, new_model, _ = run_setup(run)
    traj = setup.trie.item_trajectories(torch.tensor([3, 7, 11]))
    assert rq3.sampled_items(setup.trie, traj).tolist() == [3, 7, 11]
    module, log = rq3.rloo_align(setup, new_model(), rq3.AlignConfig(steps=50, batch_size=8, lr=3e-3), samples=4)
    assert len(log) == 50
    rewards = [x["reward"] for x in log]
    print(round(np.mean(rewards[:10]), 3), round(np.mean(rewards[-10:]), 3))
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.03


def test_sampling_several_titles_per_prompt_runs_each_prompt_once_and_equals_the_repeated_batch(reference):
    """LMPolicy.sample(repeats=n): the same titles as sampling the batch of each prompt n times in a row with the same
    generator, with one prompt pass over the distinct prompts."""
    model, tok, prompts = reference
    trie, policy = _trie(tok), LMPolicy(model, tok)
    distinct = prompts[:3]
    with torch.no_grad():
        once = policy.sample(policy.prompts(distinct), trie, 1.0, torch.Generator().manual_seed(5), 16, repeats=4)
        rows = policy.prompts([p for p in distinct for _ in range(4)])
        apart = policy.sample(rows, trie, 1.0, torch.Generator().manual_seed(5), 16)
    assert once.tokens.shape[0] == 12 and torch.equal(once.tokens, apart.tokens)
    assert torch.equal(once.lengths, apart.lengths)
    assert len(set(map(tuple, once.tokens.tolist()))) > 3  # the repeats of a prompt are not copies of one sample
    with torch.no_grad():  # the shared pass, repeated, is the pass over the repeated batch: logits and every layer's cache
        shared, full = prompt_pass(model, policy.prompts(distinct).encoded).repeated(4), prompt_pass(model, rows.encoded)
    assert torch.allclose(shared.logits, full.logits, atol=1e-5)
    for a, b in zip(shared.cache.layers, full.cache.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)


def test_rloo_on_the_per_row_trunk_follows_the_whole_model(tmp_path):
    """The RL baseline on the per-row trunk (sampled rows stored per step, the start's top-layer weights as the
    reference) takes the steps the whole model takes beside a frozen copy: the same samples, rewards, KL and loss."""
    from flower_lite.config import RQ2Run
    from flower_lite.experiments.rq2.lm import run_setup
    from flower_lite.row_trunk import RowTrunkPolicy

    run = RQ2Run(train_rows=200, valid_rows=4, test_rows=4, trunk_layers=1, lora_rank=4, cache_dir=str(tmp_path))
    setup, new_policy, _ = run_setup(run)
    policy = new_policy()
    assert isinstance(policy, RowTrunkPolicy)
    for m in policy.module.modules():  # LoRA dropout off: both paths then compute the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    whole = copy.deepcopy(policy.module)
    config = rq3.AlignConfig(steps=4, batch_size=4, lr=3e-2)
    _, on_rows = rq3.rloo_align(setup, policy, config, samples=3)
    _, apart = rq3.rloo_align(setup, whole, config, samples=3)
    assert [x["reward"] for x in on_rows] == [x["reward"] for x in apart]
    assert abs(on_rows[0]["kl"]) < 1e-6  # the start is the reference
    assert max(abs(x["kl"]) for x in on_rows[1:]) > 1e-4  # and the policy moves away from it
    for a, b in zip(on_rows, apart):
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-4) and a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_constrained_sequence_log_probs_sum_to_one_over_the_catalogue(reference):
    """On one prompt, exp(constrained log-prob) of every title is the exact trie-constrained distribution."""
    from flower_lite.distributions import constrained_item_distribution

    model, tok, prompts = reference
    trie = _trie(tok)
    with torch.no_grad():
        lp = rq3.sequence_log_probs(LMPolicy(model, tok), trie, [prompts[0]] * len(TITLES), range(len(TITLES)),
                                    constrained=True)
    q = constrained_item_distribution(model, tok, prompts[0], trie)  # terminal-node order
    items_in_order = trie.title_first_item().tolist()
    assert torch.allclose(lp.double().exp()[items_in_order], q, atol=1e-5)



def test_rq1_dpo_step_scores_only_its_batch_titles_and_follows_the_whole_trie_fit():
    """RQ1's DPO on the frozen trunk (:func:`rq3.title_preference_fit`): each step runs the top layers over the states
    of its batch's titles only, and its losses equal those of the same training scored over every title of the trie
    each step (the reference's log-probs for the first loss, log 2)."""
    from flower_lite.config import RQ1Run
    from flower_lite.experiments.rq1 import RQ1_PROMPT
    from flower_lite.experiments.rq1_table import prepare
    from flower_lite.pairs import popularity_pairs
    from flower_lite.train import batch_indices, load_trainable

    bench = prepare(RQ1Run(model="tiny", titles=40, sample_size=100, trunk_layers=1))
    policy, trie = bench.policy, bench.trie
    chosen, rejected = popularity_pairs(trie.title_log_probs().exp().numpy(), 400, np.random.default_rng(0))
    steps, batch, beta, lr = 6, 4, 0.1, 3e-3

    with torch.no_grad():
        ref, _ = policy.title_log_probs(RQ1_PROMPT, trie)
    params = [p for p in policy.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    whole = []
    for step in range(steps):  # every title scored every step
        rows = torch.as_tensor(batch_indices(len(chosen), batch, step, 0))
        log_p, _ = policy.title_log_probs(RQ1_PROMPT, trie)
        c, r = torch.as_tensor(chosen)[rows], torch.as_tensor(rejected)[rows][:, None]
        value = rq3.preference_loss("dpo", log_p[c], log_p[r], ref[c], ref[r], beta)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        whole.append(value.item())

    load_trainable(policy.module, bench.initial)
    scored, node_logits = [], policy.node_logits
    policy.node_logits = lambda prompt, nodes: scored.append(nodes.numel()) or node_logits(prompt, nodes)
    log = rq3.title_preference_fit(policy, trie, RQ1_PROMPT, chosen, rejected, "dpo", beta, lr, steps, batch)
    del policy.node_logits
    assert log[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert [e["loss"] for e in log] == pytest.approx(whole, abs=1e-5)
    assert whole[-1] < whole[0] - 1e-3
    states = int((trie.structure.token != trie.eos_id).sum())  # the root and every title's inner states
    assert len(scored) == steps and max(scored) < states / 2, (scored, states)
