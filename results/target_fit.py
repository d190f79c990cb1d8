"""Does the GFlowNet term move the policy toward Flower's per-user target? (results/README.md)

Trains the tiny offline policy on the synthetic default data (``baselines.rq2_setup``) with SFT, the
GFlowNet term alone (detailed balance with the exact per-user flows, and Flower's sub-trajectory
balance), and Flower's mix, each GFlowNet run repeated with a reversed-popularity reward as control,
and prints KL(P_u || Q_u) / KL(Q_u || P_u) against the true target on test rows
(``baselines.target_fit_comparison``)::

    python results/target_fit.py --steps 300 --seed 0 [--warm-start]

``--warm-start`` trains SFT first and starts the GFlowNet-only runs from its weights.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from flower_lite import baselines
from flower_lite import recommend as rec
from flower_lite.sasrec import SASRecConfig
from flower_lite.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--theta", type=float, default=0.995)
    parser.add_argument("--trajectories", default="catalog", help="GFlowNet trajectories (TrainConfig.trajectories)")
    parser.add_argument("--rows", type=int, default=8, help="test rows the KL is averaged over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-start", action="store_true",
                        help="train SFT first and start the GFlowNet-only runs from its weights")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sasrec = SASRecConfig(batch_size=256, patience=5, max_epochs=30, progress=False, num_threads=1, seed=args.seed)
    setup, new_model, _ = baselines.rq2_setup("default", seed=args.seed, sasrec_config=sasrec)
    base = TrainConfig(lr=args.lr, batch_size=16, max_steps=args.steps, eval_every=max(1, args.steps // 3),
                       warmup_steps=min(20, args.steps // 10), theta=args.theta, seed=args.seed, save_every=10**9,
                       trajectories=args.trajectories)
    trains = {
        "SFT": replace(base, method="sft"),
        "GFlowNet term only, DB": replace(base, method="gfn", loss="db"),
        "GFlowNet term only, SubTB": replace(base, method="gfn", loss="subtb"),
        f"Flower (θ={args.theta:g}, SubTB)": replace(base, method="flower"),
    }
    if args.warm_start:  # "initial weights" is then the SFT model
        sft = rec.train_model(setup, new_model(), trains.pop("SFT")).model
        new_model = lambda: rec.copy_model(sft)  # noqa: E731
        trains = {k: replace(v, warmup_steps=0) for k, v in trains.items() if k.startswith("GFlowNet")}
    fit = baselines.target_fit_comparison(setup, new_model, trains, rows=args.rows)
    start = ", from the SFT weights" if args.warm_start else ""
    print(f"| run ({args.steps} steps, lr {args.lr:g}, {args.trajectories} trajectories, seed {args.seed}{start}) "
          "| KL(P_u‖Q_u) | KL(Q_u‖P_u) |\n|---|---:|---:|")
    for name, f in fit.items():
        print(f"| {name} | {f['kl']:.3f} | {f['kl_reverse']:.3f} |")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
