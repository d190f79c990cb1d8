"""Small work beside other work: ``flower-lite demo`` (and the notebooks) alone and beside a CPU-bound competitor.

    python bench/contention.py                 # the demo: alone, beside 1 busy process, beside a 2-thread torch job
    python bench/contention.py --notebooks     # also each notebook's quick-mode nbmake run, alone and beside 1 busy process
    python bench/contention.py --notebooks 04  # only the notebooks whose name starts with 04

Goal (learner issue): beside a CPU-bound competitor the demo takes at most 1.5x its time alone, and each notebook's
quick mode at most 4 minutes (2 minutes alone). The competitors: a pure-Python busy loop (one core, what a
second program on a laptop does) and a torch matmul loop on 2 threads (both cores, the harsh case). Small-tensor
work runs on one thread (``flower_lite.threads``), so it keeps one core instead of spin-waiting for two.
Wall times of whole processes, measured in one run; the last line is machine-readable.
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


def wall(cmd: list[str], env: dict | None = None) -> float:
    """Seconds of one run of ``cmd`` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def beside(competitor: list[str] | None, cmd: list[str], env: dict | None = None) -> float:
    """Seconds of ``cmd`` while ``competitor`` runs (None: alone)."""
    if competitor is None:
        return wall(cmd, env)
    rival = subprocess.Popen(competitor, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # let it reach full speed
        return wall(cmd, env)
    finally:
        rival.kill()
        rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="?", const="0", default=None, metavar="PREFIX",
                        help="also time each notebook's quick mode (about 20 minutes), or those whose name starts with PREFIX")
    args = parser.parse_args()
    cli = str(Path(sys.executable).parent / "flower-lite")
    out = tempfile.mkdtemp(prefix="flower_lite_bench_")
    demo = [cli, "demo", "--out", out]
    result = {"bench": "contention", "demo_alone_s": round(beside(None, demo), 1)}
    print(f"flower-lite demo alone: {result['demo_alone_s']:.1f} s", flush=True)
    for name, competitor in COMPETITORS.items():
        t = beside(competitor, demo)
        key = "demo_beside_" + name.split()[0]
        result[key + "_s"], result[key + "_ratio"] = round(t, 1), round(t / result["demo_alone_s"], 2)
        print(f"flower-lite demo beside a {name}: {t:.1f} s ({t / result['demo_alone_s']:.2f}x alone)", flush=True)
    if args.notebooks is not None:
        env = {"FLOWER_LITE_QUICK": "1"}
        result["notebooks"] = {}
        for nb in (nb for nb in NOTEBOOKS if nb.name.startswith(args.notebooks)):
            cmd = [sys.executable, "-m", "pytest", "-q", "--nbmake", str(nb.relative_to(ROOT)), "-p", "no:cacheprovider"]
            alone = beside(None, cmd, env)
            busy = beside(COMPETITORS["busy loop (1 core)"], cmd, env)
            result["notebooks"][nb.stem] = {"alone_s": round(alone, 1), "beside_s": round(busy, 1)}
            print(f"{nb.stem}: {alone:.0f} s alone, {busy:.0f} s beside a busy loop ({busy / alone:.2f}x)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
