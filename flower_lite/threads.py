"""CPU threads that fit the work.

Small tensors (the tabular toy, the tiny model, SASRec, per-user flows of small catalogues) gain
nothing from several threads, and on a machine whose cores are busy with other work two OpenMP
threads spin-wait: the same step becomes 10-20 times slower. So small work runs on one thread unless
the user asks for more (``FLOWER_LITE_THREADS``, or an explicit ``n``); large models keep torch's default.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["THREADS_ENV", "SMALL_MODEL_PARAMETERS", "small_work_threads", "threads_for", "num_threads", "model_threads"]

THREADS_ENV = "FLOWER_LITE_THREADS"
"""Environment variable: torch CPU threads for small work (default 1)."""


def small_work_threads() -> int:
    """Threads for small-tensor work: ``FLOWER_LITE_THREADS`` if set (an integer >= 1), else 1."""
    value = os.environ.get(THREADS_ENV, "1")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a whole number of threads >= 1") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a whole number of threads >= 1")
    return n


SMALL_MODEL_PARAMETERS = 20_000_000
"""Below this many parameters a model's tensors are small work (the tiny model has 0.2M, SmolLM2 135M)."""


def threads_for(model) -> int | None:
    """Threads for running ``model``: :func:`small_work_threads` for a small model, None (torch's own
    default, every core) for a model of at least :data:`SMALL_MODEL_PARAMETERS` parameters."""
    count = sum(p.numel() for p in model.parameters())
    return small_work_threads() if count < SMALL_MODEL_PARAMETERS else None


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` (None: unchanged), then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_threads(fn: Callable) -> Callable:
    """Decorate ``fn(model, ...)`` to run with the threads that fit ``model`` (:func:`threads_for`)."""
    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        with num_threads(threads_for(model)):
            return fn(model, *args, **kwargs)
    return run

