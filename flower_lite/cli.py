"""Command line: ``flower-lite demo`` (and ``python -m flower_lite demo``)."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    result = run_demo(args.out, steps=args.steps, sample_size=args.sample_size, seed=args.seed)
    print(format_table(result.rows))
    if result.report:
        print(f"\nreport: {result.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-lite", description="Flower: GFlowNet fine-tuning of LLM recommenders, for learners.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the toy policy with SFT and Flower on the default catalogue and compare")
    demo.add_argument("--out", default="reports/demo", help="folder for report.html and results.json")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--sample-size", type=int, default=1000, help="titles SFT trains on, drawn from the target")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
