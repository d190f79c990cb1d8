"""Command line: ``flower-lite demo | fit | recommend | evaluate | compare`` (also ``python -m flower_lite ...``).

The options of ``fit`` and ``compare`` are built from the dataclasses of :mod:`flower_lite.config`
(their help, choices and bounds); their defaults are the recipes' (``experiments.rq1.rq1_config``,
``experiments.rq2.rq2_config``). Building the parser imports no torch. Every user error ends in one line,
``flower-lite: error: ...`` and exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields, is_dataclass, replace

from . import __version__
from .config import LOSSES, RQ2_METHODS, Objective, RewardSpec, RQ1Run, RQ2Run, TrainConfig

PROG = "flower-lite"
TRAIN_OPTIONS = ("trajectories", "temperature", "lr", "log_z_lr", "weight_decay", "warmup_steps", "schedule",
                 "batch_size", "max_steps", "eval_every", "save_every", "max_grad_norm", "mixed_precision")
ALIASES = {"max_steps": ("--steps",)}


USER_ERRORS = (ValueError, OSError, ImportError, RuntimeError)
"""What a command raises for bad input, missing files or packages (reported in one line, exit code 2);
anything else is a bug and keeps its traceback."""


# ---------------------------------------------------------------------------- options from dataclasses
def _number(kind: type, meta: dict):
    """An argparse type for int / float fields that checks ``minimum`` / ``maximum`` of the field."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}")
        if "minimum" in meta and value < meta["minimum"]:
            raise argparse.ArgumentTypeError(f"must be >= {meta['minimum']}, got {text}")
        if "maximum" in meta and value > meta["maximum"]:
            raise argparse.ArgumentTypeError(f"must be <= {meta['maximum']}, got {text}")
        return value
    return parse


def add_fields(parser: argparse.ArgumentParser, instance, names=None, dest_prefix: str = "", notes=None) -> None:
    """One option per field of the dataclass ``instance`` (``names``: only these, in this order). The help
    shows the field's help and the instance's value as the default; an option the user does not give is
    left out of the parsed namespace (the recipe's value then applies)."""
    hints = typing.get_type_hints(type(instance))
    by_name = {f.name: f for f in fields(instance)}
    for name in names or [f.name for f in fields(instance) if not is_dataclass(hints[f.name])]:
        f, kind = by_name[name], hints[name]
        meta, default = dict(f.metadata), getattr(instance, name)
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # int | None -> int
        shown = (notes or {}).get(name, default)
        kwargs = dict(dest=dest_prefix + name, default=argparse.SUPPRESS,
                      help=f"{meta.get('help', '')} (default: {shown})")
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "choices" in meta:
            kwargs["choices"] = meta["choices"]
        elif base in (int, float):
            kwargs["type"], kwargs["metavar"] = _number(base, meta), base.__name__.upper()
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument(*ALIASES.get(name, ()), f"--{name.replace('_', '-')}", **kwargs)


def given(args: argparse.Namespace, prefix: str = "") -> dict:
    """The options with ``prefix`` that the user gave, without the prefix."""
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and k.count(".") == prefix.count(".")}


# ---------------------------------------------------------------------------- output
FIT_COLUMNS = (("step", "step"), ("c_kl", "KL(P‖Q)"), ("c_kl_reverse", "KL(Q‖P)"), ("c_js", "JS"), ("c_tv", "TV"),
               ("kl", "KL free"), ("invalid", "invalid"))
FIT_LEGEND = ("KL, JS, TV: the trie-constrained model's title distribution Q against the target P (exact; lower is "
              "better, 0 = the target); KL free: the unconstrained model, non-catalogue outputs pooled; invalid: "
              "its mass outside the catalogue (lower is better)")
RQ2_COLUMNS = (("method", "method"), ("hit@10", "HR@10"), ("ndcg@10", "NDCG@10"), ("dgu", "DGU"), ("mgu", "MGU"),
               ("coverage", "coverage"), ("gini", "Gini"), ("tail_share", "tail"))
RQ2_LEGEND = ("HR@10, NDCG@10: accuracy on the test rows (higher is better); DGU, MGU: exposure unfairness across 8 "
              "popularity groups (lower is fairer); coverage: distinct items recommended; Gini: concentration of "
              "exposure (lower is more even); tail: share of slots on the 80% least popular items")


def text_table(rows: list[dict], columns) -> str:
    """An aligned plain-text table of ``rows`` with ``columns`` = ((key, header), ...)."""
    cells = [[h for _, h in columns]] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------- commands
def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo import conclusion, format_table, legend, run_demo

    result = run_demo(args.out, steps=args.steps, sample_size=args.sample_size, seed=args.seed)
    print(format_table(result.rows))
    print(legend())
    print("\n" + conclusion(result.rows, args.sample_size))
    if result.report:
        print(f"\nreport: {result.report}")
    if args.llm:
        from .experiments.demo import format_llm_table, run_llm_demo

        print("\nLLM section: a tiny Qwen2-architecture model, SFT vs Flower on the same 500 sampled titles")
        print(format_llm_table(run_llm_demo(args.out, steps=args.llm_steps, seed=args.seed)))
    return 0


def _fit_settings(args: argparse.Namespace) -> tuple[RQ1Run, TrainConfig]:
    from .experiments.recipes import RQ1_DEFAULT, rq1_config

    run = replace(RQ1Run(), **given(args, "run."))
    run = replace(run, reward=replace(run.reward, **given(args, "reward.")))
    objective = replace(RQ1_DEFAULT, **given(args, "objective."))
    train = given(args, "train.")
    return run, rq1_config(objective, train.pop("max_steps", 200), seed=args.seed, **train)


def _fit(args: argparse.Namespace) -> int:
    from .experiments.rq1 import run_fit

    run, train = _fit_settings(args)
    result = run_fit(run, train, args.out)
    if args.json:
        print(json.dumps(result.history[-1]))
    else:
        print(text_table(result.history, FIT_COLUMNS))
        print(FIT_LEGEND)
    print(f"run: {args.out} (model in {args.out}/final)")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from .decoding import recommend
    from .experiments.rq1 import RQ1_PROMPT, load_run

    model, tokenizer, trie, target = load_run(args.run)
    ranked = recommend(model, tokenizer, [args.prompt or RQ1_PROMPT], trie, num_beams=max(args.beams, args.top),
                       num_return=args.top, length_penalty=args.length_penalty)[0]
    for rank, item in enumerate(ranked, 1):
        print(f"{rank:>3}. {target.titles[item]}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .decoding import recommend
    from .experiments.rq1 import RQ1_PROMPT, fit_metrics, load_run, top_k_popularity
    from .rollout import LMPolicy

    model, tokenizer, trie, target = load_run(args.run)
    out = fit_metrics(LMPolicy(model, tokenizer), trie, target)
    ranked = recommend(model, tokenizer, [RQ1_PROMPT], trie, num_beams=10, num_return=10)[0]
    out |= top_k_popularity(ranked, target)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(text_table([out], FIT_COLUMNS[1:]))
    print(FIT_LEGEND)
    print(f"beam search, top 10: mean popularity rank {out['mean_pop_rank']:.1f} of {len(target.titles)} (1 = the most "
          f"popular title), {out['in_top10pct']:.0%} of the list in the most popular 10% of titles")
    return 0


def _objective(text: str) -> Objective | tuple[Objective, ...]:
    """``db`` (the loss alone), ``db:0.995`` (θ-mixed with SFT) -> an :class:`Objective`; ``db:0.99,0.995,0.999`` -> one
    per θ, of which validation keeps one (:func:`~.experiments.rq2.compare.select_on_validation`)."""
    loss, _, thetas = text.partition(":")
    if loss not in LOSSES or loss == "sft":
        raise argparse.ArgumentTypeError(f"expected LOSS, LOSS:THETA or LOSS:THETA,THETA,... with LOSS one of "
                                         f"{', '.join(LOSSES[1:])}, got {text!r}")
    try:
        grid = tuple(Objective(loss, theta=float(t)) for t in thetas.split(",")) if thetas else (Objective(loss),)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}")
    return grid[0] if len(grid) == 1 else grid


def _compare(args: argparse.Namespace) -> int:
    import time

    from .experiments.recipes import FLOWER
    from .experiments.records import command_line, write_record
    from .experiments.rq2 import rq2_table
    from .experiments.rq2.compare import SEED_KEYS
    from .experiments.rq2.lm import run_config
    from .metrics import seed_summary
    from .threads import num_threads

    if args.seeds is not None and len(set(args.seeds)) < 2:
        raise ValueError(f"--seeds needs at least 2 different seeds for an interval, got {args.seeds}")
    if args.seeds and any(not isinstance(o, Objective) for o in args.objectives):
        raise ValueError("--seeds takes fixed objectives (db:0.995), not a θ grid: validation may keep another θ per seed")
    started = time.perf_counter()
    objective = replace(FLOWER, **given(args, "objective."))
    train = given(args, "train.")
    steps = train.pop("max_steps", None)
    reward = replace(RewardSpec(), **given(args, "reward."))
    tables = []
    for seed in args.seeds or [args.seed]:
        run = RQ2Run(**given(args, "run."), seed=seed)
        config = run_config(run, steps, objective=objective, seed=seed, **train)
        with num_threads(run.num_threads):  # the record states the threads the run used
            tables.append(rq2_table(run, config, reward, methods=args.methods, objectives=args.objectives)[0])
    rows = seed_summary(tables, SEED_KEYS) if args.seeds else tables[0]
    if args.out:
        with num_threads(run.num_threads):
            extra = {"per_seed": dict(zip(map(str, args.seeds), tables))} if args.seeds else {}
            write_record(args.out, command_line(PROG, args.argv), rows, started, **extra)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(text_table(rows, RQ2_COLUMNS))
        if args.seeds:
            print(f"means over seeds {', '.join(map(str, args.seeds))}; intervals in the JSON record / --json")
        print(RQ2_LEGEND)
    if args.out:
        print(f"rows: {args.out}")
    return 0


# ---------------------------------------------------------------------------- the parser
def _positive(text: str) -> int:
    return _number(int, {"minimum": 1})(text)


def build_parser() -> argparse.ArgumentParser:
    from .experiments.recipes import FLOWER, RQ1_DEFAULT, rq1_config, rq2_config  # torch-free

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description="Flower: GFlowNet fine-tuning of LLM recommenders, for learners.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit the toy policy with every objective on the default catalogue and compare",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="reports/demo", help="folder for report.html and results.json")
    demo.add_argument("--steps", type=_positive, default=300)
    demo.add_argument("--sample-size", type=_positive, default=1000, help="titles SFT trains on, drawn from the target")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--llm", action="store_true", help="add the LLM section: SFT vs Flower on a tiny causal LM (a few minutes on CPU)")
    demo.add_argument("--llm-steps", type=_positive, default=200)
    demo.set_defaults(func=_demo)

    fit = sub.add_parser("fit", help="fine-tune a causal LM on a popularity target (the paper's RQ1)", formatter_class=fmt)
    add_fields(fit, RQ1Run(), ("model", "data", "titles", "sample_size", "stop", "trunk_layers", "lora_rank"), "run.")
    add_fields(fit, RQ1Run().reward, ("pop_alpha", "reversed"), "reward.")
    add_fields(fit, RQ1_DEFAULT, dest_prefix="objective.")
    add_fields(fit, rq1_config(), TRAIN_OPTIONS, "train.", notes={"eval_every": "a quarter of --steps"})
    fit.add_argument("--seed", type=int, default=0, help="seed of the SFT sample, the data order and sampling (default: 0)")
    fit.add_argument("--out", default="runs/fit", help="run folder: run.json, log.jsonl, checkpoints, final model (default: runs/fit)")
    fit.add_argument("--json", action="store_true", help="print the last evaluation as JSON instead of a table")
    fit.set_defaults(func=_fit)

    rec = sub.add_parser("recommend", help="trie-constrained beam search with a fitted model",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rec.add_argument("--run", required=True, help="a run folder written by 'flower-lite fit'")
    rec.add_argument("--prompt", default=None, help="the prompt (default: the RQ1 prompt)")
    rec.add_argument("--top", type=_positive, default=10, help="titles to print")
    rec.add_argument("--beams", type=_positive, default=10, help="beam width (raised to --top when smaller)")
    rec.add_argument("--length-penalty", type=float, default=1.0, help="1.0 as BIGRec, 0.0 as D3")
    rec.set_defaults(func=_recommend)

    ev = sub.add_parser("evaluate", help="exact distribution fit (KL, JS, TV) and top-10 popularity of a fitted model")
    ev.add_argument("--run", required=True, help="a run folder written by 'flower-lite fit'")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="next-item recommendation (RQ2): every baseline, SFT and Flower (tiny model, SmolLM2 or a local one)",
                         formatter_class=fmt)
    add_fields(cmp, RQ2Run(), [f.name for f in fields(RQ2Run) if f.name != "seed"], "run.")
    add_fields(cmp, RewardSpec(), dest_prefix="reward.")
    add_fields(cmp, FLOWER, dest_prefix="objective.")
    add_fields(cmp, rq2_config(), TRAIN_OPTIONS, "train.", notes={"eval_every": "a sixth of --steps",
                                                                   "warmup_steps": "min(20, steps / 10)"})
    cmp.add_argument("--methods", nargs="+", default=list(RQ2_METHODS), choices=RQ2_METHODS, metavar="METHOD",
                     help=f"the rows to compute (default: all): {', '.join(RQ2_METHODS)}; a row does not depend on the others")
    cmp.add_argument("--objectives", nargs="+", type=_objective, default=[], metavar="LOSS[:THETA]",
                     help="more Flower rows, one per objective: distill, db, subtb_exact, tb alone, θ-mixed with "
                          "SFT as db:0.995, or a θ grid db:0.99,0.995,0.999 of which the validation NDCG@10 "
                          "keeps one (default: none)")
    seeds = cmp.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="seed of the subsets, SASRec, the tiny model and training (default: 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="run the comparison once per seed (at least 2) and report each metric's mean and 95%% "
                            "t-interval over the seeds (fixed objectives: no θ grid)")
    cmp.add_argument("--out", default=None, help="write the rows, the command and its environment as a JSON record here")
    cmp.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    cmp.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except KeyboardInterrupt as stop:  # Ctrl-C; a training run first writes a checkpoint (train.TrainingInterrupted)
        if args.debug:
            raise
        checkpoint = getattr(stop, "checkpoint", None)
        where = f": checkpoint {checkpoint} written; run the same command to resume" if checkpoint else ""
        print(f"{PROG}: interrupted{' at step ' + str(stop.step) if hasattr(stop, 'step') else ''}{where}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
