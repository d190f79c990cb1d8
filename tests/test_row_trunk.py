"""The per-row frozen trunk equals the full model: log-probs, gradients, a batch of different prompts; its cache is keyed."""
import numpy as np
import pytest
import torch

from flower_lite.data import load_default_catalog
from flower_lite.models import LoraSettings, build_tiny_tokenizer
from flower_lite.prompts import encode_prompts, title_trie
from flower_lite.rollout import teacher_forced
from flower_lite.row_trunk import RowTrunkPolicy, row_states, top_pass, trie_rows
from flower_lite.trunk import freeze_trunk
from flower_lite.tree_attention import decoder_parts

PROMPTS = ["recommend a movie", "The user liked Foggy Alibi and Noisy Weekend and more; next movie:",
           "The user liked Noisy Weekend; next:"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def catalogue():
    titles = [t for t in dict.fromkeys(load_default_catalog().titles)][:30]
    tok = build_tiny_tokenizer(load_default_catalog().titles + PROMPTS)
    trie = title_trie(tok, titles, list(range(1, len(titles) + 1)))
    return tok, trie


def tiny(arch: str, tok):
    """The random 4-layer models of the trie-trunk tests (logits sharpened by the final norm x 8)."""
    from test_trunk import tiny_model

    return tiny_model(arch, tok)


def batch_rows(trie, items):
    """Prompts and target trajectories of rows with two (three) different prompts and titles of different lengths."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(items))]
    return prompts, trie.item_trajectories(torch.tensor(items))


def policy_and_reference(arch, catalogue, top_layers, lora, tmp_path=None):
    tok, trie = catalogue
    settings = LoraSettings(r=4, dropout=0.0) if lora else None
    items = [0, 5, 11, 3, 17, 9]
    prompts, traj = batch_rows(trie, items)
    model = tiny(arch, tok)
    states = row_states(model, trie_rows(tok, prompts, items, trie), split=4 - top_layers, cache_dir=tmp_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        policy = RowTrunkPolicy(model, tok, trie, states, top_layers=top_layers, lora=settings)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in policy.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return policy, prompts, traj


@pytest.mark.parametrize("arch", ["qwen2-sdpa", "qwen2-eager", "llama-sdpa"])
@pytest.mark.parametrize("top_layers,lora", [(2, False), (1, True), (2, True)])
def test_row_log_probs_equal_the_full_model_with_different_prompts_in_one_batch(arch, catalogue, top_layers, lora):
    tok, trie = catalogue
    policy, prompts, traj = policy_and_reference(arch, catalogue, top_layers, lora)
    kids = torch.randint(0, len(tok), (traj.tokens.shape[0], traj.tokens.shape[1] + 1, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        action, stop, children = policy.log_probs(prompts, [traj], trie.eos_id, [kids])[0]
        enc = encode_prompts(tok, prompts)
        ref_action, ref_stop, ref_children = teacher_forced(policy.module, enc, traj, trie.eos_id, kids)
    assert (traj.lengths.unique().numel() > 1) and len(set(prompts)) > 1
    torch.testing.assert_close(action, ref_action, atol=1e-4, rtol=0)
    torch.testing.assert_close(stop, ref_stop, atol=1e-4, rtol=0)
    states = (torch.arange(traj.tokens.shape[1] + 1)[None] <= traj.lengths[:, None])[..., None]  # past the end: padding
    torch.testing.assert_close(children * states, ref_children * states, atol=1e-4, rtol=0)
    assert action.abs().sum() > 1.0  # not a vacuous comparison of zeros


def test_a_row_gives_the_same_log_probs_alone_and_in_a_batch(catalogue):
    tok, trie = catalogue
    policy, prompts, traj = policy_and_reference("qwen2-sdpa", catalogue, 2, False)
    with torch.no_grad():
        action, stop = policy.log_probs(prompts, [traj], trie.eos_id)[0]
        for b in range(len(prompts)):
            one = type(traj)(traj.tokens[b : b + 1, : int(traj.lengths[b])], traj.lengths[b : b + 1])
            a, s = policy.log_probs([prompts[b]], [one], trie.eos_id)[0]
            torch.testing.assert_close(a[0], action[b, : int(traj.lengths[b])], atol=1e-5, rtol=0)
            torch.testing.assert_close(s[0], stop[b, : int(traj.lengths[b]) + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_gradients_equal_the_uncached_model(catalogue, lora):
    tok, trie = catalogue
    policy, prompts, traj = policy_and_reference("qwen2-sdpa", catalogue, 2, lora)
    weights = torch.linspace(0.5, 1.5, traj.tokens.shape[1] + 1)

    def loss(action, stop):
        return (action * weights[:-1]).sum() + (stop * weights).sum()

    params = [p for p in policy.module.parameters() if p.requires_grad]
    loss(*policy.log_probs(prompts, [traj], trie.eos_id)[0]).backward()
    cached = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    loss(*teacher_forced(policy.module, encode_prompts(tok, prompts), traj, trie.eos_id)).backward()
    assert sum(float(g.abs().sum()) for g in cached) > 0
    for g, p in zip(cached, params):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)


def test_the_last_layer_runs_only_at_the_state_positions(catalogue):
    """The MLP of the last top layer sees B x (K + 1) positions, the one below every padded position."""
    tok, trie = catalogue
    policy, prompts, traj = policy_and_reference("qwen2-sdpa", catalogue, 2, False)
    seen = {}
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, i[0].shape[1]))
             for k, layer in enumerate(policy.top)]
    with torch.no_grad():
        policy.log_probs(prompts, [traj], trie.eos_id)
    for h in hooks:
        h.remove()
    K = traj.tokens.shape[1]
    width = max(len(tok(p)["input_ids"]) for p in prompts) + K
    assert seen == {0: width, 1: K + 1}


def test_bfloat16_states_stay_close(catalogue):
    tok, trie = catalogue
    items = [0, 5, 11]
    prompts, traj = batch_rows(trie, items)
    model = tiny("qwen2-sdpa", tok)
    full = row_states(model, trie_rows(tok, prompts, items, trie), split=2)
    half = row_states(model, trie_rows(tok, prompts, items, trie), split=2, dtype=torch.bfloat16)
    assert half.nbytes * 2 == full.nbytes
    a, b = full.row(1), half.row(1)
    assert 0 < float((a - b).abs().max()) <= 0.02 * float(a.abs().max())


@pytest.mark.parametrize("arch", ["qwen2-sdpa", "qwen2-eager"])
def test_rows_that_share_a_prompt_run_it_once_and_get_their_own_rows_states(arch, catalogue):
    """RQ3's pairs (one prompt, several titles) run as one tree-attended sequence: each row's states equal the row
    computed alone, and the lower layers see each prompt once."""
    tok, trie = catalogue
    items = [0, 5, 11, 3, 17, 9, 21]
    prompts = [PROMPTS[1]] * 4 + [PROMPTS[2]] * 2 + [PROMPTS[0]]
    rows = trie_rows(tok, prompts, items, trie)
    model = tiny(arch, tok)
    seen = []
    hook = decoder_parts(model).layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0] * i[0].shape[1]))
    grouped = row_states(model, rows, split=2)
    hook.remove()
    prompt_tokens = [len(tok(p)["input_ids"]) for p in dict.fromkeys(prompts)]
    assert sum(seen) == 3 * max(len(r.prompt) + sum(len(x.title) for x in rows if x.prompt == r.prompt) for r in rows)
    assert sum(seen) < sum(len(r) for r in rows) and len(prompt_tokens) == 3
    for r, row in enumerate(rows):
        alone = row_states(model, [row], split=2)
        torch.testing.assert_close(grouped.row(r), alone.row(0), atol=1e-5, rtol=0)
    assert float(grouped.row(1)[-1].sub(grouped.row(0)[-1]).abs().max()) > 1e-3  # titles do not see each other's


def test_a_changed_row_or_model_invalidates_the_cache(catalogue, tmp_path):
    tok, trie = catalogue
    items = [0, 5, 11]
    prompts, _ = batch_rows(trie, items)
    rows = trie_rows(tok, prompts, items, trie)
    model = tiny("qwen2-sdpa", tok)
    first = row_states(model, rows, split=2, cache_dir=tmp_path)
    again = row_states(model, rows, split=2, cache_dir=tmp_path)
    assert again.folder == first.folder and isinstance(again.hidden, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.hidden), np.asarray(first.hidden))
    changed_row = row_states(model, trie_rows(tok, prompts, [0, 5, 12], trie), split=2, cache_dir=tmp_path)
    other_split = row_states(model, rows, split=1, cache_dir=tmp_path)
    with torch.no_grad():
        decoder_parts(model).layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    changed_model = row_states(model, rows, split=2, cache_dir=tmp_path)
    folders = {first.folder, changed_row.folder, other_split.folder, changed_model.folder}
    assert len(folders) == 4
    assert not np.array_equal(np.asarray(changed_model.hidden), np.asarray(first.hidden))
    # the top layers do not define the states: changing them reuses the folder
    with torch.no_grad():
        decoder_parts(model).layers[-1].mlp.down_proj.weight[0, 0] += 1.0
    assert row_states(model, rows, split=2, cache_dir=tmp_path).folder == changed_model.folder


def test_a_trajectory_that_is_not_a_stored_row_is_refused(catalogue):
    tok, trie = catalogue
    policy, prompts, traj = policy_and_reference("qwen2-sdpa", catalogue, 2, False)
    other = trie.item_trajectories(torch.tensor([20] * len(prompts)))
    with pytest.raises(ValueError, match="offline"):
        policy.log_probs(prompts, [other], trie.eos_id)
    with pytest.raises(ValueError, match="offline"):
        policy.sample(prompts, trie)


@pytest.mark.usefixtures("smollm2", "movielens")
def test_smollm2_rows_equal_the_full_model():
    """SmolLM2 with LoRA on its top 2 layers: three real next-item rows, cached == full to 1e-4."""
    from flower_lite.data import load_movielens_100k
    from flower_lite.models import load_smollm2
    from flower_lite.prompts import build_prompt

    titles = load_movielens_100k().titles[:60]
    model, tok = load_smollm2()
    trie = title_trie(tok, titles, [1.0] * len(titles), stop="newline")
    prompts = [build_prompt("Given a list of movies the user recently enjoyed, write a new movie the user may enjoy.",
                            titles[i : i + n], "movies") for i, n in ((0, 3), (10, 9), (30, 1))]
    items = [41, 7, 55]
    traj = trie.item_trajectories(torch.tensor(items))
    states = row_states(model, trie_rows(tok, prompts, items, trie), split=28)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        policy = RowTrunkPolicy(model, tok, trie, states, top_layers=2, lora=LoraSettings(r=16, dropout=0.0))
    with torch.no_grad():
        for name, p in policy.module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        action, stop = policy.log_probs(prompts, [traj], trie.eos_id)[0]
        ref_action, ref_stop = teacher_forced(policy.module, encode_prompts(tok, prompts), traj, trie.eos_id)
    torch.testing.assert_close(action, ref_action, atol=1e-4, rtol=0)
    torch.testing.assert_close(stop, ref_stop, atol=1e-4, rtol=0)
