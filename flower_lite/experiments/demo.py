"""The main job (``flower-lite demo``): fit the tabular toy on the embedded default catalogue with every
objective, compare them exactly, write a report. Notebook 02 runs the same comparison step by step."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import Objective
from ..data import load_default_catalog
from ..files import atomic_write_text
from ..rewards import popularity_rewards
from ..tokenizer import WordTokenizer
from ..toy import ToyConfig, compare_methods, summary_row
from ..trie import Trie

TABLE_KEYS = ("kl", "kl_reverse", "js", "tv", "coverage", "gini", "tail_share", "invalid")


@dataclass
class DemoResult:
    rows: list[dict]  # one per method, see ``toy.summary_row``
    report: Path | None  # the HTML report with the figures


def default_trie() -> tuple[Trie, WordTokenizer, list[str]]:
    """The embedded default catalogue as a trie with popularity rewards R(i) = c(i)."""
    catalog = load_default_catalog()
    tok = WordTokenizer.fit(catalog.titles)
    sequences = [tok.encode(t) for t in catalog.titles]
    return Trie.from_sequences(sequences, popularity_rewards(catalog.counts()), tok.eos_id), tok, catalog.titles


DEMO_OBJECTIVES = (Objective("sft"), Objective("tb"), Objective("db"), Objective("subtb"), Objective("subtb", theta=0.995))
"""SFT on a finite sample, the three GFlowNet losses alone, and SubTB mixed with SFT as in the paper (Flower)."""


def demo_configs(steps: int, seed: int) -> dict[str, ToyConfig]:
    """One :class:`ToyConfig` per objective of :data:`DEMO_OBJECTIVES`, named by ``Objective.name``."""
    return {o.name: ToyConfig(objective=o, steps=steps, seed=seed) for o in DEMO_OBJECTIVES}


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the comparison."""
    head = f"{'method':<16}" + "".join(f"{k:>12}" for k in TABLE_KEYS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[k]:>12d}" if isinstance(r[k], int) else f"{r[k]:>12.4g}" for k in TABLE_KEYS)
        lines.append(f"{r['method']:<16}" + cells)
    return "\n".join(lines)


def run_demo(out_dir: str | Path | None = "reports/demo", steps: int = 300, sample_size: int = 1000, seed: int = 0, progress: bool = True) -> DemoResult:
    """Fit every method on the same sample of ``sample_size`` titles; write ``report.html`` and ``results.json``."""
    trie, _, _ = default_trie()
    runs = compare_methods(trie, demo_configs(steps, seed), sample_size=sample_size, seed=seed, progress=progress)
    rows = [summary_row(name, run, trie) for name, run in runs.items()]
    report = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(rows, indent=2, default=str))
        report = write_report(out / "report.html", trie, runs, rows)
    return DemoResult(rows, report)


def run_llm_demo(out_dir: str | Path | None = "reports/demo", steps: int = 200, sample_size: int = 500, seed: int = 0, progress: bool = True) -> list[dict]:
    """The LLM section: SFT vs Flower on the tiny causal LM (RQ1 on the default catalogue), exact fit per method."""
    from .rq1 import run_fit

    rows = []
    for method in ("sft", "flower"):
        run_dir = Path(out_dir) / f"llm_{method}" if out_dir is not None else Path("runs") / f"demo_llm_{method}"
        result = run_fit("tiny", "default", method, run_dir, steps=steps, sample_size=sample_size, seed=seed, progress=progress)
        rows.append({"method": f"tiny LLM {method}", **{k: result.history[-1][k] for k in ("c_kl", "c_js", "c_tv", "kl", "invalid")}})
    return rows


def format_llm_table(rows: list[dict]) -> str:
    """Text table of the LLM section (c_ = trie-constrained sampling; kl and invalid = the unconstrained model)."""
    keys = ("c_kl", "c_js", "c_tv", "kl", "invalid")
    head = f"{'method':<20}" + "".join(f"{k:>12}" for k in keys)
    return "\n".join([head, "-" * len(head)] + [f"{r['method']:<20}" + "".join(f"{r[k]:>12.4g}" for k in keys) for r in rows])


def write_report(path: Path, trie: Trie, runs: dict, rows: list[dict]) -> Path:
    """One self-contained HTML page (plotly.js embedded once) with the table and the figures."""
    from .. import viz  # plotting is imported only when a report is written

    target = trie.title_log_probs().exp().numpy()
    models = {name: run.policy.title_distribution()[0].numpy() for name, run in runs.items()}
    figures = [
        viz.distribution_figure(target, models),
        viz.training_curves_figure({name: run.history for name, run in runs.items()}, keys=("kl",)),
        viz.lorenz_figure({"target": target, **models}),
    ]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    html = (
        "<html><head><meta charset='utf-8'><title>flower_lite demo</title></head><body>"
        "<h1>flower_lite demo: SFT vs Flower on the default catalogue</h1>"
        f"<pre>{format_table(rows)}</pre>" + "".join(parts) + "</body></html>"
    )
    return atomic_write_text(path, html)
