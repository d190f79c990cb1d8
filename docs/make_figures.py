"""Regenerate the README's figures (docs/figures/*.png) from the library: ``python docs/make_figures.py``.

The figures are ``flower_lite.viz`` figures of the embedded default catalogue, fitted exactly as the
main job (``flower-lite demo``, ``flower_lite.experiments.demo``) fits it: SFT on a sample of 1000 titles, and
TB, DB and Flower on the exact flows, 300 steps each (about a minute on CPU).

PNG export is kaleido's, which drives a Chrome/Chromium: ``$BROWSER_PATH``, by default Debian's
``/usr/bin/chromium`` when it exists (``apt-get install chromium``). The script fails rather than write the
HTML that ``viz.save_png`` falls back to without a browser.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"
if not os.environ.get("BROWSER_PATH") and os.path.exists(DEFAULT_CHROMIUM):
    os.environ["BROWSER_PATH"] = DEFAULT_CHROMIUM  # read by kaleido (choreographer) when it starts Chromium

from flower_lite import viz  # noqa: E402
from flower_lite.experiments.demo import default_trie, demo_configs  # noqa: E402
from flower_lite.toy import compare_methods  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures"
MAX_BYTES = 300_000  # keep the repository small
WIDTH = 1000


def figures(steps: int, sample_size: int, seed: int) -> dict:
    """name -> plotly figure."""
    trie, tok, _ = default_trie()
    runs = compare_methods(trie, demo_configs(steps, seed), sample_size=sample_size, seed=seed, progress=False)
    target = trie.title_log_probs().exp().numpy()
    q = {name: run.policy.title_distribution()[0].numpy() for name, run in runs.items()}
    return {
        "trie_icicle": viz.trie_figure(trie, tok.token_text, max_depth=3, max_children=8,
                                       title="Title trie of the default catalogue: box size = flow F(s), "
                                             "colour = log r(a|s)"),
        "distributions": viz.distribution_figure(
            target, {"SFT": q["sft"], "Flower": q["subtb"]},
            title=f"Target P vs SFT and Flower (tabular policy, {steps} steps; SFT sees {sample_size} sampled titles)"),
        "training_curves": viz.training_curves_figure(
            {name: run.history for name, run in runs.items()}, keys=("kl", "tv"),
            title="Training curves: exact KL(P || Q) and total variation of the fitted title distribution"),
        "lorenz": viz.lorenz_figure({"target P": target, "SFT": q["sft"], "Flower": q["subtb"]},
                                    title="Exposure inequality: Lorenz curves of the title distributions"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: docs/figures)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sample-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.5, help="PNG pixels per layout pixel")
    args = parser.parse_args(argv)

    start = time.time()
    print(f"Chromium for kaleido: {os.environ.get('BROWSER_PATH') or '(kaleido searches itself)'}")
    for name, fig in figures(args.steps, args.sample_size, args.seed).items():
        fig.update_layout(width=WIDTH)
        path = viz.save_png(fig, args.out / f"{name}.png", scale=args.scale)
        if path.suffix != ".png":
            path.unlink(missing_ok=True)
            print(f"error: kaleido could not write {name}.png (no Chrome/Chromium? set BROWSER_PATH)", file=sys.stderr)
            return 1
        size = path.stat().st_size
        print(f"{path}: {size / 1024:.0f} KB")
        if size > MAX_BYTES:
            print(f"error: {path} is larger than {MAX_BYTES // 1000} KB; lower --scale", file=sys.stderr)
            return 1
    print(f"done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
