"""The colours and labels every figure of :mod:`flower_lite.viz` shares."""
from __future__ import annotations

import numpy as np
import torch

# Okabe & Ito (2008), "Color Universal Design"; black is kept for the target.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")
TARGET_COLOR = "#000000"
CONTINUOUS_SCALE = "cividis"
END_LABEL = "T (end)"  # the termination token T: plain text, so it renders in every font
OTHER_LABEL = "(other)"
LOG_KEYS = ("kl", "kl_reverse", "js", "tv")  # history keys drawn on a log axis when positive


def color(i: int) -> str:
    """The i-th category colour (black is kept for the target)."""
    return OKABE_ITO[i % (len(OKABE_ITO) - 1)]  # black is reserved for the target


def as_array(x) -> np.ndarray:
    """A float64 numpy array of ``x`` (a tensor, list or array)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)
