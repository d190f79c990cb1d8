"""Tests for flower_lite.models and flower_lite.prompts (offline, CPU, tiny sizes)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; set before transformers loads

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from flower_lite.models import (
    LoraSettings,
    ModelNotAvailableError,
    build_tiny_model,
    build_tiny_tokenizer,
    count_parameters,
    load_causal_lm,
    load_smollm2,
    make_tiny_model,
    qwen2_5_0_5b_config,
    random_qwen2_5_0_5b,
    smollm2_checkpoint,
)
from flower_lite.prompts import (
    build_prompt,
    encode_prompts,
    left_pad,
)
from flower_lite.rollout import teacher_forced, teacher_forced_log_probs
from flower_lite.trie import Trajectories


def ragged(continuations):
    """Right-padded token lists as trajectories: tokens [B, T] (0 where padded), lengths [B]."""
    width = max(len(c) for c in continuations)
    tokens = torch.tensor([list(c) + [0] * (width - len(c)) for c in continuations])
    return Trajectories(tokens, torch.tensor([len(c) for c in continuations]))


def sequence_log_probs(model, batch, continuations):
    """log pi(a_t | prompt, a_<t) of ragged continuations: (log_pi [B, T], mask [B, T])."""
    traj = ragged(continuations)
    log_pi, _ = teacher_forced_log_probs(model, **batch, continuation_ids=traj.tokens, continuation_mask=traj.mask)
    return log_pi, traj.mask

TITLES = [
    "The Matrix (1999)",
    "Toy Story",
    "Toy Story 2",
    "Heat, The",
    "Alien!",
    "Who Framed Roger Rabbit?",
    "Star Wars: Episode IV - A New Hope",
    "Fargo.",
    "Amélie",
    "8 1/2",
    "M*A*S*H:",
    'The "Great" Escape',
]
INSTRUCTION = "Given a list of movies the user recently enjoyed, write a new movie the user may buy"
PROMPTS = [
    build_prompt("Recommend a movie."),
    build_prompt(INSTRUCTION, TITLES[:5], "movies"),
    build_prompt(INSTRUCTION, TITLES[7:8], "movies"),
    build_prompt(INSTRUCTION, TITLES[2:10], "movies"),
]
TEXTS = TITLES + PROMPTS


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    model, tokenizer = make_tiny_model(TEXTS, out, vocab_size=400)
    return out, model, tokenizer


def title_ids(tokenizer, title: str) -> list[int]:
    return tokenizer(title, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_is_deterministic():
    a, b = build_tiny_tokenizer(TEXTS, 400), build_tiny_tokenizer(list(TEXTS), 400)
    assert a.get_vocab() == b.get_vocab()
    assert [title_ids(a, t) for t in TITLES] == [title_ids(b, t) for t in TITLES]
    assert a.eos_token == a.pad_token == "<|endoftext|>" and a.padding_side == "left"
    assert len(a) <= 400 and a.bos_token is None


def test_eos_never_merges_and_batch_equals_alone(tiny):
    _, tok = tiny
    eos = tok.eos_token_id
    for title in TITLES:  # several end in punctuation: ) ! ? . :
        ids = title_ids(tok, title)
        assert eos not in ids
        assert title_ids(tok, title + tok.eos_token) == ids + [eos]
        assert tok.decode(ids) == title
    batch = tok(TITLES, add_special_tokens=False)["input_ids"]
    assert batch == [title_ids(tok, t) for t in TITLES]
    padded = tok(TITLES, add_special_tokens=False, padding=True)
    for row, mask, title in zip(padded["input_ids"], padded["attention_mask"], TITLES):
        assert mask[0] == 0 or len(title_ids(tok, title)) == len(row)  # left padding
        assert [i for i, m in zip(row, mask) if m] == title_ids(tok, title)


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tiny_dir):
    out, model, tok = tiny_dir
    model2 = AutoModelForCausalLM.from_pretrained(out)
    tok2 = AutoTokenizer.from_pretrained(out)
    assert type(model2) is Qwen2ForCausalLM and model2.dtype == torch.float32
    assert tok2.padding_side == "left" and tok2.pad_token_id == tok2.eos_token_id == tok.eos_token_id
    assert [title_ids(tok2, t) for t in TITLES] == [title_ids(tok, t) for t in TITLES]
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2.eval()(**batch).logits)


def test_load_causal_lm_full_finetuning(tiny_dir):
    out, model, _ = tiny_dir
    loaded, tok = load_causal_lm(str(out), dtype="float32")
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert count_parameters(loaded, trainable_only=True) == count_parameters(model) > 0
    bf16, _ = load_causal_lm(str(out), dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
def test_load_causal_lm_lora_trains_only_adapters(tiny_dir):
    out, model, _ = tiny_dir
    settings = LoraSettings(r=4, alpha=8, dropout=0.0)
    loaded, tok = load_causal_lm(str(out), lora=settings, gradient_checkpointing=True)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    c = model.config
    kv = c.num_key_value_heads * c.hidden_size // c.num_attention_heads
    h, i = c.hidden_size, c.intermediate_size
    per_layer = (h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h)  # q, k, v, o, gate, up, down
    assert count_parameters(loaded, trainable_only=True) == settings.r * per_layer * c.num_hidden_layers
    assert count_parameters(loaded) == count_parameters(model) + settings.r * per_layer * c.num_hidden_layers
    # one backward pass through checkpointed layers reaches the adapters only
    loaded.train()
    batch = encode_prompts(tok, PROMPTS[:2])
    loaded(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for n, p in loaded.named_parameters() if p.requires_grad)


def test_unknown_hub_id_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match="--local-dir") as info:
        load_causal_lm("no-such-org/no-such-model-flower-lite")
    assert isinstance(info.value, OSError) and "directory" in str(info.value)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_causal_lm(str(tmp_path))  # an empty local directory


# ---------------------------------------------------------------------------- Qwen2.5-0.5B


def test_qwen2_5_0_5b_config_parameter_count():
    config = qwen2_5_0_5b_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (896, 24, 14)
    assert config.num_key_value_heads == 2 and config.intermediate_size == 4864
    assert config.rope_parameters["rope_theta"] == 1e6 and config.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
        assert count_parameters(model) == 494_032_768  # "0.49B" on the model card
        model = random_qwen2_5_0_5b(dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and count_parameters(model) == 494_032_768


# ---------------------------------------------------------------------------- prompts


def test_build_prompt_format():
    fixed = build_prompt("Recommend a movie.")
    assert fixed == "### Instruction:\nRecommend a movie.\n\n### Response:\n"
    p = build_prompt(INSTRUCTION, ["Heat, The", "Alien!"], "movies")
    assert 'The user has enjoyed the following movies before: "Heat, The", "Alien!"\n' in p
    assert p.startswith(f"### Instruction:\n{INSTRUCTION}\n") and p.endswith("\n### Response:\n")
    assert build_prompt("x", []) == build_prompt("x")


def test_encode_prompts_left_pads_with_positions(tiny):
    _, tok = tiny
    tok.padding_side = "right"  # must not matter
    try:
        batch = encode_prompts(tok, PROMPTS)
    finally:
        tok.padding_side = "left"
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    width = max(lengths)
    assert batch["input_ids"].shape == (len(PROMPTS), width)
    for b, n in enumerate(lengths):
        assert batch["attention_mask"][b].tolist() == [0] * (width - n) + [1] * n
        assert batch["position_ids"][b].tolist() == [0] * (width - n) + list(range(n))
        assert batch["input_ids"][b, width - n:].tolist() == tok(PROMPTS[b])["input_ids"]
    with pytest.raises(ValueError):
        left_pad([[1, 2], []], pad_id=0)


def random_qwen2(tokenizer, attn: str) -> Qwen2ForCausalLM:
    """A tiny Qwen2 with large random weights, so that context and positions matter."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0}, attn_implementation=attn,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["tiny", "random_qwen2"])
def test_log_probs_same_alone_and_in_padded_batch(tiny, kind, attn):
    _, tok = tiny
    model = build_tiny_model(tok, attn_implementation=attn) if kind == "tiny" else random_qwen2(tok, attn)
    assert model.config._attn_implementation == attn
    eos = tok.eos_token_id
    conts = [title_ids(tok, t) + [eos] for t in (TITLES[6], TITLES[0], TITLES[4], TITLES[8])]
    batch = encode_prompts(tok, PROMPTS)  # prompts of different lengths
    ids, mask = ragged(conts).tokens, ragged(conts).mask
    with torch.no_grad():
        log_pi, log_eos = teacher_forced_log_probs(model, **batch, continuation_ids=ids,
                                                   continuation_mask=mask, extra_token_id=eos)
        assert log_pi.shape == mask.shape and log_eos.shape == (len(conts), mask.shape[1] + 1)
        assert torch.all(log_pi[~mask] == 0) and torch.all(log_pi[mask] < 0)
        for b, (prompt, cont) in enumerate(zip(PROMPTS, conts)):
            alone, alone_eos = teacher_forced_log_probs(
                model, **encode_prompts(tok, [prompt]), continuation_ids=torch.tensor([cont]),
                continuation_mask=torch.ones(1, len(cont), dtype=torch.bool), extra_token_id=eos)
            torch.testing.assert_close(log_pi[b, : len(cont)], alone[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(log_eos[b, : len(cont) + 1], alone_eos[0], atol=1e-5, rtol=0)
            assert torch.all(log_eos[b, len(cont) + 1:] == 0)
            # naive check: full log-softmax of one unpadded forward pass over prompt + continuation
            p = tok(prompt)["input_ids"]
            full = torch.log_softmax(model(torch.tensor([p + cont])).logits[0].float(), -1)
            steps = torch.arange(len(cont))
            torch.testing.assert_close(log_pi[b, : len(cont)], full[len(p) - 1 + steps, cont], atol=1e-5, rtol=0)
            torch.testing.assert_close(log_eos[b, : len(cont) + 1], full[len(p) - 1:, eos], atol=1e-5, rtol=0)
        if kind == "random_qwen2":  # the test has teeth: the reference's right padding, no mask, differs
            rows = [tok(p)["input_ids"] for p in PROMPTS]
            width = max(map(len, rows))
            right = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
            shortest = min(range(len(rows)), key=lambda b: len(rows[b]))
            wrong = torch.log_softmax(model(right).logits[shortest, -1].float(), -1)
            assert (wrong[conts[shortest][0]] - log_pi[shortest, 0]).abs() > 1e-3


def test_trajectory_teacher_forcing_matches_teacher_forcing(tiny):
    model, tok = tiny
    conts = [title_ids(tok, t) for t in TITLES[:4]]
    batch = encode_prompts(tok, PROMPTS)
    traj = ragged(conts)
    with torch.no_grad():
        log_pi, log_eos = teacher_forced(model, batch, traj, tok.eos_token_id)
        expected, none = teacher_forced_log_probs(model, **batch, continuation_ids=traj.tokens, continuation_mask=traj.mask)
        _, eos = teacher_forced_log_probs(model, **batch, continuation_ids=traj.tokens, continuation_mask=traj.mask,
                                          extra_token_id=tok.eos_token_id)
    assert none is None and torch.equal(log_pi, expected) and torch.equal(log_eos, eos)
    assert traj.mask.sum(1).tolist() == [len(c) for c in conts]


def test_gradients_flow_through_teacher_forcing(tiny):
    """The gradient of the batched, padded teacher-forced log-probabilities equals autograd's on a naive
    computation: each row alone, unpadded, one full forward pass and a log-softmax at every position."""
    model, tok = tiny
    conts = [[5, 6, 7], [8]]
    params = [p for p in model.parameters() if p.requires_grad]
    log_pi, mask = sequence_log_probs(model, encode_prompts(tok, PROMPTS[:2]), conts)
    batched = torch.autograd.grad(log_pi[mask.bool()].sum(), params)
    naive_total = 0.0
    for prompt, cont in zip(PROMPTS[:2], conts):
        prompt_ids = tok(prompt)["input_ids"]
        logits = model(input_ids=torch.tensor([prompt_ids + cont])).logits[0].float()
        steps = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(cont)].log_softmax(-1)
        naive_total = naive_total + steps[torch.arange(len(cont)), torch.tensor(cont)].sum()
    naive = torch.autograd.grad(naive_total, params)
    embed = next(i for i, p in enumerate(params) if p is model.model.embed_tokens.weight)
    assert batched[embed].abs().max() > 1e-3 and all(g.abs().max() > 0 for g in batched)
    for got, want in zip(batched, naive):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- SmolLM2 (GGUF)

def test_smollm2_checkpoint_is_written_once_and_keyed_by_the_gguf_bytes(tmp_path, monkeypatch):
    # the de-quantisation replaced by a tiny model: what is tested is the folder's key, reuse and atomic write
    from flower_lite import models

    calls = []

    def fake_gguf(path, **kwargs):
        calls.append(path)
        return make_tiny_model(["a b", "c d"], hidden_size=16, seed=0)

    monkeypatch.setattr(models, "_load_smollm2_gguf", fake_gguf)
    first, second = tmp_path / "one.gguf", tmp_path / "two.gguf"
    first.write_bytes(b"GGUF" + bytes(1000))
    second.write_bytes(b"GGUF" + bytes(999) + b"x")
    folder = smollm2_checkpoint(first, tmp_path / "cache")
    assert (folder / "config.json").is_file() and len(calls) == 1
    assert smollm2_checkpoint(first, tmp_path / "cache") == folder and len(calls) == 1  # read, not converted again
    other = smollm2_checkpoint(second, tmp_path / "cache")
    assert other != folder and len(calls) == 2  # one changed byte: another folder
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([folder.name, other.name])  # no .tmp left
    model, _ = load_causal_lm(str(folder))
    want, _ = fake_gguf(first)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), want.state_dict().values()))


@pytest.mark.slow  # about 20 to 35 s: transformers parses the GGUF metadata three times
def test_smollm2_gguf_loads_and_generates(smollm2):  # the fixture skips without the wheel (fails under CI=true)
    model, tok = load_smollm2(cache=False)  # from the GGUF itself
    cached, cached_tok = load_smollm2()  # from the de-quantised folder (written by this call if absent)
    where = {"_name_or_path": "", "architectures": ""}  # where it was read from, and the class save_pretrained names
    assert cached.config.to_dict() | where == model.config.to_dict() | where
    want, got = model.state_dict(), cached.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)  # the same weights, bit for bit
    texts = ["### Response:\nThe Drift of Nowhere\n", "Amélie (2001), 千と千尋の神隠し<|im_end|>"]
    assert [tok(t).input_ids for t in texts] == [cached_tok(t).input_ids for t in texts]
    assert (cached_tok.padding_side, cached_tok.pad_token) == (tok.padding_side, tok.pad_token)
    del cached
    assert smollm2.suffix == ".gguf" and model.dtype == torch.float32
    assert count_parameters(model) == 134_515_008
    assert tok.padding_side == "left" and tok.pad_token is not None
    batch = encode_prompts(tok, ["Recommend a movie:"])
    with torch.no_grad():
        out = model.generate(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                             max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    # padding invariance on a real pretrained model
    prompts = ["Recommend a movie:", build_prompt(INSTRUCTION, ["Heat", "Alien"], "movies")]
    conts = [title_ids(tok, " The Matrix"), title_ids(tok, "Toy Story")]
    with torch.no_grad():
        both, _ = sequence_log_probs(model, encode_prompts(tok, prompts), conts)
        for b in range(2):
            alone, _ = sequence_log_probs(model, encode_prompts(tok, prompts[b:b + 1]), conts[b:b + 1])
            torch.testing.assert_close(both[b, : len(conts[b])], alone[0], atol=1e-4, rtol=0)
