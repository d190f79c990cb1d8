"""Trie-constrained decoding: the logits processor, beam search, sampling and exact distributions."""
import math
import random

import pytest
import torch
from transformers import LogitsProcessorList

from flower_lite.data import load_default_catalog
from flower_lite.decoding import NEUTRAL_GENERATION, TrieLogitsProcessor, decode_states, recommend, sample_titles, title_index
from flower_lite.distributions import constrained_item_distribution, exact_item_distribution
from flower_lite.models import make_tiny_model
from flower_lite.prompts import encode_prompts, encode_titles, title_trie


def sample_items(model, tok, prompts, trie, **kw):
    """Constrained samples as item ids: a duplicate title stands for its lowest item id."""
    return trie.title_first_item()[sample_titles(model, tok, prompts, trie, **kw)].tolist()


PROMPT = "recommend a movie"
PROMPTS = [PROMPT, "The user liked Foggy Alibi and Noisy Weekend; next:", "films"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tricky_catalogue(texts=()):
    """Tiny model + a 36-item catalogue with shared prefixes, titles that prefix others, and two duplicates: (model,
    tokenizer, trie, titles, token paths); the tokenizer also learns ``texts``."""
    catalogue = load_default_catalog().titles
    base = [t for t in dict.fromkeys(catalogue) if not t.startswith("Iron")][:30]
    titles = base + ["Iron", "Iron Spell", "Iron Spell II", "Iron Spell III", base[0], base[3]]
    model, tok = make_tiny_model(catalogue + list(texts))
    trie = title_trie(tok, titles, [1.0] * len(titles))
    paths = encode_titles(tok, titles)
    assert paths[30] == paths[31][: len(paths[30])], "need a title whose tokens prefix another's"
    assert trie.terminal_nodes.numel() == len(titles) - 2, "two duplicate titles"
    return model, tok, trie, titles, paths


@pytest.fixture(scope="module")
def setup():
    return tricky_catalogue(PROMPTS)


def dict_children(paths, eos):
    """Naive reference: prefix tuple -> set of allowed next tokens."""
    children = {}
    for p in paths:
        full = tuple(p) + (eos,)
        for k in range(len(full)):
            children.setdefault(full[:k], set()).add(full[k])
    return children


def reference_allowed(children, generated, eos, pad):
    if eos in generated:
        return {eos, pad}
    return children.get(tuple(generated), {eos, pad})  # off the trie: only stop tokens


def random_generated(rng, paths, eos, pad, length, vocab):
    """A generated suffix of ``length`` tokens: a title prefix, a finished title plus padding, or junk."""
    kind = rng.random()
    path = list(rng.choice(paths)) + [eos]
    if kind < 0.6 and length <= len(path):
        return path[:length]
    if kind < 0.8 and length >= len(path):
        return path + [pad] * (length - len(path))
    return [rng.randrange(vocab) for _ in range(length)]


def test_processor_masks_match_dict_trie(setup):
    model, tok, trie, _, paths = setup
    eos, pad, vocab = trie.eos_id, tok.pad_token_id, model.config.vocab_size
    children = dict_children(paths, eos)
    rng = random.Random(0)
    prompt = torch.randint(1, vocab, (1, 5))
    for length in range(0, trie.max_path_length + 3):
        rows = [random_generated(rng, paths, eos, pad, length, vocab) for _ in range(40)]
        ids = torch.cat([prompt.expand(len(rows), -1), torch.tensor(rows, dtype=torch.long).view(len(rows), length)], 1)
        got = TrieLogitsProcessor(trie, prompt_length=5, pad_token_id=pad).allowed(ids, vocab)
        for r, row in enumerate(rows):
            assert set(torch.nonzero(got[r]).flatten().tolist()) == reference_allowed(children, row, eos, pad)
        scores = TrieLogitsProcessor(trie, 5, pad)(ids, torch.randn(len(rows), vocab))
        assert torch.equal(torch.isfinite(scores), got)


def test_processor_incremental_states_follow_reordered_rows(setup):
    """Beam search reorders and duplicates rows between calls; the cached states must follow them."""
    model, tok, trie, _, paths = setup
    pad, vocab = tok.pad_token_id, model.config.vocab_size
    rng = random.Random(1)
    proc = TrieLogitsProcessor(trie, prompt_length=3, pad_token_id=pad)
    prompt = torch.randint(1, vocab, (12, 3))
    rows = [[] for _ in range(12)]
    for step in range(trie.max_path_length + 2):
        ids = torch.cat([prompt, torch.tensor(rows, dtype=torch.long).view(12, step)], 1)
        fresh = TrieLogitsProcessor(trie, 3, pad).states(ids)
        assert torch.equal(proc.states(ids), fresh)
        allowed = proc.allowed(ids, vocab)  # second call at the same length: a full re-walk
        parents = [rng.randrange(12) for _ in range(12)]  # reorder with repeats, like beam selection
        tokens = [rng.choice(torch.nonzero(allowed[p]).flatten().tolist() + ([rng.randrange(vocab)] if rng.random() < 0.1 else []))
                  for p in parents]
        rows = [rows[p] + [t] for p, t in zip(parents, tokens)]


def assert_on_trie(trie, generated, pad):
    """Every row walks the trie to a complete title, then only pads."""
    nodes = decode_states(trie, generated)
    assert (title_index(trie, nodes) >= 0).all()
    ends = (generated == trie.eos_id).int().argmax(1)
    after = torch.arange(generated.shape[1]) > ends[:, None]
    assert (generated[after] == pad).all()


def test_generate_with_processor_never_leaves_trie(setup):
    model, tok, trie, _, _ = setup
    rng = random.Random(2)
    pad = tok.pad_token_id
    prompts = ["".join(rng.choice("abcdefgh ,.") for _ in range(rng.randrange(1, 30))) for _ in range(4)]
    batch = encode_prompts(tok, prompts)
    width = batch["input_ids"].shape[1]
    common = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=trie.max_path_length,
                  eos_token_id=trie.eos_id, pad_token_id=pad, **NEUTRAL_GENERATION)
    out = model.generate(logits_processor=LogitsProcessorList([TrieLogitsProcessor(trie, width, pad)]),
                         do_sample=False, num_beams=6, num_return_sequences=6, **common)
    assert_on_trie(trie, out[:, width:], pad)
    titles = title_index(trie, decode_states(trie, out[:, width:])).view(len(prompts), 6)
    assert all(len(set(row)) == 6 for row in titles.tolist()), "beams are distinct titles"
    for seed in range(8):
        torch.manual_seed(seed)
        out = model.generate(logits_processor=LogitsProcessorList([TrieLogitsProcessor(trie, width, pad)]),
                             do_sample=True, top_k=0, top_p=1.0, temperature=1.0 + seed / 4, num_return_sequences=8, **common)
        assert_on_trie(trie, out[:, width:], pad)


def test_title_item_maps(setup):
    _, _, trie, titles, _ = setup
    groups = trie.title_items()
    assert sorted(i for g in groups for i in g) == list(range(len(titles)))
    assert [0, 34] in groups and [3, 35] in groups  # the two duplicate titles
    assert trie.title_first_item().tolist() == [g[0] for g in groups]


def test_recommend_returns_distinct_valid_items_independent_of_batching(setup):
    model, tok, trie, titles, _ = setup
    one = recommend(model, tok, PROMPTS, trie, num_beams=10, num_return=10, batch_size=1)
    eight = recommend(model, tok, PROMPTS, trie, num_beams=10, num_return=10, batch_size=8)
    assert one == eight
    for ranked in one:
        assert len(ranked) == 10 and len(set(ranked)) == 10
        assert all(0 <= i < len(titles) for i in ranked)
    hot = recommend(model, tok, PROMPTS[:1], trie, num_beams=10, num_return=5, length_penalty=0.0, temperature=1.5)
    assert len(hot[0]) == 5 and len(set(hot[0])) == 5
    with pytest.raises(ValueError, match="num_return"):
        recommend(model, tok, PROMPTS, trie, num_beams=3, num_return=5)


def test_exhaustive_beam_search_ranks_by_exact_probability(setup):
    """With more beams than titles and length_penalty 0, beam search is exhaustive: the exact ranking."""
    model, tok, trie, titles, _ = setup
    p_title, _ = exact_item_distribution(model, tok, PROMPT, trie)
    groups = trie.title_items()
    expected = [i for t in torch.argsort(p_title, descending=True).tolist() for i in groups[t]]
    got = recommend(model, tok, [PROMPT], trie, num_beams=40, num_return=40, length_penalty=0.0)[0]
    assert got == expected[:40]
    assert got[got.index(0) + 1] == 34, "a duplicate title lists its items in id order at one rank"


def test_exact_distribution_matches_naive_forward_passes(setup):
    model, tok, trie, _, _ = setup
    p_title, invalid = exact_item_distribution(model, tok, PROMPT, trie, batch_size=256)
    assert math.isclose(float(p_title.sum()) + invalid, 1.0, abs_tol=1e-12)
    assert 0.0 <= invalid <= 1.0 and (p_title > 0).all()
    p_one, invalid_one = exact_item_distribution(model, tok, PROMPT, trie, batch_size=1)
    torch.testing.assert_close(p_one, p_title, rtol=1e-4, atol=0)
    prompt_ids = tok(PROMPT)["input_ids"]
    for t in [0, 5, 17, 30]:
        path, _ = trie.prefix_tokens(trie.terminal_nodes[t : t + 1])
        ids = torch.tensor([prompt_ids + path[0].tolist()])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        n = path.shape[1]
        naive = sum(float(logp[len(prompt_ids) - 1 + k, path[0, k]]) for k in range(n))
        assert math.isclose(math.log(float(p_title[t])), naive, rel_tol=1e-4)


def test_constrained_distribution_matches_naive_renormalisation(setup):
    model, tok, trie, _, paths = setup
    q = constrained_item_distribution(model, tok, PROMPT, trie)
    assert math.isclose(float(q.sum()), 1.0, abs_tol=1e-9)
    torch.testing.assert_close(constrained_item_distribution(model, tok, PROMPT, trie, batch_size=1), q, rtol=1e-4, atol=0)
    children = dict_children(paths, trie.eos_id)
    prompt_ids = tok(PROMPT)["input_ids"]
    for t in [1, 8, 30, 31]:
        path, _ = trie.prefix_tokens(trie.terminal_nodes[t : t + 1])
        path = path[0].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + path])).logits[0, len(prompt_ids) - 1 :].double()
        naive = 0.0
        for k, a in enumerate(path):
            allowed = sorted(children[tuple(path[:k])])
            naive += float(logits[k, a] - logits[k, allowed].logsumexp(0))
        assert math.isclose(math.log(float(q[t])), naive, rel_tol=1e-4)


def test_sampling_matches_constrained_distribution(setup):
    model, tok, trie, _, _ = setup
    q = constrained_item_distribution(model, tok, PROMPT, trie)
    draws = sample_titles(model, tok, [PROMPT], trie, num_samples=2000, seed=0)
    freq = torch.bincount(draws.flatten(), minlength=q.numel()).double() / draws.numel()
    assert 0.5 * float((freq - q).abs().sum()) < 0.1  # total variation; ~0.04 expected from noise
    chi2 = float(((freq - q) ** 2 / q).sum() * draws.numel())
    assert chi2 < q.numel() - 1 + 5 * math.sqrt(2 * (q.numel() - 1))  # mean + 5 sd of chi-square(k - 1)


def test_sampling_is_reproducible_and_independent_of_batching(setup):
    model, tok, trie, titles, _ = setup
    a = sample_items(model, tok, PROMPTS[:2], trie, num_samples=5, seed=3, batch_size=1)
    b = sample_items(model, tok, PROMPTS[:2], trie, num_samples=5, seed=3, batch_size=7)
    assert a == b and len(a) == 2 and all(len(r) == 5 for r in a)
    assert all(0 <= i < len(titles) and i not in (34, 35) for r in a for i in r), "duplicates map to the lowest id"
    assert sample_items(model, tok, PROMPTS[:2], trie, num_samples=5, seed=4) != a
    hot = sample_titles(model, tok, [PROMPT], trie, num_samples=20, temperature=3.0, seed=0)
    assert ((hot >= 0) & (hot < trie.terminal_nodes.numel())).all()


def test_checkpoint_generation_defaults_do_not_leak(setup):
    """Instruct checkpoints ship do_sample=True, top_k, temperature, repetition_penalty: results must not change."""
    import copy

    model, tok, trie, _, _ = setup
    chatty = copy.deepcopy(model)
    chatty.generation_config.update(do_sample=True, top_k=20, top_p=0.8, temperature=0.7, repetition_penalty=1.05)
    assert recommend(chatty, tok, PROMPTS, trie) == recommend(model, tok, PROMPTS, trie)
    assert sample_items(chatty, tok, PROMPTS, trie, num_samples=4) == sample_items(model, tok, PROMPTS, trie, num_samples=4)


def test_stop_log_probs_match_one_forward_pass_per_state(setup):
    """log pi(T | s) at every state, from the per-node passes, equals a forward pass over prompt + prefix."""
    from flower_lite.distributions import stop_log_probs, stop_summary

    model, tok, trie, _, _ = setup
    log_stop = stop_log_probs(model, tok, PROMPT, trie, batch_size=7)
    terminal = trie.structure.token == trie.eos_id
    assert torch.isnan(log_stop[terminal]).all() and not torch.isnan(log_stop[~terminal]).any()
    prompt = tok(PROMPT)["input_ids"]
    for node in torch.randperm(trie.num_nodes, generator=torch.Generator().manual_seed(0))[:25].tolist():
        if terminal[node]:
            continue
        prefix = trie.prefix_tokens(torch.tensor([node]))[0][0].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + prefix])).logits[0, -1].double()
        assert log_stop[node].item() == pytest.approx((logits[trie.eos_id] - logits.logsumexp(-1)).item(), abs=1e-5)
    summary = stop_summary(trie, log_stop)
    assert summary["complete_states"] == trie.terminal_nodes.numel()
    assert summary["internal_states"] == int((~terminal).sum()) - summary["complete_states"]
    assert summary["internal_min"] <= summary["internal_mean"] <= summary["internal_max"] < 0
