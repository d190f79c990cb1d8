"""The tables of results/README.md, rendered from the records their commands wrote (results/records/*.json).

    python results/tables.py            # rewrite every table block of results/README.md from its records
    python results/tables.py --check    # exit 1 and name the block when a table differs from its records

A table block in the README sits between ``<!-- table: NAME -->`` and ``<!-- end table -->``; everything
inside (the commands and the Markdown table) is generated here from the records of :data:`TABLES`, so a
table cannot be edited by hand or drift from the command beside it (``tests/test_results.py`` runs the
check). To change a number, rerun the command shown in the block, then this script.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RECORDS = HERE / "records"
BLOCK = re.compile(r"<!-- table: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- end table -->", re.S)

RQ2_COLUMNS = (("HR@10", "hit@10"), ("NDCG@10", "ndcg@10"), ("HR@5", "hit@5"), ("NDCG@5", "ndcg@5"), ("DGU", "dgu"),
               ("MGU", "mgu"), ("coverage", "coverage"), ("Gini", "gini"), ("tail share", "tail_share"))
FIT_COLUMNS = (("KL(P_u‖Q_u)", "kl"), ("KL(Q_u‖P_u)", "kl_reverse"))
RQ1_COLUMNS = (("KL(P‖Q)", "kl"), ("KL(Q‖P)", "kl_reverse"), ("entropy", "entropy"), ("top-10 overlap", "top10_overlap"),
               ("seconds", "seconds"))
STOP_COLUMNS = (("after a title: mean", "complete_mean"), ("min", "complete_min"), ("max", "complete_max"),
                ("inside a title: mean", "internal_mean"), ("min", "internal_min"), ("max", "internal_max"))


def read(name: str) -> dict:
    sys.path.insert(0, str(HERE.parent))
    from flower_lite.experiments.records import read_record

    return read_record(RECORDS / f"{name}.json")


def cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines) + "\n"


def commands(*records: dict) -> str:
    return "```bash\n" + "\n".join(r["command"] for r in records) + "\n```\n"


def when(*records: dict) -> str:
    env = records[0]["environment"]
    seconds = [r["environment"]["seconds"] for r in records if r["environment"].get("seconds")]
    took = f"; {sum(seconds) / 60:.1f} min in all" if seconds else ""
    peak = f", peak memory {env['peak_rss_mib'] / 1024:.1f} GiB" if env.get("peak_rss_mib") else ""
    return (f"Measured {env['measured']} (torch {env['torch']}, transformers {env['transformers']}, "
            f"{env['cpu_capability']}, {env['torch_threads']} thread(s){took}{peak}).\n")


@dataclass
class Table:
    """One README block: the records it reads and how they become Markdown."""

    records: list[str]
    render: Callable[..., str]
    note: str = field(default="")


def rq2_table(name: str) -> str:
    r = read(name)
    rows = [[x["method"], *(cell(x[k]) for _, k in RQ2_COLUMNS)] for x in r["rows"]]
    return commands(r) + "\n" + markdown(["method", *(c for c, _ in RQ2_COLUMNS)], rows) + "\n" + when(r)


def paired(row: dict, key: str) -> str:
    """``+0.012 [-0.004, +0.028] p=0.14``: the row's difference in ``key`` to its baseline (BIGRec (SFT), or an aligned
    row's start) on the same test rows, its paired bootstrap 95% interval and randomization p-value; empty for the
    baseline itself."""
    if f"d_{key}" not in row:
        return ""
    return f"{row[f'd_{key}']:+.3f} [{row[f'd_{key}_lo']:+.3f}, {row[f'd_{key}_hi']:+.3f}] p={row[f'p_{key}']:.3f}"


PAIRED_COLUMNS = (("HR@10", "hit@10"), ("NDCG@10", "ndcg@10"), ("DGU", "dgu"), ("tail share", "tail_share"))


def paired_keys(r: dict) -> list[tuple[str, str]]:
    """The (header, key) pairs of :data:`PAIRED_COLUMNS` that some row of record ``r`` carries as ``d_<key>`` (records
    before the exposure intervals have HR@10 and NDCG@10 only)."""
    return [(c, k) for c, k in PAIRED_COLUMNS if any(f"d_{k}" in x for x in r["rows"])] or list(PAIRED_COLUMNS[:2])


def paired_columns(r: dict, against: str) -> tuple[list[str], list[list[str]]]:
    """The headers and, per row of record ``r``, the cells of its paired differences (:func:`paired`) in every key of
    :func:`paired_keys`."""
    keys = paired_keys(r)
    return [f"Δ{c} vs {against} [95%], p" for c, _ in keys], [[paired(x, k) for _, k in keys] for x in r["rows"]]


def rq2_paired_table(name: str) -> str:
    """The RQ2 columns and, per row, the paired difference to BIGRec (SFT) in HR@10, NDCG@10 (and DGU, tail share)."""
    r = read(name)
    header, cells = paired_columns(r, "SFT")
    rows = [[x["method"], *(cell(x[k]) for _, k in RQ2_COLUMNS), *d] for x, d in zip(r["rows"], cells)]
    header = ["method", *(c for c, _ in RQ2_COLUMNS), *header]
    chosen = [f"{x['method']}: " + "; ".join(f"{s['objective']} {s['valid_ndcg@10']:.4f}" for s in x["selection"])
              for x in r["rows"] if "selection" in x]
    selection = "".join(f"\nValidation NDCG@10 of the θ candidates, {c}.\n" for c in chosen)
    return commands(r) + "\n" + markdown(header, rows) + "\n" + selection + when(r)


def rq3_table(name: str) -> str:
    """The starts and every aligner from each, with each aligned row's paired difference to its own start."""
    r = read(name)
    columns = [c for c in RQ2_COLUMNS if c[1] in r["rows"][0]]
    header, cells = paired_columns(r, "its start")
    rows = [[x["method"], *(cell(x[k]) for _, k in columns), *d] for x, d in zip(r["rows"], cells)]
    header = ["method", *(c for c, _ in columns), *header]
    return commands(r) + "\n" + markdown(header, rows) + "\n" + when(r)


def option_change(command: str, base: str) -> str:
    """The options of ``command`` that ``base`` does not have (``--out`` left out)."""
    drop = lambda c: re.sub(r"\s--(out|methods)\s+(?:(?!--)\S+\s*)+", " ", c)  # noqa: E731
    base_tokens = drop(base).split()
    extra, tokens = [], drop(command).split()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--") and t not in base_tokens:
            j = i + 1
            while j < len(tokens) and not tokens[j].startswith("--"):
                j += 1
            extra.append(" ".join(tokens[i:j]))
            i = j
        else:
            i += 1
    return " ".join(extra)


def rq2_ablation(base: str, *names: str) -> str:
    """One row per record: its Flower row (and its reward's ceiling when the reward changed)."""
    base_record = read(base)
    records = [read(n) for n in names]
    rows = []
    for r in [base_record, *records]:
        change = option_change(r["command"], base_record["command"])
        by_method = {x["method"]: x for x in r["rows"]}
        rows.append([f"Flower {('(' + change + ')') if change else '(the table above)'}", f"`{change}`" if change else "",
                     *(cell(by_method["Flower"][k]) for _, k in RQ2_COLUMNS)])
        ceiling = next(x for x in r["rows"] if x["method"].startswith("R_u ceiling"))
        if "--variant" in change or "--pop-alpha" in change:
            rows.append([f"{ceiling['method']} {('(' + change + ')')}", f"`{change}`", *(cell(ceiling[k]) for _, k in RQ2_COLUMNS)])
    return commands(*records) + "\n" + markdown(["run", "command change", *(c for c, _ in RQ2_COLUMNS)], rows) + "\n" + when(*records)


def rq2_sft_steps(base: str, *names: str) -> str:
    """BIGRec (SFT) against popularity as SFT trains longer: one row per record (``base``: the full table above),
    with popularity's paired difference to SFT in HR@10 and NDCG@10."""
    records = [read(n) for n in names]
    rows = []
    for name, r in [(base, read(base)), *zip(names, records)]:
        by = {x["method"]: x for x in r["rows"]}
        sft, pop = by["BIGRec (SFT)"], by["popularity"]
        steps = re.search(r"--steps (\d+)", r["command"]).group(1) + (" (the table above)" if name == base else "")
        rows.append([steps, *(cell(sft[k]) for k in ("hit@10", "ndcg@10", "dgu", "coverage", "tail_share")),
                     cell(pop["hit@10"]), paired(pop, "hit@10"), paired(pop, "ndcg@10")])
    header = ["SFT steps", "SFT HR@10", "SFT NDCG@10", "SFT DGU", "SFT coverage", "SFT tail share", "popularity HR@10",
              "ΔHR@10 popularity − SFT [95%], p", "ΔNDCG@10 popularity − SFT [95%], p"]
    return commands(*records) + "\n" + markdown(header, rows) + "\n" + when(*records)


def rq2_seeds(*names: str) -> str:
    """SFT against Flower on several seeds: coverage, MGU, NDCG@10."""
    records = [read(n) for n in names]
    rows = []
    for r in records:
        seed = re.search(r"--seed (\d+)", r["command"]).group(1)
        by = {x["method"]: x for x in r["rows"]}
        sft, fl = by["BIGRec (SFT)"], by["Flower"]
        rows.append([seed, cell(sft["coverage"]), cell(fl["coverage"]), cell(sft["mgu"]), cell(fl["mgu"]),
                     cell(sft["ndcg@10"]), cell(fl["ndcg@10"])])
    header = ["seed", "SFT coverage", "Flower coverage", "SFT MGU", "Flower MGU", "SFT NDCG@10", "Flower NDCG@10"]
    return commands(*records) + "\n" + markdown(header, rows) + "\n" + when(*records)


def interval(row: dict, key: str, signed: bool = False) -> str:
    """``0.061 [0.052, 0.070]``: the mean over seeds and its 95% t-interval (``compare --seeds``, ``rq1_table.py
    --seeds``); empty if absent. Counts (coverage, top-10 overlap) get one decimal."""
    if key not in row:
        return ""
    digits = 1 if key in ("coverage", "top10_overlap") else 3
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(row[key])} [{f.format(row[key + '_lo'])}, {f.format(row[key + '_hi'])}]"


SEED_COLUMNS = (("HR@10", "hit@10"), ("NDCG@10", "ndcg@10"), ("DGU", "dgu"), ("MGU", "mgu"), ("coverage", "coverage"),
                ("tail share", "tail_share"))


def rq2_seed_table(name: str) -> str:
    """Means over seeds with their 95% t-intervals, and the seed-averaged difference to BIGRec (SFT) in HR@10 and
    NDCG@10 (and DGU, tail share, where the record has them) with the t-interval of its spread over seeds."""
    r = read(name)
    keys = paired_keys(r)
    rows = [[x["method"], *(interval(x, k) for _, k in SEED_COLUMNS), *(interval(x, f"d_{k}", signed=True) for _, k in keys)]
            for x in r["rows"]]
    header = ["method", *(c for c, _ in SEED_COLUMNS), *(f"Δ{c} vs SFT" for c, _ in keys)]
    return commands(r) + "\n" + markdown(header, rows) + "\n" + when(r)


def target_fit(name: str) -> str:
    """One row per run: the KL to the per-user target (over seeds: the mean with its 95% t-interval)."""
    r = read(name)
    value = interval if "per_seed" in r else (lambda x, k: cell(x[k]))
    rows = [[x["run"], *(value(x, k) for _, k in FIT_COLUMNS)] for x in r["rows"]]
    return commands(r) + "\n" + markdown(["run", *(c for c, _ in FIT_COLUMNS)], rows) + "\n" + when(r)


def rq1_table(name: str) -> str:
    """One row per run: the exact fit of the trie-constrained distribution Q to the target P, and the wall time."""
    r = read(name)
    rows = []
    for x in r["rows"]:
        penalty = f" (penalty {x['penalty']:g})" if x.get("penalty") not in (None, -15.0) else ""
        rows.append([x["run"] + penalty, *(cell(x[k]) for _, k in RQ1_COLUMNS[:-1]), f"{x['seconds']:.0f}"])
    return commands(r) + "\n" + markdown(["run", *(c for c, _ in RQ1_COLUMNS)], rows) + rq1_setup(r) + "\n" + when(r)


def rq1_seed_table(name: str) -> str:
    """One row per run: the mean over seeds of the exact fit, with its 95% t-interval, and the mean wall time."""
    r = read(name)
    tables = list(r["per_seed"].values())
    seconds = [sum(t[i]["seconds"] for t in tables) / len(tables) for i in range(len(r["rows"]))]
    rows = [[x["run"], *(interval(x, k) for _, k in RQ1_COLUMNS[:-1]), f"{s:.0f}"] for x, s in zip(r["rows"], seconds)]
    header = ["run", *(c for c, _ in RQ1_COLUMNS[:-1]), "seconds (mean)"]
    return commands(r) + "\n" + markdown(header, rows) + rq1_setup(r) + "\n" + when(r)


def rq1_setup(record: dict) -> str:
    """The line under an RQ1 table that says what its rows share (the record's ``setup``), or nothing."""
    setup = record.get("setup")
    if setup is None:
        return ""
    return (f"\nShared by every row: {setup['titles']:,} titles in a trie of {setup['trie_nodes']:,} nodes"
            + ("" if setup["cache_bytes"] is None else f", the frozen trunk's stored states {setup['cache_bytes'] / 2**20:.1f} MiB")
            + f", loaded and built in {setup['seconds_to_prepare']:.0f} s.\n")


def rq1_stops(*names: str) -> str:
    """log pi(T | s) of each initial model, for each choice of T."""
    records = [read(n) for n in names]
    rows = [[f"{n.split('_')[-1]}, {x['run']}", *(cell(x[k]) for _, k in STOP_COLUMNS)] for n, r in zip(names, records)
            for x in r["rows"]]
    return commands(*records) + "\n" + markdown(["model, T", *(c for c, _ in STOP_COLUMNS)], rows) + "\n" + when(*records)


ABLATIONS = ("rq2_theta_0.99", "rq2_add_log_s", "rq2_catalog", "rq2_mixed", "rq2_on_policy", "rq2_db_0.9",
             "rq2_catalog_0.998", "rq2_catalog_0.999", "rq2_pop_alpha_0.5", "rq2_pop_alpha_0.5_mixed")
SFT_STEPS = ("rq2_smollm2_movielens_sft900", "rq2_smollm2_movielens_sft1800")
TABLES: dict[str, Table] = {
    "rq2-default": Table(["rq2_default"], lambda: rq2_paired_table("rq2_default")),
    "rq2-default-seeds": Table(["rq2_default_seeds"], lambda: rq2_seed_table("rq2_default_seeds")),
    "rq2-ablations": Table(["rq2_default", *ABLATIONS], lambda: rq2_ablation("rq2_default", *ABLATIONS)),
    "rq2-seeds": Table([f"rq2_quick_seed{s}" for s in range(4)], lambda: rq2_seeds(*(f"rq2_quick_seed{s}" for s in range(4)))),
    "rq2-target-fit": Table(["target_fit_seeds"], lambda: target_fit("target_fit_seeds")),
    "rq2-target-fit-warm": Table(["target_fit_warm_seeds"], lambda: target_fit("target_fit_warm_seeds")),
    "rq2-movies": Table(["rq2_movies"], lambda: rq2_paired_table("rq2_movies")),
    "rq2-check": Table(["rq2_check"], lambda: rq2_table("rq2_check")),
    "rq2-smollm2-movies": Table(["rq2_smollm2_movies"], lambda: rq2_paired_table("rq2_smollm2_movies")),
    "rq2-smollm2-movielens": Table(["rq2_smollm2_movielens"], lambda: rq2_paired_table("rq2_smollm2_movielens")),
    "rq2-smollm2-movielens-sft-steps": Table(["rq2_smollm2_movielens", *SFT_STEPS],
                                             lambda: rq2_sft_steps("rq2_smollm2_movielens", *SFT_STEPS)),
    "rq2-smollm2-seeds": Table(["rq2_smollm2_seeds"], lambda: rq2_seed_table("rq2_smollm2_seeds")),
    "rq3-tiny": Table(["rq3_tiny"], lambda: rq3_table("rq3_tiny")),
    "rq3-smollm2-movies": Table(["rq3_smollm2_movies"], lambda: rq3_table("rq3_smollm2_movies")),
    "rq3-smollm2-movielens": Table(["rq3_smollm2_movielens"], lambda: rq3_table("rq3_smollm2_movielens")),
    "rq3-smollm2-movies-rloo": Table(["rq3_smollm2_movies_rloo"], lambda: rq3_table("rq3_smollm2_movies_rloo")),
    "rq1-stops": Table(["rq1_stops_smollm2", "rq1_stops_tiny"], lambda: rq1_stops("rq1_stops_smollm2", "rq1_stops_tiny")),
    "rq1-smollm2": Table(["rq1_smollm2"], lambda: rq1_table("rq1_smollm2")),
    "rq1-smollm2-seeds": Table(["rq1_smollm2_seeds"], lambda: rq1_seed_table("rq1_smollm2_seeds")),
    "rq1-smollm2-movies1439": Table(["rq1_smollm2_movies1439"], lambda: rq1_seed_table("rq1_smollm2_movies1439")),
    "rq1-smollm2-movies1439-600": Table(["rq1_smollm2_movies1439_600"], lambda: rq1_seed_table("rq1_smollm2_movies1439_600")),
    "rq1-tiny": Table(["rq1_tiny"], lambda: rq1_table("rq1_tiny")),
    "rq1-tiny-seeds": Table(["rq1_tiny_seeds"], lambda: rq1_seed_table("rq1_tiny_seeds")),
}


def render_readme(text: str) -> str:
    """``text`` with every table block regenerated from its records (``KeyError`` for an unknown block)."""
    return BLOCK.sub(lambda m: f"<!-- table: {m['name']} -->\n{TABLES[m['name']].render()}<!-- end table -->", text)


def check(text: str) -> list[str]:
    """Names of the blocks whose text differs from their records' rendering (and blocks without a spec)."""
    bad = []
    for m in BLOCK.finditer(text):
        spec = TABLES.get(m["name"])
        if spec is None or m["body"] != spec.render():
            bad.append(m["name"])
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when a table is stale")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    if args.check:
        bad = check(text)
        if bad:
            print(f"stale tables in {README}: {', '.join(bad)}: rerun their commands, then `python results/tables.py`")
            return 1
        print(f"{len(BLOCK.findall(text))} tables match their records")
        return 0
    README.write_text(render_readme(text), encoding="utf-8")
    print(f"rewrote {len(BLOCK.findall(text))} tables of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
