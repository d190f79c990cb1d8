"""The fine-tuning loop: objectives on a causal LM, exact resume, atomic checkpoints, early stopping."""
import json

import numpy as np
import pytest
import torch

from flower_lite.data import load_default_catalog
from flower_lite.models import enable_gradient_checkpointing, make_tiny_model, random_qwen2_5_0_5b
from flower_lite.prompts import build_prompt, title_trie
from flower_lite.rewards import log_popularity
from flower_lite.prompts import encode_prompts
from flower_lite.config import Objective
from flower_lite.rollout import continue_prompts, prompt_pass, sample_on_policy, teacher_forced
from flower_lite.train import FitData, Trainer, TrainConfig, fit, load_checkpoint_file

PROMPT = build_prompt("Recommend a movie.")
LOG_Z_LR, TB_STEPS = 3.0, 20  # Adam on log Z_θ alone: about 3 per step, cosine decay to 0


@pytest.fixture(scope="module")
def setup():
    catalog = load_default_catalog()
    titles = catalog.titles[:40]
    counts = catalog.counts()[:40].astype(float)
    _, tok = make_tiny_model(titles + [PROMPT])
    trie = title_trie(tok, titles, counts)
    items = np.random.default_rng(0).choice(40, size=64, p=counts / counts.sum())
    return titles, tok, trie, FitData([PROMPT] * 64, items), counts


def fresh_model(titles):
    return make_tiny_model(titles + [PROMPT])[0]


def config(objective=Objective("subtb", theta=0.5), **kw):
    base = dict(trajectories="mixed", offline_threshold=1e9, max_steps=6, eval_every=2,
                save_every=100, lr=3e-3, warmup_steps=2, batch_size=8, grad_accum=2)
    return TrainConfig(objective=objective, **{**base, **kw})


def test_resume_equals_uninterrupted_training(setup, tmp_path):
    titles, tok, trie, data, _ = setup
    whole = fit(fresh_model(titles), tok, trie, config(), data, output_dir=tmp_path / "a", progress=False)
    Trainer(fresh_model(titles), tok, trie, config(), data, output_dir=tmp_path / "b", progress=False).run(stop_at=3)
    assert load_checkpoint_file(tmp_path / "b" / "checkpoint.pt")["loop"]["step"] == 3
    resumed = fit(fresh_model(titles), tok, trie, config(), data, output_dir=tmp_path / "b", progress=False)
    for (name, p), (_, q) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    logged = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 2, 4, 6]  # the interrupted run's lines are not duplicated
    assert [r["loss"] for r in logged[1:]] == pytest.approx([r["loss"] for r in whole.history[1:]], abs=1e-6)
    assert not list((tmp_path / "b").glob("*.tmp"))
    assert (tmp_path / "b" / "final" / "config.json").exists()


def test_training_lowers_the_loss_for_every_method(setup):
    titles, tok, trie, data, _ = setup
    for objective, trajectories in [(Objective("sft"), "offline"), (Objective("subtb", theta=0.5), "offline"),
                                    (Objective("subtb"), "on_policy")]:
        cfg = config(objective, trajectories=trajectories, max_steps=12, eval_every=12, lr=1e-2, warmup_steps=0, schedule="constant")
        result = fit(fresh_model(titles), tok, trie, cfg, data, valid=data, progress=False)
        first, last = result.history[0]["valid_loss"], result.history[-1]["valid_loss"]
        assert last < 0.9 * first, (objective.name, first, last)


def test_tb_learns_log_z_and_db_lowers_its_loss(setup):
    titles, tok, trie, data, _ = setup
    # TB with the policy frozen (lr 0) on one full batch: the loss is mean_x (log Z_θ + log π(x) - log P(x))^2
    # over the data's titles x, P(x) = R(x) / Z (the learned log Z_θ is relative to the exact log Z, objective.py),
    # so its optimum is mean_x (log P(x) - log π(x)); log Z_θ starts at 0 and must get there.
    model = fresh_model(titles)
    tb = Trainer(model, tok, trie, config(Objective("tb"), trajectories="offline", lr=0.0, log_z_lr=LOG_Z_LR,
                                          batch_size=len(data), grad_accum=1, warmup_steps=0, max_steps=TB_STEPS,
                                          max_grad_norm=None), data, progress=False)
    traj = trie.item_trajectories(torch.as_tensor(data.items))
    with torch.no_grad():
        action, stop = teacher_forced(model, encode_prompts(tok, data.prompts), traj, trie.eos_id)
    steps = torch.arange(action.shape[1])[None, :] < traj.lengths[:, None]
    log_pi = (action * steps).sum(1) + stop.gather(1, traj.lengths[:, None])[:, 0]  # title tokens, then T
    log_p = trie.title_log_probs()[trie.item_title[torch.as_tensor(data.items)]]
    optimum = (log_p.double() - log_pi.double()).mean().item()
    assert abs(optimum) > 5  # far from log Z_θ's start, 0 (measured: 26.1)
    tb.run()
    # measured: 27.0 after 20 steps; at least 90 % of the way from 0
    assert abs(tb.log_z.item() - optimum) < 0.1 * abs(optimum)
    # DB on the trie's exact flows: its loss on all the data falls over a few steps
    db = Trainer(fresh_model(titles), tok, trie, config(Objective("db", granularity=2), trajectories="offline"), data,
                 progress=False)
    rows = np.arange(len(data))
    with torch.no_grad():
        before = db.loss(data, rows)[0].item()
    db.run()
    with torch.no_grad():
        after = db.loss(data, rows)[0].item()
    assert np.isfinite(before) and after < 0.9 * before  # measured: 120.3 -> 85.7


def test_per_user_rewards_reach_the_loss(setup):
    titles, tok, trie, data, counts = setup
    trainer = Trainer(fresh_model(titles), tok, trie, config(Objective("subtb"), trajectories="offline"), data, progress=False)
    rows = np.arange(8)
    plain, _ = trainer.loss(data, rows)
    pop = log_popularity(counts)
    trainer.log_rewards_fn = lambda keys: pop.expand(len(keys), -1)  # the same rewards, per user
    same, _ = trainer.loss(data, rows)
    assert same.item() == pytest.approx(plain.item(), rel=1e-5)
    trainer.log_rewards_fn = lambda keys: (pop + torch.linspace(0, 3, len(pop))).expand(len(keys), -1)
    assert abs(trainer.loss(data, rows)[0].item() - plain.item()) > 1e-3


def test_early_stopping_selects_on_validation(setup, tmp_path):
    titles, tok, trie, data, _ = setup
    cfg = config(Objective("sft"), trajectories="offline", lr=0.5, warmup_steps=0, schedule="constant", patience=2, max_steps=40, eval_every=1)
    result = fit(fresh_model(titles), tok, trie, cfg, data, valid=data, output_dir=tmp_path, progress=False)
    assert result.stopped_early and result.history[-1]["step"] < 40
    valid = [r["valid_loss"] for r in result.history]
    assert result.best_step == result.history[int(np.argmin(valid))]["step"]
    assert (tmp_path / "best.pt").exists()


def test_corrupt_and_mismatched_checkpoints_are_named(setup, tmp_path):
    titles, tok, trie, data, _ = setup
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        fit(fresh_model(titles), tok, trie, config(), data, output_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint_file(tmp_path / "missing.pt")
    good = tmp_path / "good"
    Trainer(fresh_model(titles), tok, trie, config(), data, output_dir=good, progress=False).run(stop_at=1)
    with pytest.raises(ValueError, match="other settings.*lr"):
        fit(fresh_model(titles), tok, trie, config(lr=1e-4), data, output_dir=good, progress=False)


def test_sampled_trajectories_stay_on_the_trie(setup):
    titles, tok, trie, _, _ = setup
    model = fresh_model(titles)
    prompts = encode_prompts(tok, [PROMPT] * 32)
    traj = sample_on_policy(model, prompts, trie, temperature=2.0, generator=torch.Generator().manual_seed(0))
    nodes = trie.walk(traj.tokens, traj.mask)
    ends = nodes.gather(1, traj.lengths[:, None])[:, 0]
    assert (ends >= 0).all() and (trie.stop_child(ends) >= 0).all()  # every sample is a complete title
    back = trie.item_trajectories(torch.arange(len(titles)))
    assert back.tokens.shape[0] == len(titles)


def test_one_prompt_pass_equals_teacher_forcing_each_set(setup):
    """continue_prompts (one pass over left-padded prompts, its cache shared by two title sets of
    different widths) gives teacher_forced's log-probs and gradients; sampling from that pass draws
    the same titles as sampling from scratch."""
    titles, tok, trie, _, _ = setup
    model = fresh_model(titles).train()
    prompts = encode_prompts(tok, [PROMPT, "Recommend", build_prompt("Recommend a movie.", titles[:3], "movie")])
    short = trie.item_trajectories(torch.tensor([0, 0, 1]))
    long = trie.item_trajectories(torch.tensor([int(np.argmax([len(p) for p in trie.structure.paths.tolist()])), 7, 2]))
    assert short.tokens.shape[1] != long.tokens.shape[1] and (prompts["attention_mask"] == 0).any()
    params = [p for p in model.parameters() if p.requires_grad]
    shared = continue_prompts(model, prompts, prompt_pass(model, prompts), [short, long], trie.eos_id)
    separate = [teacher_forced(model, prompts, t, trie.eos_id) for t in (short, long)]
    for (a, s_), (b, t_) in zip(shared, separate):
        assert a.shape == b.shape and s_.shape == t_.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_, t_, atol=1e-5, rtol=1e-5)
    weights = torch.randn(4, generator=torch.Generator().manual_seed(0))

    def objective(parts):
        return sum(w * (x ** 2).sum() for w, x in zip(weights, [v for pair in parts for v in pair]))

    g_shared = torch.autograd.grad(objective(shared), params)
    g_separate = torch.autograd.grad(objective(separate), params)
    for x, y in zip(g_shared, g_separate):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    draws = [sample_on_policy(model, prompts, trie, 1.5, torch.Generator().manual_seed(3), first=first)
             for first in (prompt_pass(model, prompts), None)]
    assert torch.equal(draws[0].tokens, draws[1].tokens) and torch.equal(draws[0].lengths, draws[1].lengths)


def test_gradient_checkpointing_falls_back_to_one_pass_per_set(setup):
    """Under gradient checkpointing transformers keeps no cache while training: the trainer then
    teacher-forces each title set on its own, with the same loss."""
    titles, tok, trie, data, _ = setup
    losses_by_mode = []
    for checkpointing in (False, True):
        model = fresh_model(titles)
        if checkpointing:
            enable_gradient_checkpointing(model)
        trainer = Trainer(model, tok, trie, config(max_steps=1), data, progress=False)
        model.train()
        if checkpointing:
            assert prompt_pass(model, trainer.policy.prompts([PROMPT]).encoded) is None
        loss, _ = trainer.loss(data, np.arange(8), "on_policy", torch.Generator().manual_seed(5))
        losses_by_mode.append(loss.item())
    assert losses_by_mode[0] == pytest.approx(losses_by_mode[1], rel=1e-5)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown loss"):
        Objective("ppo")
    with pytest.raises(ValueError, match="theta must be <= 1"):
        Objective("subtb", theta=1.5)
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="prompts"):
        FitData([], np.array([], dtype=int))


@pytest.mark.slow
def test_one_sft_and_one_flower_step_on_the_qwen2_5_0_5b_architecture(setup):
    titles, tok, trie, data, _ = setup
    model = random_qwen2_5_0_5b()  # random weights from the real config (494M parameters)
    before = model.model.embed_tokens.weight[:50].clone()
    for objective in (Objective("sft"), Objective("subtb", theta=0.995)):
        cfg = TrainConfig(objective=objective, max_steps=1, eval_every=1, batch_size=2, warmup_steps=0, lr=1e-4)
        result = fit(model, tok, trie, cfg, data, progress=False)
        assert np.isfinite(result.history[-1]["loss"])
    assert not torch.equal(before, model.model.embed_tokens.weight[:50])
