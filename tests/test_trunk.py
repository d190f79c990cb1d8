"""The frozen-trunk policy equals the full model: log-probs, gradients, exact distributions, sampling."""
import math
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flower_lite.data import load_default_catalog
from flower_lite.distributions import constrained_item_distribution, exact_item_distribution
from flower_lite.models import LoraSettings, build_tiny_model, build_tiny_tokenizer
from flower_lite.prompts import encode_prompts, title_trie
from flower_lite.rollout import teacher_forced, teacher_forced_logits
from flower_lite.trie import Trajectories
from flower_lite.tree_attention import state_nodes
from flower_lite.trunk import CachedTrunkPolicy, freeze_trunk

PROMPTS = ["recommend a movie", "The user liked Foggy Alibi and Noisy Weekend; next movie:"]
ARCHS = ("qwen2-sdpa", "qwen2-eager", "llama-sdpa")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def catalogue():
    """Tokenizer and trie: 40 titles, a chain of titles that prefix each other, a duplicate."""
    base = [t for t in dict.fromkeys(load_default_catalog().titles) if not t.startswith("Iron")][:40]
    titles = base + ["Iron", "Iron Spell", "Iron Spell II", base[2]]
    tok = build_tiny_tokenizer(load_default_catalog().titles + PROMPTS)
    trie = title_trie(tok, titles, list(range(1, len(titles) + 1)))
    assert trie.terminal_nodes.numel() == len(titles) - 1
    return tok, trie


def tiny_model(arch: str, tok, num_layers: int = 4):
    """A random 4-layer model whose logits are sharpened (final norm x 8) so that distributions are far from uniform."""
    if arch.startswith("qwen2"):
        model = build_tiny_model(tok, num_layers=num_layers, attn_implementation=arch.split("-")[1])
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             attn_implementation="sdpa")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        model.get_decoder().norm.weight.mul_(8.0)
    return model


def make_policy(arch: str, catalogue, lora: bool) -> CachedTrunkPolicy:
    """Top 2 layers fully trainable, or LoRA on the top layer with random B (so that A gets gradients too)."""
    tok, trie = catalogue
    settings = LoraSettings(r=4, dropout=0.0) if lora else None
    with torch.random.fork_rng(devices=[]):  # peft draws LoRA A from the global RNG
        torch.manual_seed(7)
        policy = CachedTrunkPolicy(tiny_model(arch, tok), tok, trie, top_layers=1 if lora else 2, lora=settings)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in policy.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return policy


def random_states(trie, rng: random.Random, count: int) -> torch.Tensor:
    """``count`` trie states: first every complete title that prefixes another one ("Iron", "Iron Spell"),
    then random states of every depth, a third of them complete titles (parents of T)."""
    s = trie.structure
    titles = s.parent[trie.terminal_nodes]
    prefixes = titles[s.child_hi[titles] - s.child_lo[titles] > 1].tolist()
    states, titles = state_nodes(trie).tolist(), titles.tolist()
    drawn = [rng.choice(titles if k % 3 == 0 else states) for k in range(count - len(prefixes))]
    return torch.tensor(prefixes + drawn)


def as_trajectories(trie, nodes: torch.Tensor) -> Trajectories:
    tokens, lengths = trie.prefix_tokens(nodes)
    return Trajectories(tokens.clamp_min(0), lengths)


def full_log_probs(policy, tok, prompts, traj, eos):
    return teacher_forced(policy.module, encode_prompts(tok, prompts), traj, eos)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lora", [False, True])
def test_log_probs_and_logits_match_full_model(arch, lora, catalogue):
    tok, trie = catalogue
    policy = make_policy(arch, catalogue, lora)
    rng = random.Random(2 * ARCHS.index(arch) + lora)
    sets = [as_trajectories(trie, random_states(trie, rng, n)) for n in (12, 12)]
    assert len(set(sets[0].lengths.tolist())) >= 4, "a batch mixing lengths"
    with torch.no_grad():
        one = [PROMPTS[0]] * 12
        got = policy.log_probs(policy.prompts(one), sets, trie.eos_id)
        mixed = [PROMPTS[k % 2] for k in range(12)]  # two prompts in one batch: the full model left-pads
        got_mixed = policy.log_probs(mixed, sets[:1])[0]
        for (action, stop), traj in zip(got, sets):
            ref_action, ref_stop = full_log_probs(policy, tok, one, traj, trie.eos_id)
            torch.testing.assert_close(action, ref_action, rtol=0, atol=1e-5)
            torch.testing.assert_close(stop, ref_stop, rtol=0, atol=1e-5)
            assert (action[~traj.mask] == 0).all() and action[traj.mask].lt(0).all()
        ref_action, ref_stop = full_log_probs(policy, tok, mixed, sets[0], trie.eos_id)
        torch.testing.assert_close(got_mixed[0], ref_action, rtol=0, atol=1e-5)
        torch.testing.assert_close(got_mixed[1], ref_stop, rtol=0, atol=1e-5)

        traj = sets[1]
        states = trie.walk(traj.tokens, traj.mask)
        nodes = torch.unique(states[states >= 0])
        logits = policy.node_logits(PROMPTS[0], nodes)
        batch = encode_prompts(tok, one)
        ref = teacher_forced_logits(policy.module, batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                    traj.tokens, traj.mask)  # [B, K + 1, V] at every state
        row = torch.searchsorted(nodes, states.clamp_min(0))
        valid = states >= 0
        torch.testing.assert_close(logits[row[valid]], ref[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_gradients_match_full_model(lora, catalogue):
    tok, trie = catalogue
    policy = make_policy("qwen2-sdpa", catalogue, lora)
    traj = as_trajectories(trie, random_states(trie, random.Random(3), 16))
    gen = torch.Generator().manual_seed(0)
    w_action, w_stop = torch.randn(traj.tokens.shape, generator=gen), torch.randn(16, traj.tokens.shape[1] + 1, generator=gen)
    trainable = {n: p for n, p in policy.module.named_parameters() if p.requires_grad}
    top = ["layers.3."] if lora else ["layers.2.", "layers.3."]
    assert trainable and all(any(t in n for t in top) for n in trainable), "only the top layers train"
    assert all(("lora_" in n) == lora for n in trainable)

    def grads(log_probs) -> dict[str, torch.Tensor]:
        policy.module.zero_grad(set_to_none=True)
        action, stop = log_probs()
        ((action * w_action).sum() + (stop * w_stop).sum()).backward()
        return {n: p.grad.clone() for n, p in trainable.items()}

    cached = grads(lambda: policy.log_probs([PROMPTS[0]] * 16, [traj])[0])
    full = grads(lambda: full_log_probs(policy, tok, [PROMPTS[0]] * 16, traj, trie.eos_id))
    assert all(p.grad is None for p in policy.module.parameters() if not p.requires_grad)
    for name in trainable:
        scale = full[name].abs().max()
        assert scale > 0, f"{name} gets no gradient"
        torch.testing.assert_close(cached[name], full[name], rtol=1e-5, atol=1e-5 * float(scale), msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_item_distributions_match_decoding(arch, catalogue):
    tok, trie = catalogue
    policy = make_policy(arch, catalogue, lora=True)
    for temperature in (1.0, 0.7):
        p_title, invalid, p_constrained = policy.item_distributions(PROMPTS[0], trie, temperature=temperature)
        ref_title, ref_invalid = exact_item_distribution(policy.module, tok, PROMPTS[0], trie)
        ref_constrained = constrained_item_distribution(policy.module, tok, PROMPTS[0], trie, temperature=temperature)
        torch.testing.assert_close(p_title, ref_title, rtol=1e-5, atol=0)
        assert math.isclose(invalid, ref_invalid, rel_tol=1e-6) and 0.1 < invalid < 1
        torch.testing.assert_close(p_constrained, ref_constrained, rtol=1e-5, atol=0)
        assert math.isclose(float(p_constrained.sum()), 1.0, abs_tol=1e-9)
    whole, p_title = policy.cache(PROMPTS[0]), policy.item_distributions(PROMPTS[0], trie)[0]
    policy.chunk_nodes, policy.caches = 7, {}  # cache build and distributions in chunks of 7 nodes
    torch.testing.assert_close(policy.cache(PROMPTS[0]).node_hidden, whole.node_hidden, rtol=0, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(policy.item_distributions(PROMPTS[0], trie)[0], p_title, rtol=1e-5, atol=0)


def test_child_and_stop_log_probs_match_the_full_model(catalogue):
    """What flow distillation and the stop-term measurements read: log pi(c | s) of every child of every state,
    and log pi(T | s) at every state, equal the full model's (``LMPolicy`` on the same weights)."""
    from flower_lite.distributions import stop_log_probs
    from flower_lite.rewards import path_rewards
    from flower_lite.rollout import LMPolicy

    tok, trie = catalogue
    policy = make_policy("llama-sdpa", catalogue, lora=True)
    traj = as_trajectories(trie, random_states(trie, random.Random(11), 10))
    kids = path_rewards(trie, traj.tokens, traj.lengths, children=True).children
    full = LMPolicy(policy.module, tok)
    with torch.no_grad():
        cached = policy.log_probs([PROMPTS[1]] * 10, [traj], trie.eos_id, [kids.tokens])[0]
        ref = full.log_probs(full.prompts([PROMPTS[1]] * 10), [traj], trie.eos_id, [kids.tokens])[0]
    assert len(cached) == len(ref) == 3 and cached[2].shape == kids.tokens.shape
    torch.testing.assert_close(cached[2][kids.mask], ref[2][kids.mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached[0], ref[0], rtol=0, atol=1e-5)
    log_stop = policy.stop_log_probs(PROMPTS[1], trie)
    torch.testing.assert_close(log_stop, stop_log_probs(policy.module, tok, PROMPTS[1], trie), rtol=0, atol=1e-5,
                               equal_nan=True)
    assert torch.isnan(log_stop).sum() == trie.terminal_nodes.numel()


def children_uniform(trie) -> torch.Tensor:
    """The title distribution of a sampler that ignores the model (uniform over each state's children)."""
    s = trie.structure
    log_p = torch.zeros(trie.num_nodes, dtype=torch.float64)
    for n in range(1, trie.num_nodes):
        p = int(s.parent[n])
        log_p[n] = log_p[p] - math.log(int(s.child_hi[p] - s.child_lo[p]))
    return log_p[trie.terminal_nodes].exp()


def test_sampling_stays_on_trie_and_matches_constrained_distribution(catalogue):
    tok, trie = catalogue
    policy = make_policy("qwen2-sdpa", catalogue, lora=True)
    temperature = 1.5
    q = policy.item_distributions(PROMPTS[0], trie, temperature=temperature)[2]
    wrong = {"uniform children": children_uniform(trie), "temperature 1": policy.item_distributions(PROMPTS[0], trie)[2]}
    gen = torch.Generator().manual_seed(0)
    draws = [policy.sample([PROMPTS[0]] * 500, trie, temperature, gen, 64) for _ in range(6)]
    finals = []
    for traj in draws:
        states = trie.walk(traj.tokens, traj.mask)
        finals.append(states[torch.arange(len(states)), traj.lengths])
        assert (traj.tokens[~traj.mask] == 0).all()
    terminal = trie.stop_child(torch.cat(finals))  # -1 once a walk leaves the trie or ends inside a title
    assert (terminal >= 0).all(), "every draw stays on the trie and ends on a complete title"
    freq = torch.bincount(torch.searchsorted(trie.terminal_nodes, terminal), minlength=q.numel()).double() / terminal.numel()

    def chi2(p: torch.Tensor) -> float:
        return float(((freq - p) ** 2 / p).sum() * terminal.numel())

    bound = q.numel() - 1 + 5 * math.sqrt(2 * (q.numel() - 1))  # mean + 5 sd of chi-square(k - 1)
    assert chi2(q) < bound
    assert all(chi2(p) > 2 * bound for p in wrong.values()), "a sampler of the wrong distribution must fail"

    mixed = policy.sample([PROMPTS[k % 2] for k in range(10)], trie, 1.0, torch.Generator().manual_seed(9), 64)
    gen = torch.Generator().manual_seed(9)  # prompt by prompt, in order of first appearance, from one generator
    for rows, prompt in ((slice(0, None, 2), PROMPTS[0]), (slice(1, None, 2), PROMPTS[1])):
        alone = policy.sample([prompt] * 5, trie, 1.0, gen, 64)
        assert torch.equal(mixed.lengths[rows], alone.lengths)
        assert torch.equal(mixed.tokens[rows, : alone.tokens.shape[1]], alone.tokens)


def test_each_node_runs_once_through_the_lower_layers(catalogue):
    tok, trie = catalogue
    policy = make_policy("qwen2-sdpa", catalogue, lora=False)
    counts = {"lower": 0, "top": 0}
    hooks = [policy.parts.layers[0].register_forward_hook(lambda m, args, out: counts.__setitem__("lower", counts["lower"] + args[0].shape[1])),
             policy.parts.layers[policy.split].register_forward_hook(lambda m, args, out: counts.__setitem__("top", counts["top"] + args[0].shape[1]))]
    try:
        cache = policy.cache(PROMPTS[0])
        prompt_len = len(tok(PROMPTS[0])["input_ids"])
        num_states = trie.num_nodes - 1 - trie.terminal_nodes.numel()  # every node but the root and those after T
        assert counts["lower"] == prompt_len + num_states and counts["top"] == 0
        assert torch.isnan(cache.node_hidden[0]).all() and torch.isnan(cache.node_hidden[trie.terminal_nodes]).all()
        assert not torch.isnan(cache.node_hidden[state_nodes(trie)]).any()
        assert cache.nbytes == 4 * 64 * (prompt_len + trie.num_nodes)
        policy.item_distributions(PROMPTS[0], trie)
        assert counts["top"] == prompt_len + num_states, "the exact distributions run each state once"
        traj = as_trajectories(trie, random_states(trie, random.Random(0), 8))
        policy.log_probs([PROMPTS[0]] * 8, [traj])
        policy.sample([PROMPTS[0]] * 8, trie, 1.0, torch.Generator().manual_seed(0), 64)
        assert counts["lower"] == prompt_len + num_states, "no later pass runs the lower layers"
    finally:
        for h in hooks:
            h.remove()


def test_bf16_options_stay_close(catalogue):
    tok, trie = catalogue
    policy = make_policy("qwen2-sdpa", catalogue, lora=True)
    traj = as_trajectories(trie, random_states(trie, random.Random(1), 8))
    with torch.no_grad():
        ref = policy.log_probs([PROMPTS[0]] * 8, [traj])[0]
        policy.cache_dtype, policy.compute_dtype, policy.caches = torch.bfloat16, torch.bfloat16, {}
        got = policy.log_probs([PROMPTS[0]] * 8, [traj])[0]
    assert policy.cache(PROMPTS[0]).node_hidden.dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0], rtol=0.03, atol=0.05)  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(got[1], ref[1], rtol=0.03, atol=0.05)
    assert not torch.equal(got[0], ref[0]), "bf16 really ran"


def test_refusals(catalogue):
    tok, trie = catalogue
    policy = make_policy("qwen2-sdpa", catalogue, lora=False)
    off = Trajectories(torch.tensor([[trie.eos_id, 1]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="leaves the trie"):
        policy.log_probs([PROMPTS[0]], [off])
    with pytest.raises(ValueError, match="eos_id"):
        policy.log_probs([PROMPTS[0]], [as_trajectories(trie, torch.tensor([1]))], eos_id=trie.eos_id + 1)
    other = title_trie(tok, ["Iron", "Iron Spell"], [1.0, 1.0])
    with pytest.raises(ValueError, match="another trie"):
        policy.item_distributions(PROMPTS[0], other)
    assert policy.item_distributions(PROMPTS[0], trie.reweight(torch.ones(trie.num_items)))[1] > 0  # same structure
    with pytest.raises(ValueError, match="top_layers"):
        freeze_trunk(tiny_model("qwen2-sdpa", tok), top_layers=5)
    with pytest.raises(ValueError, match="peft"):
        freeze_trunk(make_policy("qwen2-sdpa", catalogue, lora=True).module, 1)
    with pytest.raises(ValueError, match="one process"):
        policy.bind(torch.nn.Linear(1, 1))


@pytest.mark.slow
def test_smollm2_cached_log_probs_match_full_model(smollm2, require):
    from flower_lite.experiments.rq1 import RQ1_PROMPT, load_target
    from flower_lite.models import load_smollm2

    require.shared("movies_rq1/movies_100.json")  # the paper's 100 movies, load_target("movies100")
    model, tok = load_smollm2()
    target = load_target("movies100")
    trie = title_trie(tok, target.titles, target.counts)
    policy = CachedTrunkPolicy(model, tok, trie, top_layers=1, lora=LoraSettings(r=16, dropout=0.0))
    traj = trie.item_trajectories(torch.tensor([0, 7, 31, 64, 99]))
    with torch.no_grad():
        action, stop = policy.log_probs([RQ1_PROMPT] * 5, [traj])[0]
        ref_action, ref_stop = full_log_probs(policy, tok, [RQ1_PROMPT] * 5, traj, trie.eos_id)
    torch.testing.assert_close(action, ref_action, rtol=0, atol=1e-4)
    torch.testing.assert_close(stop, ref_stop, rtol=0, atol=1e-4)
    assert policy.split == 29 and all("layers.29." in n for n, p in policy.module.named_parameters() if p.requires_grad)
