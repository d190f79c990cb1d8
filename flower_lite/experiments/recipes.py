"""Named training recipes (nanoGPT's ``config/*.py``): the settings each experiment starts from, plus overrides.

Torch-free, so the command line reads its defaults here without importing a model.
"""
from __future__ import annotations

from ..config import Objective, TrainConfig

FLOWER = Objective("subtb", theta=0.995)
"""Flower's objective for next-item recommendation: SubTB mixed with SFT at the paper's θ."""
RQ1_DEFAULT = FLOWER
"""The objective of ``flower-lite fit`` and :func:`rq1_config`: Flower's."""
RQ1_OBJECTIVES = {o.name: o for o in (Objective("sft"), FLOWER, Objective("subtb", theta=0.9), Objective("db"))}
"""The objectives notebook 03 compares, by name."""


def rq1_config(objective: Objective | str = RQ1_DEFAULT, steps: int = 200, **overrides) -> TrainConfig:
    """Settings of notebook 03 and ``flower-lite fit``: learning rate 3e-3 and batch 32 (the tiny model's, and
    LoRA's on a pretrained model's top layer), 4 evaluations, GFlowNet trajectories over the whole catalogue
    (``catalog``: exact flows make every title a valid off-policy trajectory). ``objective``: an
    :class:`~flower_lite.config.Objective` or a name in :data:`RQ1_OBJECTIVES`."""
    if isinstance(objective, str):
        if objective not in RQ1_OBJECTIVES:
            raise ValueError(f"unknown RQ1 objective {objective!r}: expected one of {list(RQ1_OBJECTIVES)}")
        objective = RQ1_OBJECTIVES[objective]
    base = dict(lr=3e-3, max_steps=steps, eval_every=max(1, steps // 4), batch_size=32, warmup_steps=10,
                trajectories="catalog" if objective.gfn else "offline")
    return TrainConfig(objective=objective, **{**base, **overrides})


def rq2_config(steps: int = 600, objective: Objective = FLOWER, **overrides) -> TrainConfig:
    """The training recipe of the trained RQ2 methods (the tiny model's): ``steps`` steps of 16 rows,
    learning rate 1e-2, a short warm-up, 6 evaluations, and the weights of the best validation loss kept
    (``select_best``; the test split is never looked at while training)."""
    base = dict(lr=1e-2, batch_size=16, max_steps=steps, eval_every=max(1, steps // 6),
                warmup_steps=min(20, steps // 10), select_best=True)
    return TrainConfig(objective=objective, **{**base, **overrides})


def rq2_lm_config(steps: int = 300, objective: Objective = FLOWER, **overrides) -> TrainConfig:
    """The RQ2 recipe of a pretrained LM on the per-row trunk (LoRA on its top layers): :func:`rq2_config` with
    learning rate 3e-3 (RQ1's LoRA rate on SmolLM2) and 300 steps of 16 rows; trajectories are the rows' own
    targets (``offline``), the only ones whose states are stored."""
    return rq2_config(steps, objective, **{"lr": 3e-3, "trajectories": "offline", **overrides})
