"""Does the GFlowNet term move the policy toward Flower's per-user target? (results/README.md)

Trains the tiny offline policy on the synthetic default data (``experiments.rq2.rq2_setup``) with SFT, the
GFlowNet term alone (detailed balance with the exact per-user flows, and Flower's sub-trajectory
balance), and Flower's mix, each GFlowNet run repeated with a reversed-popularity reward as control,
and prints KL(P_u || Q_u) / KL(Q_u || P_u) against the true target on test rows
(``experiments.rq2.target_fit_comparison``)::

    python results/target_fit.py --steps 300 --seed 0 [--warm-start] [--out fit.json]
    python results/target_fit.py --steps 300 --seeds 0 1 2 --out results/records/target_fit_seeds.json

``--warm-start`` trains SFT first and starts the GFlowNet-only runs from its weights. ``--seeds`` runs the whole
comparison once per seed (the test rows, SASRec, the initial weights, the batches) and records each run's mean
over seeds with its 95% t-interval, and every seed's rows.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace

from flower_lite.config import Objective, TrainConfig
from flower_lite.experiments import rq2
from flower_lite.experiments.records import command_line, write_record
from flower_lite.metrics import seed_summary
from flower_lite.sasrec import SASRecConfig
from flower_lite.threads import num_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--theta", type=float, default=0.995)
    parser.add_argument("--trajectories", default="catalog", help="GFlowNet trajectories (TrainConfig.trajectories)")
    parser.add_argument("--rows", type=int, default=8, help="test rows the KL is averaged over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="run once per seed and record each run's mean over seeds with its 95%% t-interval")
    parser.add_argument("--warm-start", action="store_true",
                        help="train SFT first and start the GFlowNet-only runs from its weights")
    parser.add_argument("--out", default=None, help="write the rows, the command and its environment as a JSON record")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.seeds is not None and len(set(args.seeds)) < 2:
        raise SystemExit(f"--seeds needs at least 2 different seeds for an interval, got {args.seeds}")
    with num_threads(1):  # the record states it; restored afterwards for a caller in the same process
        run(args)


def run(args: argparse.Namespace) -> None:
    """Every seed's comparison, printed, and the record of ``--out``."""
    t0 = time.perf_counter()
    tables = [fit_rows(args, seed) for seed in args.seeds or [args.seed]]
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        command = command_line("python results/target_fit.py", sys.argv[1:])
        if args.seeds:
            rows = seed_summary(tables, ("kl", "kl_reverse"), name="run")
            write_record(args.out, command, rows, t0, per_seed=dict(zip(map(str, args.seeds), tables)))
        else:
            write_record(args.out, command, tables[0], t0)


def fit_rows(args, seed: int) -> list[dict]:
    """The comparison of one seed: a row per run (``run``, ``kl``, ``kl_reverse``), printed as a table too."""
    sasrec = SASRecConfig(batch_size=256, patience=5, max_epochs=30, progress=False, num_threads=1, seed=seed)
    setup, new_model, _ = rq2.rq2_setup("default", seed=seed, sasrec_config=sasrec)
    base = TrainConfig(lr=args.lr, batch_size=16, max_steps=args.steps, eval_every=max(1, args.steps // 3),
                       warmup_steps=min(20, args.steps // 10), seed=seed, trajectories=args.trajectories)
    trains = {
        "SFT": replace(base, objective=Objective("sft")),
        "GFlowNet term only, DB": replace(base, objective=Objective("db")),
        "GFlowNet term only, SubTB": replace(base, objective=Objective("subtb")),
        f"Flower (θ={args.theta:g}, SubTB)": replace(base, objective=Objective("subtb", theta=args.theta)),
    }
    if args.warm_start:  # "initial weights" is then the SFT model
        sft = rq2.train_model(setup, new_model(), trains.pop("SFT")).model
        new_model = lambda: copy.deepcopy(sft)  # noqa: E731
        trains = {k: replace(v, warmup_steps=0) for k, v in trains.items() if k.startswith("GFlowNet")}
    fit = rq2.target_fit_comparison(setup, new_model, trains, rows=args.rows)
    start = ", from the SFT weights" if args.warm_start else ""
    print(f"| run ({args.steps} steps, lr {args.lr:g}, {args.trajectories} trajectories, seed {seed}{start}) "
          "| KL(P_u‖Q_u) | KL(Q_u‖P_u) |\n|---|---:|---:|", flush=True)
    for name, f in fit.items():
        print(f"| {name} | {f['kl']:.3f} | {f['kl_reverse']:.3f} |", flush=True)
    return [{"run": name, **f} for name, f in fit.items()]


if __name__ == "__main__":
    main()
