"""Small work beside other work: ``flower-lite demo`` (and the notebooks) alone and beside a CPU-bound competitor.

    python bench/contention.py                 # the demo: alone, beside 1 busy process, beside a 2-thread torch job
    python bench/contention.py --notebooks     # also each notebook's quick-mode nbmake run, alone and beside 1 busy process
    python bench/contention.py --notebooks 04  # only the notebooks whose name starts with 04
    python bench/contention.py --smoke         # seconds: times ``python -c pass`` instead of the demo

Goal (learner issue): beside a CPU-bound competitor the demo takes at most 1.5x its time alone, and each notebook's
quick mode at most 4 minutes (2 minutes alone). The competitors: a pure-Python busy loop (one core, what a
second program on a laptop does) and a torch matmul loop on 2 threads (both cores, the harsh case). Small-tensor
work runs on one thread (``flower_lite.threads``), so it keeps one core instead of spin-waiting for two.
Wall times of whole processes, measured in one run; ratios are each time beside a competitor / the time alone
(``beside_busy_ratio``, ``beside_torch_ratio``, and per notebook ``beside_ratio``). The last line is
machine-readable JSON (``command`` names what was timed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITORS = {
    "busy loop (1 core)": [sys.executable, "-c", "while True: pass"],
    "torch matmul (2 threads)": [sys.executable, "-c", "import torch; torch.set_num_threads(2); a = torch.randn(1500, 1500)\n"
                                 "while True: a @ a"],
}
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
TRIVIAL = [sys.executable, "-c", "pass"]  # --smoke: what is timed instead of the demo


def wall(cmd: list[str], env: dict | None = None) -> float:
    """Seconds of one run of ``cmd`` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def beside(competitor: list[str] | None, cmd: list[str], env: dict | None = None, settle_s: float = 1.0) -> float:
    """Seconds of ``cmd`` while ``competitor`` runs (None: alone), started ``settle_s`` after the competitor."""
    if competitor is None:
        return wall(cmd, env)
    rival = subprocess.Popen(competitor, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle_s)  # let it reach full speed
        return wall(cmd, env)
    finally:
        rival.kill()
        rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="?", const="0", default=None, metavar="PREFIX",
                        help="also time each notebook's quick mode (about 20 minutes), or those whose name starts with PREFIX")
    parser.add_argument("--smoke", action="store_true", help="time a trivial command instead of the demo: runs in seconds")
    args = parser.parse_args()
    if args.smoke:
        label, cmd, settle = "python -c pass", TRIVIAL, 0.2
    else:
        label, cmd, settle = "flower-lite demo", [str(Path(sys.executable).parent / "flower-lite"), "demo", "--out",
                                                  tempfile.mkdtemp(prefix="flower_lite_bench_")], 1.0
    alone = beside(None, cmd)
    result = {"bench": "contention", "command": label, "alone_s": round(alone, 2)}
    print(f"{label} alone: {alone:.2f} s", flush=True)
    for name, competitor in COMPETITORS.items():
        t = beside(competitor, cmd, settle_s=settle)
        key = "beside_" + name.split()[0]
        result[key + "_s"], result[key + "_ratio"] = round(t, 2), round(t / alone, 3)
        print(f"{label} beside a {name}: {t:.2f} s ({t / alone:.2f}x alone)", flush=True)
    if args.notebooks is not None:
        env = {"FLOWER_LITE_QUICK": "1"}
        result["notebooks"] = {}
        for nb in (nb for nb in NOTEBOOKS if nb.name.startswith(args.notebooks)):
            run_nb = [sys.executable, "-m", "pytest", "-q", "--nbmake", str(nb.relative_to(ROOT)), "-p", "no:cacheprovider"]
            nb_alone = beside(None, run_nb, env)
            busy = beside(COMPETITORS["busy loop (1 core)"], run_nb, env)
            result["notebooks"][nb.stem] = {"alone_s": round(nb_alone, 1), "beside_s": round(busy, 1),
                                            "beside_ratio": round(busy / nb_alone, 3)}
            print(f"{nb.stem}: {nb_alone:.0f} s alone, {busy:.0f} s beside a busy loop ({busy / nb_alone:.2f}x)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
