"""RQ1 on one model: every objective beside its reversed-popularity control, cold and warm (results/README.md).

    python results/rq1_table.py --model smollm2 --steps 200 --out results/records/rq1_smollm2.json
    python results/rq1_table.py --model tiny --steps 200 --out results/records/rq1_tiny.json
    python results/rq1_table.py --model smollm2 --stops --out results/records/rq1_stops_smollm2.json
    python results/rq1_table.py --model smollm2 --steps 200 --seeds 0 1 2 --no-warm \\
        --rows initial sft "subtb (Flower as published)" "sft+subtb θ=0.995" db distill dpo rloo \\
        --out results/records/rq1_smollm2_seeds.json

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
from flower_lite.experiments.rq1_table import bench_setup, prepare, rq1_table  # noqa: E402
from flower_lite.metrics import seed_summary  # noqa: E402

SEED_KEYS = ("kl", "kl_reverse", "entropy", "top10_overlap")
"""The columns ``--seeds`` aggregates over seeds."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="tiny | smollm2 | a Hugging Face id or folder")
    parser.add_argument("--data", default="movies100", help="the target (RQ1Run.data)")
    parser.add_argument("--stop", default="auto", choices=["auto", "eos", "newline"], help="the termination token T")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="run the table once per seed (the SFT sample, the initial adapters, the batches) and record "
                             "each row's mean over seeds with its 95%% t-interval; the tables of every seed are kept too")
    parser.add_argument("--no-warm", action="store_true", help="leave out the GFlowNet rows restarted from the SFT weights "
                        "(DPO and the RL baseline start from them by definition and stay)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                        help="only these rows, each with its control, cold and warm (e.g. initial sft dpo rloo)")
    parser.add_argument("--stops", action="store_true", help="measure the initial stop log-probabilities of both T only")
    parser.add_argument("--out", default=None, help="write the rows, the command and its environment as a JSON record")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    t0 = time.perf_counter()
    command = command_line("python results/rq1_table.py", sys.argv[1:])
    if args.stops:
        rows = []
        for stop in ("eos", "newline"):
            bench = prepare(RQ1Run(model=args.model, data=args.data, stop=stop), args.seed)
            rows.append({"run": f"T = {stop} (id {bench.trie.eos_id})", **bench.stops})
            print(rows[-1], flush=True)
    else:
        if args.seeds is not None and len(set(args.seeds)) < 2:
            raise SystemExit(f"--seeds needs at least 2 different seeds for an interval, got {args.seeds}")
        run = RQ1Run(model=args.model, data=args.data, stop=args.stop)
        tables, done = [], []
        for seed in args.seeds or [args.seed]:
            def keep(row, seed=seed):  # each row as it is done, shown and kept beside --out until the table ends
                print(f"seed {seed}: {row}", flush=True)
                if args.out:
                    done.append({"seed": seed, **row})
                    write_record(partial_path(args.out), command, done, t0, partial=True)

            table, _, bench = rq1_table(run, args.steps, seed, warm=not args.no_warm, progress=True, only=args.rows,
                                        on_row=keep, batch_size=args.batch_size, lr=args.lr)
            tables.append(table)
            setup = bench_setup(bench)
            print(f"seed {seed}, set-up: {setup}; initial stops: {bench.stops}", flush=True)
        rows = seed_summary(tables, SEED_KEYS, name="run") if args.seeds else tables[0]
    if args.out:
        extra = {} if args.stops else {"setup": setup}
        if args.seeds:
            extra["per_seed"] = dict(zip(map(str, args.seeds), tables))
        write_record(args.out, command, rows, t0, **extra)
        partial_path(args.out).unlink(missing_ok=True)


def partial_path(out: str) -> Path:
    """Where the rows done so far are kept while the table runs (``X.json`` -> ``X.partial.json``), so that a long run
    stopped early keeps them; the finished record replaces it."""
    out = Path(out)
    return out.with_name(out.stem + ".partial" + out.suffix)


if __name__ == "__main__":
    main()
