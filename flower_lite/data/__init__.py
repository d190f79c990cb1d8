"""Catalogues: the :class:`Catalog` type, the synthetic generator and MovieLens-100k.

``load_default_catalog()`` returns the committed synthetic catalogue in ``data/default``
(written by ``python -m flower_lite.data.synthetic --out data/default``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .catalog import Catalog
from .movielens import load_movielens_100k

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "data" / "default"
_SYNTHETIC_NAMES = ("SyntheticLatents", "generate_synthetic", "make_synthetic_catalog")

__all__ = ["Catalog", "DEFAULT_DIR", "load_default_catalog", "load_movielens_100k",
           *_SYNTHETIC_NAMES]


def __getattr__(name: str) -> Any:
    """Import the generator on first use, so ``python -m flower_lite.data.synthetic`` runs
    without importing its own module twice (and without runpy's warning about it)."""
    if name in _SYNTHETIC_NAMES:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_default_catalog() -> Catalog:
    """The default synthetic catalogue, ``make_synthetic_catalog()`` with default arguments.

    Read from the repository's ``data/default`` folder; regenerated when the package is
    installed without that folder. Both give the same catalogue (a test checks it).
    """
    if DEFAULT_DIR.is_dir():
        return Catalog.load(DEFAULT_DIR, name="synthetic")
    from .synthetic import make_synthetic_catalog

    return make_synthetic_catalog()


# Next-item data: splits of the next-item task and the BIGRec / Amazon loaders.
from .bigrec import load_amazon, load_bigrec, shared_amazon_dir  # noqa: E402
from .splits import NextItemData, Split, next_item_data_from_catalog  # noqa: E402

__all__ += ["NextItemData", "Split", "next_item_data_from_catalog", "load_bigrec",
            "load_amazon", "shared_amazon_dir"]
