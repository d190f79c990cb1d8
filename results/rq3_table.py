"""RQ3 on the RQ2 set-up: S-DPO, DMPO (as coded) and RosePO from BIGRec (SFT) and from Flower (results/README.md).

    python results/rq3_table.py --model smollm2 --data movielens --train-rows 2000 --test-rows 500 \\
        --steps 300 --align-steps 200 --objectives db:0.995 --out results/records/rq3_smollm2_movielens.json

Every start trains as in ``flower-lite compare`` (the same per-row trunk and recipe); each aligner then starts from
it with it as the reference. Each aligned row carries its per-user paired difference to its own start.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_lite.cli import _objective, add_fields, given  # noqa: E402
from flower_lite.config import RQ2Run  # noqa: E402
from flower_lite.experiments.records import command_line, write_record  # noqa: E402
from flower_lite.experiments.rq2.lm import run_config  # noqa: E402
from flower_lite.experiments.rq3 import ALIGNERS, AlignConfig, rq3_table  # noqa: E402
from flower_lite.threads import num_threads  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fields(parser, RQ2Run(), [f.name for f in fields(RQ2Run)], "run.")
    parser.add_argument("--steps", type=int, default=None, help="training steps of the starts (default: the recipe's)")
    for f in fields(AlignConfig):
        if f.name != "seed":  # the run's seed
            kind = float if f.name in ("beta", "lr") else int
            parser.add_argument(f"--align-{f.name.replace('_', '-')}", dest=f"align.{f.name}", type=kind,
                                default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default})")
    parser.add_argument("--aligners", nargs="+", default=list(ALIGNERS), choices=list(ALIGNERS), metavar="ALIGNER")
    parser.add_argument("--objectives", nargs="+", type=_objective, default=[], metavar="LOSS[:THETA]",
                        help="more Flower starts, one per objective (e.g. db:0.995)")
    parser.add_argument("--out", default=None, help="write the rows, the command and its environment as a JSON record")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    run = RQ2Run(**given(args, "run."))
    config = AlignConfig(**given(args, "align."), seed=run.seed)
    with num_threads(run.num_threads):
        rows, _, _ = rq3_table(run, run_config(run, args.steps, seed=run.seed), config, args.aligners, args.objectives)
        if args.out:
            write_record(args.out, command_line("python results/rq3_table.py", argv), rows, t0)
    for r in rows:
        print(r, flush=True)
    return rows


if __name__ == "__main__":
    main()
