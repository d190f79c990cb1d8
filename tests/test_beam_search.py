"""The one-prompt-pass beam search against transformers' beam search (``decoding.recommend`` / ``generate``)."""
from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import LogitsProcessorList

from flower_lite.beam_search import AllowedTokens, BeamSetting, SearchSpec, decode_batch, recommend_settings
from flower_lite.beam_search import recommend as beam_recommend
from flower_lite.data import load_default_catalog
from flower_lite.decoding import (NEUTRAL_GENERATION, TemperedLogSoftmax, TrieLogitsProcessor, decode_states, recommend,
                                  title_index)
from flower_lite.models import LoraSettings, apply_lora
from flower_lite.prompts import encode_prompts, pad_id, title_trie

PROMPTS = ["recommend a movie", "The user liked Foggy Alibi and Noisy Weekend, then two more; next:", "films",
           "Give me one more film with Iron in its title, please"]
LONG_TITLE = "Iron Spell III and the Very Long Return of the Forgotten Kingdom of the North"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    """Tiny model + test_decoding's 36-item catalogue (shared prefixes, titles that prefix others, two duplicates)."""
    from test_decoding import tricky_catalogue

    return tricky_catalogue(PROMPTS + [LONG_TITLE])[:4]


def generate_slots(model, tok, prompts, trie, num_beams, length_penalty, temperature, max_new_tokens):
    """transformers' finished beams as ``recommend`` runs them: (titles [P, B], -1 for none; scores [P, B])."""
    batch = encode_prompts(tok, prompts)
    width = batch["input_ids"].shape[1]
    processors = [TemperedLogSoftmax(temperature)] if temperature != 1.0 else []
    processors.append(TrieLogitsProcessor(trie, width, pad_id(tok)))
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         logits_processor=LogitsProcessorList(processors), do_sample=False, num_beams=num_beams,
                         num_return_sequences=num_beams, length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                         eos_token_id=trie.eos_id, pad_token_id=pad_id(tok), output_scores=True,
                         return_dict_in_generate=True, **NEUTRAL_GENERATION)
    titles = title_index(trie, decode_states(trie, out.sequences[:, width:])).view(-1, num_beams)
    return titles, out.sequences_scores.view(-1, num_beams)


def distinct(rows: list[list[int]]) -> list[list[int]]:
    return [list(dict.fromkeys(t for t in row if t >= 0)) for row in rows]


@pytest.mark.parametrize("num_beams, num_return, length_penalty, temperature", [
    (10, 10, 1.0, 1.0), (10, 10, 0.0, 1.0), (10, 10, 1.0, 1.5), (10, 7, 0.0, 1.5),
    (4, 3, 1.0, 1.0), (4, 2, 0.0, 1.5), (40, 40, 0.0, 1.0), (40, 40, 1.0, 1.0),
])
def test_rankings_equal_recommend(setup, num_beams, num_return, length_penalty, temperature):
    model, tok, trie, _ = setup
    kw = dict(num_beams=num_beams, num_return=num_return, length_penalty=length_penalty, temperature=temperature)
    want = recommend(model, tok, PROMPTS, trie, **kw)
    assert beam_recommend(model, tok, PROMPTS, trie, batch_size=3, **kw) == want
    assert all(0 < len(r) == len(set(r)) <= num_return for r in want)


def test_result_does_not_depend_on_batch_size(setup):
    model, tok, trie, _ = setup
    runs = [beam_recommend(model, tok, PROMPTS * 2, trie, batch_size=b, length_penalty=0.0) for b in (1, 3, 8)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][:4] == runs[0][4:]


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_finished_slots_equal_generate(setup, shared_prompt):
    """Slot by slot on random small tries (titles that prefix others, fewer titles than beams, cut by
    max_new_tokens): every real finished beam of transformers (score above -1e6) is ours, with its score; the
    slots after them hold placeholders whose ties transformers orders arbitrarily, yet the item lists agree."""
    model, tok, _, _ = setup
    catalogue = load_default_catalog().titles
    rng = random.Random(0)
    for trial in range(16):
        titles = rng.sample(catalogue, rng.choice([3, 8, 30, 120]))
        if trial % 2:
            titles += [titles[0] + " II", titles[0] + " III"]
        trie = title_trie(tok, titles, [1.0] * len(titles))
        num_beams, lp, tau = rng.choice([2, 4, 10, 20]), rng.choice([1.0, 0.0]), rng.choice([1.0, 1.5, 0.5])
        max_new = rng.choice([trie.max_path_length, 3, 64])
        want, want_scores = generate_slots(model, tok, PROMPTS, trie, num_beams, lp, tau, max_new)
        spec = SearchSpec(AllowedTokens(trie, pad_id(tok)), trie.eos_id, [BeamSetting(lp, tau)], num_beams, max_new,
                          shared_prompt)
        nodes, scores = decode_batch(model, encode_prompts(tok, PROMPTS), spec)
        got = title_index(trie, nodes)
        real = want_scores > -1e6
        assert torch.equal(real, scores > -1e6), trial
        assert torch.equal(got[real], want[real]), trial
        torch.testing.assert_close(scores[real], want_scores[real], rtol=0, atol=1e-4)
        assert distinct(got.tolist()) == distinct(want.tolist()), trial


def count_prompt_passes(model) -> tuple[list[int], object]:
    """A forward hook recording the width of the model's calls on more than one position (the prompt passes)."""
    calls: list[int] = []

    def record(module, args, kwargs, out):
        if kwargs["input_ids"].shape[1] > 1:
            calls.append(kwargs["input_ids"].shape[1])

    return calls, model.register_forward_hook(record, with_kwargs=True)


def test_settings_share_one_prompt_pass(setup):
    model, tok, trie, _ = setup
    settings = [BeamSetting(1.0), BeamSetting(0.0), BeamSetting(1.0, 1.5)]  # BIGRec, D3, T = 1.5
    calls, hook = count_prompt_passes(model)
    try:
        shared = recommend_settings(model, tok, PROMPTS, trie, settings, batch_size=8)
        assert len(calls) == 1
        separate = [beam_recommend(model, tok, PROMPTS, trie, length_penalty=s.length_penalty,
                                   temperature=s.temperature) for s in settings]
        assert len(calls) == 4
    finally:
        hook.remove()
    assert shared == separate
    assert shared[0] != shared[1]
    assert recommend_settings(model, tok, PROMPTS, trie, [(0.0, 1.5)]) == \
        [beam_recommend(model, tok, PROMPTS, trie, length_penalty=0.0, temperature=1.5)]


def decode_steps(model, tok, prompts, trie, **kw) -> list[int]:
    """Contexts run through the model at each decoding step (rows of the LM head's input after the prompt pass)."""
    sizes: list[int] = []

    def record(module, args, out):
        if args[0].ndim == 2:  # [contexts, H]; the prompt pass feeds [P, 1, H]
            sizes.append(args[0].shape[0])

    hook = model.get_output_embeddings().register_forward_hook(record)
    try:
        beam_recommend(model, tok, prompts, trie, **kw)
    finally:
        hook.remove()
    return sizes


def test_rows_stop_early_and_leave_the_batch(setup):
    """Rows stop where transformers stops them, not at the longest title, and a finished row's beams leave
    the batch: the batch runs exactly the contexts its rows run alone."""
    model, tok, _, titles = setup
    trie = title_trie(tok, titles + [LONG_TITLE], [1.0] * (len(titles) + 1))
    kw = dict(num_beams=4, num_return=4, batch_size=8)
    alone = [decode_steps(model, tok, [p], trie, **kw) for p in PROMPTS]
    together = decode_steps(model, tok, PROMPTS, trie, **kw)
    assert len(together) == max(len(a) for a in alone) < trie.max_path_length - 10
    assert sum(together) == sum(sum(a) for a in alone)
    assert min(len(a) for a in alone) < len(together), "rows that stop at different steps"
    assert together[-1] < together[0]


def test_lora_and_bfloat16_models(setup):
    model, tok, trie, _ = setup
    lora = apply_lora(copy.deepcopy(model), LoraSettings()).eval()
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # adapters that change the model
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(0))
    half = copy.deepcopy(model).to(torch.bfloat16)
    for m in (lora, half):
        for kw in (dict(), dict(length_penalty=0.0, temperature=1.5)):
            assert beam_recommend(m, tok, PROMPTS, trie, **kw) == recommend(m, tok, PROMPTS, trie, **kw)
    assert beam_recommend(lora, tok, PROMPTS, trie) != beam_recommend(model, tok, PROMPTS, trie)


def test_arguments(setup):
    model, tok, trie, _ = setup
    with pytest.raises(ValueError, match="num_return"):
        beam_recommend(model, tok, PROMPTS, trie, num_beams=3, num_return=5)
    with pytest.raises(ValueError, match="temperature"):
        beam_recommend(model, tok, PROMPTS, trie, temperature=0.0)
    assert beam_recommend(model, tok, [], trie) == []
    assert recommend_settings(model, tok, PROMPTS, trie, []) == []


# ------------------------------------------------------------------ SmolLM2 on real titles and prompts

def real_titles_and_prompts(rows: int, titles: int) -> tuple[list[str], list[str]]:
    """RQ2 prompts of ``rows`` Movies & TV test rows and ``titles`` catalogue titles (their targets
    included); MovieLens-100k (recbole wheel) when the shared data is absent."""
    from flower_lite.data.bigrec import shared_amazon_dir
    from flower_lite.experiments.rq2.setup import CATEGORY_NOUNS, history_prompts, subsample

    if shared_amazon_dir("Movies_and_TV") is not None:
        from flower_lite.data import load_amazon

        data, (plural, singular) = load_amazon("Movies_and_TV"), CATEGORY_NOUNS["Movies_and_TV"]
    else:
        from flower_lite.data import load_movielens_100k, next_item_data_from_catalog

        data, (plural, singular) = next_item_data_from_catalog(load_movielens_100k()), CATEGORY_NOUNS["synthetic"]
    data = subsample(data, valid_rows=0, test_rows=rows, seed=0)
    wanted = list(dict.fromkeys([data.titles[i] for i in data.test.target] + list(data.titles)))[:titles]
    return wanted, history_prompts(data, "test", plural, singular)


@pytest.mark.slow
def test_smollm2_rankings_equal_recommend(require):
    require.smollm2()
    from flower_lite.models import load_smollm2

    titles, prompts = real_titles_and_prompts(rows=2, titles=120)
    model, tok = load_smollm2()
    trie = title_trie(tok, titles, [1.0] * len(titles), stop="newline")
    kw = dict(num_beams=10, num_return=10, max_new_tokens=trie.max_path_length)
    bigrec, d3 = recommend_settings(model, tok, prompts, trie, [(1.0, 1.0), (0.0, 1.0)], **kw)
    assert bigrec == recommend(model, tok, prompts, trie, length_penalty=1.0, **kw)
    assert d3 == recommend(model, tok, prompts, trie, length_penalty=0.0, **kw)
    few = title_trie(tok, titles[:6], [1.0] * 6, stop="newline")  # fewer titles than beams: the exact second pass
    kw["max_new_tokens"] = few.max_path_length
    assert beam_recommend(model, tok, prompts[:1], few, **kw) == recommend(model, tok, prompts[:1], few, **kw)
