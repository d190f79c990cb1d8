"""Command line: ``flower-lite demo | fit | recommend | evaluate | compare`` (also ``python -m flower_lite ...``)."""
from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    result = run_demo(args.out, steps=args.steps, sample_size=args.sample_size, seed=args.seed)
    print(format_table(result.rows))
    if result.report:
        print(f"\nreport: {result.report}")
    if args.llm:
        from .demo import format_llm_table, run_llm_demo

        print("\nLLM section: a tiny Qwen2-architecture model, SFT vs Flower on the same 500 sampled titles")
        print(format_llm_table(run_llm_demo(args.out, steps=args.llm_steps, seed=args.seed)))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .fitting import run_fit

    overrides = {k: v for k, v in (("lr", args.lr), ("theta", args.theta), ("loss", args.loss)) if v is not None}
    result = run_fit(args.model, args.data, args.method, args.out, args.titles, args.steps, args.sample_size, args.seed, **overrides)
    last = result.history[-1]
    print(json.dumps({k: last[k] for k in ("step", "kl", "c_kl", "js", "tv", "invalid") if k in last}))
    print(f"run: {args.out} (model in {args.out}/final)")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from .decoding import recommend
    from .fitting import RQ1_PROMPT, load_run

    model, tokenizer, trie, target = load_run(args.run)
    ranked = recommend(model, tokenizer, [args.prompt or RQ1_PROMPT], trie, num_beams=args.beams, num_return=args.top,
                       length_penalty=args.length_penalty)[0]
    for rank, item in enumerate(ranked, 1):
        print(f"{rank:>3}. {target.titles[item]}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .decoding import recommend
    from .fitting import RQ1_PROMPT, fit_metrics, load_run, top_k_popularity

    model, tokenizer, trie, target = load_run(args.run)
    out = fit_metrics(model, tokenizer, trie, target)
    ranked = recommend(model, tokenizer, [RQ1_PROMPT], trie, num_beams=10, num_return=10)[0]
    out |= top_k_popularity(ranked, target)
    print(json.dumps(out, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .baselines import rq2_table

    rows, _ = rq2_table(args.data, args.steps, args.train_rows, args.valid_rows, args.test_rows, args.theta,
                        args.variant, seed=args.seed, threads=args.threads, trajectories=args.trajectories,
                        pop_alpha=args.pop_alpha, loss=args.loss)
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
        print(f"rows: {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-lite", description="Flower: GFlowNet fine-tuning of LLM recommenders, for learners.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the toy policy with SFT and Flower on the default catalogue and compare")
    demo.add_argument("--out", default="reports/demo", help="folder for report.html and results.json")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--sample-size", type=int, default=1000, help="titles SFT trains on, drawn from the target")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--llm", action="store_true", help="add the LLM section: SFT vs Flower on a tiny causal LM (a few minutes on CPU)")
    demo.add_argument("--llm-steps", type=int, default=200)
    demo.set_defaults(func=_demo)

    fit = sub.add_parser("fit", help="fine-tune a causal LM on a popularity target (the paper's RQ1)")
    fit.add_argument("--model", default="tiny", help="tiny | smollm2 | a Hugging Face id or local directory")
    fit.add_argument("--data", default="default", choices=["default", "movielens", "movies100"])
    fit.add_argument("--titles", type=int, default=100, help="the most popular titles that form the target")
    fit.add_argument("--method", default="flower", help="sft | flower | 'flower θ=0.9' | db")
    fit.add_argument("--loss", default=None, choices=["subtb", "tb", "db"], help="the GFlowNet objective")
    fit.add_argument("--theta", type=float, default=None, help="Flower: L = theta SFT + (1 - theta) GFN")
    fit.add_argument("--lr", type=float, default=None)
    fit.add_argument("--steps", type=int, default=200)
    fit.add_argument("--sample-size", type=int, default=500, help="titles drawn from the target for SFT")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="runs/fit", help="run folder (config, log.jsonl, checkpoint, final model)")
    fit.set_defaults(func=_fit)

    rec = sub.add_parser("recommend", help="trie-constrained beam search with a fitted model")
    rec.add_argument("--run", required=True, help="a run folder written by 'flower-lite fit'")
    rec.add_argument("--prompt", default=None)
    rec.add_argument("--top", type=int, default=10)
    rec.add_argument("--beams", type=int, default=10)
    rec.add_argument("--length-penalty", type=float, default=1.0, help="1.0 as BIGRec, 0.0 as D3")
    rec.set_defaults(func=_recommend)

    ev = sub.add_parser("evaluate", help="exact distribution fit (KL, JS, TV) and top-10 popularity of a fitted model")
    ev.add_argument("--run", required=True)
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="next-item recommendation (RQ2): every baseline, SFT and Flower with the tiny model")
    cmp.add_argument("--data", default="default", help="default | Movies_and_TV | Video_Games | CDs_and_Vinyl (shared data)")
    cmp.add_argument("--steps", type=int, default=600, help="training steps of each LLM method")
    cmp.add_argument("--train-rows", type=int, default=None, help="keep the most recent train rows (default: all)")
    cmp.add_argument("--valid-rows", type=int, default=64)
    cmp.add_argument("--test-rows", type=int, default=128)
    cmp.add_argument("--theta", type=float, default=0.995)
    cmp.add_argument("--variant", default="div_s", choices=["div_s", "add_log_s", "logp"])
    cmp.add_argument("--trajectories", default="offline", choices=["offline", "on_policy", "mixed", "catalog"],
                     help="Flower's GFlowNet trajectories")
    cmp.add_argument("--loss", default="subtb", choices=["subtb", "db", "tb"],
                     help="Flower's GFlowNet term (subtb: the paper's; db: detailed balance on the exact flows)")
    cmp.add_argument("--pop-alpha", type=float, default=1.0, help="p_pop ∝ (count + 1) ** alpha in the rewards (1: the paper)")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    cmp.add_argument("--out", default=None, help="write the table rows as JSON here")
    cmp.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
