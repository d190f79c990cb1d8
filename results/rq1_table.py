"""RQ1 on one model: every objective beside its reversed-popularity control, cold and warm (results/README.md).

    python results/rq1_table.py --model smollm2 --steps 200 --out results/records/rq1_smollm2.json
    python results/rq1_table.py --model tiny --steps 200 --out results/records/rq1_tiny.json
    python results/rq1_table.py --model smollm2 --stops --out results/records/rq1_stops_smollm2.json

The table rows are ``flower_lite.experiments.rq1_table.TABLE_ROWS`` (and the warm-start rows); ``--stops`` measures
instead log pi(T | s) of the initial model at complete and at incomplete titles, for T = EOS and T = newline.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_lite.config import RQ1Run  # noqa: E402
from flower_lite.experiments.records import command_line, write_record  # noqa: E402
from flower_lite.experiments.rq1_table import prepare, rq1_table  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="tiny | smollm2 | a Hugging Face id or folder")
    parser.add_argument("--data", default="movies100", help="the target (RQ1Run.data)")
    parser.add_argument("--stop", default="auto", choices=["auto", "eos", "newline"], help="the termination token T")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warm", action="store_true", help="leave out the rows started from the SFT weights")
    parser.add_argument("--stops", action="store_true", help="measure the initial stop log-probabilities of both T only")
    parser.add_argument("--out", default=None, help="write the rows, the command and its environment as a JSON record")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    t0 = time.perf_counter()
    if args.stops:
        rows = []
        for stop in ("eos", "newline"):
            bench = prepare(RQ1Run(model=args.model, data=args.data, stop=stop), args.seed)
            rows.append({"run": f"T = {stop} (id {bench.trie.eos_id})", **bench.stops})
            print(rows[-1], flush=True)
    else:
        run = RQ1Run(model=args.model, data=args.data, stop=args.stop)
        rows, _, bench = rq1_table(run, args.steps, args.seed, warm=not args.no_warm, progress=True,
                                   batch_size=args.batch_size, lr=args.lr)
        print(f"prepared in {bench.seconds_to_prepare:.0f} s; initial stops: {bench.stops}")
        for r in rows:
            print(r, flush=True)
    if args.out:
        write_record(args.out, command_line("python results/rq1_table.py", sys.argv[1:]), rows, t0)


if __name__ == "__main__":
    main()
