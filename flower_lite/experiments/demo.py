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


METRICS = {
    "kl": "KL(P‖Q): how far the policy's title distribution Q is from the target P, exact (nats; lower is better, 0 = the target)",
    "kl_reverse": "KL(Q‖P): the same, the other way round (punishes mass on titles P makes rare)",
    "js": "Jensen-Shannon divergence (0 to ln 2 = 0.693; lower is better)",
    "tv": "total variation: the probability mass that is in the wrong place (0 to 1; lower is better)",
    "coverage": "titles that get at least 1/(100 N) of the mass (higher: more of the catalogue reachable)",
    "gini": "Gini of Q: concentration of the mass (0 = even; compare with the target's own Gini)",
    "tail_share": "mass on the 80% least popular titles (compare with the target's own share)",
    "invalid": "mass on early stops, i.e. outputs that are not a catalogue title (lower is better)",
}
"""What each column of the demo table measures, and which direction is better."""


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the comparison."""
    width = max(16, *(len(r["method"]) + 2 for r in rows))
    head = f"{'method':<{width}}" + "".join(f"{k:>12}" for k in TABLE_KEYS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[k]:>12d}" if isinstance(r[k], int) else f"{r[k]:>12.4g}" for k in TABLE_KEYS)
        lines.append(f"{r['method']:<{width}}" + cells)
    return "\n".join(lines)


def legend() -> str:
    """One line per column of :func:`format_table`."""
    return "\n".join(f"{k}: {text}" for k, text in METRICS.items())


def conclusion(rows: list[dict], sample_size: int) -> str:
    """What the measured numbers say, in three sentences built from them."""
    by = {r["method"]: r for r in rows}
    sft = by["sft"]
    alone = {k: by[k] for k in ("tb", "db", "subtb") if k in by}
    best = min(alone, key=lambda k: alone[k]["kl"])
    mix = next((r for name, r in by.items() if name.startswith("sft+")), None)
    kls = ", ".join(f"{k} {r['kl']:.2g}" for k, r in alone.items())
    text = (f"SFT learns its finite sample of {sample_size} titles, not the target: KL(P‖Q) = {sft['kl']:.3g}, "
            f"{sft['coverage']} titles covered. The GFlowNet losses alone see the exact flows of the trie and reach "
            f"the target: KL {kls} (best: {best}).")
    if mix is not None:
        gap = sft["kl"] - alone[best]["kl"]
        share = (sft["kl"] - mix["kl"]) / gap if gap > 0 else 0.0
        text += (f" Flower's mix {mix['method']} ends at KL {mix['kl']:.3g}, {share:.0%} of the way from SFT to {best}, "
                 f"with {mix['coverage']} titles covered: θ is the weight of the SFT term, so the sample's likelihood "
                 f"still shapes the mix, and the GFlowNet term, with weight 1 − θ, "
                 + ("moves it toward the target." if share > 0 else "does not move it toward the target here."))
    return text


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
        report = write_report(out / "report.html", trie, runs, rows, sample_size)
    return DemoResult(rows, report)


def run_llm_demo(out_dir: str | Path | None = "reports/demo", steps: int = 200, sample_size: int = 500, seed: int = 0, progress: bool = True) -> list[dict]:
    """The LLM section: SFT vs Flower on the tiny causal LM (RQ1 on the default catalogue), exact fit per method."""
    from ..config import RQ1Run
    from .recipes import RQ1_DEFAULT, rq1_config
    from .rq1 import run_fit

    rows = []
    for objective in (Objective("sft"), RQ1_DEFAULT):
        run_dir = Path(out_dir) / f"llm_{objective.loss}" if out_dir is not None else Path("runs") / f"demo_llm_{objective.loss}"
        run = RQ1Run(model="tiny", data="default", sample_size=sample_size)
        result = run_fit(run, rq1_config(objective, steps, seed=seed), run_dir, progress=progress)
        rows.append({"method": f"tiny LLM {objective.name}", **{k: result.history[-1][k] for k in ("c_kl", "c_js", "c_tv", "kl", "invalid")}})
    return rows


def format_llm_table(rows: list[dict]) -> str:
    """Text table of the LLM section (c_ = trie-constrained sampling; kl and invalid = the unconstrained model)."""
    keys = ("c_kl", "c_js", "c_tv", "kl", "invalid")
    width = max(20, *(len(r["method"]) + 2 for r in rows))
    head = f"{'method':<{width}}" + "".join(f"{k:>12}" for k in keys)
    return "\n".join([head, "-" * len(head)] + [f"{r['method']:<{width}}" + "".join(f"{r[k]:>12.4g}" for k in keys) for r in rows])


def write_report(path: Path, trie: Trie, runs: dict, rows: list[dict], sample_size: int = 1000) -> Path:
    """One self-contained HTML page (plotly.js embedded once): what is compared, the table, what each column
    means, one conclusion from the numbers, and the figures (each method in one colour in every figure)."""
    from html import escape

    from .. import viz  # plotting is imported only when a report is written

    target = trie.title_log_probs().exp().numpy()
    models = {name: run.policy.title_distribution()[0].numpy() for name, run in runs.items()}
    figures = [
        viz.distribution_figure(target, models),
        viz.training_curves_figure({name: run.history for name, run in runs.items()}, keys=("kl",)),
        viz.lorenz_figure({"target": target, **models}),
    ]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    columns = "".join(f"<li><b>{k}</b>: {escape(text)}</li>" for k, text in METRICS.items())
    html = (
        "<html><head><meta charset='utf-8'><title>flower_lite demo</title></head><body style='max-width:1100px'>"
        "<h1>flower_lite demo: SFT against the GFlowNet objectives on the default catalogue</h1>"
        f"<p>The target P is the popularity of the {trie.terminal_nodes.numel()} distinct titles of the embedded "
        "catalogue, P(title) = c(title) / Σ c, laid out on the title trie with exact flows. Each method fits a "
        "tabular policy (one logit per trie edge) for the same number of steps. <b>sft</b> sees only a finite "
        f"sample of {sample_size} titles drawn from P; <b>tb</b>, <b>db</b> and <b>subtb</b> (Flower's "
        "sub-trajectory balance) see the exact token rewards r(a|s) = F(s·a)/F(s); <b>sft+subtb θ=0.995</b> is "
        "Flower's recipe, L = θ L_SFT + (1 − θ) L_SubTB: θ is the weight of the SFT term.</p>"
        f"<pre>{escape(format_table(rows))}</pre><ul>{columns}</ul>"
        f"<p><b>What the numbers say.</b> {escape(conclusion(rows, sample_size))}</p>" + "".join(parts) + "</body></html>"
    )
    return atomic_write_text(path, html)
