"""A small synthetic catalogue that behaves like a real one (for tests, toys and notebooks).

Generative story (all randomness from ``numpy.random.default_rng(seed)``):

1. Items. Each item has a genre. Titles are drawn from per-genre word pools
   ("Midnight Harbor", "The Crown of Zürich"). About one base title in eight starts a
   *series* whose members extend the base title: ``X``, ``X II``, ``X: The Return``, ``X 3``,
   ``X — The Final Chapter``; so some titles are exact string prefixes of others. Exactly
   ``N_DUPLICATES`` titles are reused by a second item (a remake: two item ids, one title).
2. Popularity. Items get Zipf weights ``w_i = rank_i^(-zipf_a)`` over a random ranking.
3. Users. User ``u`` has a taste ``theta_u ~ Dirichlet(0.3)`` over genres and a history of
   length ``L_u >= 3`` (geometric, mean ``mean_history``), without repeated items. The
   first item is drawn with probability proportional to ``w_i * theta_u[genre_i]``. Then,
   step by step: with probability ``P_SERIES`` continue the current series (its next unseen
   member); otherwise with probability ``P_STAY`` stay in the current genre (``∝ w_i``
   within it); otherwise draw again ``∝ w_i * theta_u[genre_i]``.
4. Coverage. Each item no user drew is inserted into one history, right after an item of
   its genre, so that every item has at least one interaction.
5. Timestamps increase within each user's history (gaps of one minute to a week).

``python -m flower_lite.data.synthetic --out data/default`` writes the committed default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import Catalog

# Per-genre word pools: (genre name, first words, nouns). A few words carry non-ASCII letters.
GENRE_POOLS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("space", ("Star", "Galactic", "Orbital", "Cosmic", "Solar", "Dark", "Lunar", "Nova",
               "Stellar", "Quantum", "Void", "Nebula"),
     ("Quest", "Frontier", "Odyssey", "Station", "Drift", "Empire", "Signal", "Horizon",
      "Colony", "Voyager", "Eclipse", "Protocol")),
    ("mystery", ("Midnight", "Silent", "Hidden", "Crimson", "Foggy", "Secret", "Last",
                 "Broken", "Velvet", "Hollow", "Quiet", "Grey"),
     ("Harbor", "Witness", "Alibi", "Letter", "Manor", "Cipher", "Verdict", "Shadow",
      "Clue", "Affair", "Detective", "Inquest")),
    ("romance", ("Sweet", "Summer", "Golden", "Tender", "Paris", "Autumn", "Endless",
                 "Señorita", "Wild", "Little", "Café", "Moonlit"),
     ("Kiss", "Promise", "Garden", "Waltz", "Letters", "Heart", "Wedding", "Serenade",
      "Rose", "Vow", "Embrace", "Rendezvous")),
    ("fantasy", ("Dragon", "Elven", "Iron", "Enchanted", "Ancient", "Shadow", "Crystal",
                 "Runic", "Frozen", "Emerald", "Cursed", "Über"),
     ("Crown", "Sword", "Realm", "Throne", "Forest", "Prophecy", "Tower", "Spell",
      "Kingdom", "Amulet", "Oath", "Gate")),
    ("comedy", ("Crazy", "Lucky", "Happy", "Big", "Silly", "Super", "Awkward", "Funky",
                "Jolly", "Noisy", "Fancy", "Wacky"),
     ("Weekend", "Roommates", "Vacation", "Party", "Neighbors", "Heist", "Holiday",
      "Picnic", "Road Trip", "Family", "Office", "Wedding Crashers")),
    ("western", ("Dusty", "Lone", "Rusty", "Desert", "Outlaw", "High", "Red", "Silver",
                 "Thunder", "Black", "Río", "El Niño"),
     ("Canyon", "Ranger", "Trail", "Saloon", "Sheriff", "Mesa", "Rider", "Bandit",
      "Gulch", "Stallion", "Frontier Town", "Posse")),
    ("horror", ("Bloody", "Haunted", "Pale", "Rotten", "Howling", "Grim", "Wicked",
                "Creeping", "Night", "Hungry", "Dead", "Sleepless"),
     ("House", "Asylum", "Ritual", "Cellar", "Curse", "Swamp", "Doll", "Crypt", "Orphanage",
      "Harvest", "Lullaby", "Visitor")),
    ("documentary", ("Inside", "Beyond", "Planet", "Wild", "Hidden", "Frozen", "Deep",
                     "Urban", "Lost", "Modern", "Ancient", "Blue"),
     ("Oceans", "Cities", "Kitchens", "Rivers", "Machines", "Tribes", "Islands", "Markets",
      "Mountains", "Skies", "Deserts", "Forests")),
)
PLACES = ("Zürich", "Montréal", "São Paulo", "Kraków", "Avalon", "Tokyo", "the North",
          "Old Town", "Nowhere", "Málaga", "the Lake", "Reykjavík")
SEQUEL_SUFFIXES = (" II", ": The Return", " 3", " — The Final Chapter")
N_DUPLICATES = 2          # titles that two item ids share
P_NEW_SERIES = 0.125      # chance that a new base title starts a series
P_SERIES = 0.5            # chance to continue the current series at the next step
P_STAY = 0.6              # chance to stay in the current genre otherwise
TASTE_CONCENTRATION = 0.3
MIN_HISTORY = 3


@dataclass(frozen=True)
class SyntheticLatents:
    """The hidden variables behind a synthetic catalogue (for checks and teaching).

    Attributes:
        genre_names: the ``G`` genre names.
        item_genre: int64 ``[N]``, the genre of each item.
        item_weight: float64 ``[N]``, the Zipf popularity weight ``w_i`` (sums to 1).
        series: tuples of item ids, one per series, in series order (base title first).
        user_taste: float64 ``[U, G]``, each user's taste ``theta_u`` over genres.
    """

    genre_names: tuple[str, ...]
    item_genre: np.ndarray
    item_weight: np.ndarray
    series: tuple[tuple[int, ...], ...]
    user_taste: np.ndarray


def generate_synthetic(
    n_items: int = 300,
    n_users: int = 400,
    n_genres: int = 6,
    mean_history: float = 12,
    zipf_a: float = 1.1,
    seed: int = 0,
) -> tuple[Catalog, SyntheticLatents]:
    """Sample a synthetic catalogue and return it with its latent variables (module docstring).

    Raises:
        ValueError: for sizes below 1, ``n_genres`` above ``len(GENRE_POOLS)``,
            ``mean_history`` below ``MIN_HISTORY``, or more titles than the pools can make.
    """
    if n_items < 1 or n_users < 1:
        raise ValueError(f"need n_items >= 1 and n_users >= 1, got {n_items}, {n_users}")
    if not 1 <= n_genres <= len(GENRE_POOLS):
        raise ValueError(f"n_genres must be in 1..{len(GENRE_POOLS)}, got {n_genres}")
    if mean_history < MIN_HISTORY:
        raise ValueError(f"mean_history must be >= {MIN_HISTORY}, got {mean_history}")
    rng = np.random.default_rng(seed)
    titles, genre, series = _make_titles(rng, n_items, n_genres)
    ranks = rng.permutation(n_items) + 1
    weight = ranks.astype(np.float64) ** -zipf_a
    weight /= weight.sum()
    taste = rng.dirichlet(np.full(n_genres, TASTE_CONCENTRATION), size=n_users)
    next_in_series = np.full(n_items, -1)
    for members in series:
        next_in_series[list(members[:-1])] = members[1:]
    histories = [
        _sample_history(rng, weight * taste[u][genre], weight, genre, next_in_series,
                        _history_length(rng, mean_history, n_items))
        for u in range(n_users)
    ]
    _cover_unseen_items(rng, histories, genre)
    rows = []
    for u, history in enumerate(histories):
        gaps = rng.integers(60, 7 * 86400, size=len(history))
        start = 1_600_000_000 + int(rng.integers(0, 365 * 86400))
        rows += [(u, i, t) for i, t in zip(history, (start + np.cumsum(gaps)).tolist())]
    latents = SyntheticLatents(
        genre_names=tuple(pool[0] for pool in GENRE_POOLS[:n_genres]),
        item_genre=genre, item_weight=weight, series=series, user_taste=taste,
    )
    return Catalog("synthetic", titles, np.array(rows, dtype=np.int64)), latents


def make_synthetic_catalog(
    n_items: int = 300,
    n_users: int = 400,
    n_genres: int = 6,
    mean_history: float = 12,
    zipf_a: float = 1.1,
    seed: int = 0,
) -> Catalog:
    """The synthetic :class:`Catalog` of :func:`generate_synthetic` (same arguments)."""
    return generate_synthetic(n_items, n_users, n_genres, mean_history, zipf_a, seed)[0]


def _make_titles(
    rng: np.random.Generator, n_items: int, n_genres: int
) -> tuple[list[str], np.ndarray, tuple[tuple[int, ...], ...]]:
    """Titles ``[N]``, genres int64 ``[N]`` and series (tuples of item ids) of the items.

    Item ids are shuffled at the end, so neither series nor remakes sit at telling ids.
    """
    titles: list[str] = []
    genres: list[int] = []
    series: list[tuple[int, ...]] = []
    used: set[str] = set()
    n_unique = n_items - min(N_DUPLICATES, n_items // 2)
    while len(titles) < n_unique:
        g = int(rng.integers(n_genres))
        base = _new_base_title(rng, g, used)
        size = 1
        if rng.random() < P_NEW_SERIES:
            size = min(int(rng.integers(2, len(SEQUEL_SUFFIXES) + 2)), n_unique - len(titles))
        members = [base] + [base + suffix for suffix in SEQUEL_SUFFIXES[: size - 1]]
        if size > 1:
            series.append(tuple(range(len(titles), len(titles) + size)))
        used.update(members)
        titles += members
        genres += [g] * size
    in_series = {i for members in series for i in members}
    singles = [i for i in range(len(titles)) if i not in in_series]
    if len(singles) < n_items - n_unique:  # tiny catalogues: remake any title
        singles = list(range(len(titles)))
    for i in rng.choice(singles, size=n_items - n_unique, replace=False).tolist():
        titles.append(titles[i])  # a remake: same title, new id, any genre
        genres.append(int(rng.integers(n_genres)))
    order = rng.permutation(n_items)  # new id k is old item order[k]
    new_id = np.argsort(order)
    return (
        [titles[j] for j in order],
        np.array(genres, dtype=np.int64)[order],
        tuple(tuple(new_id[list(members)].tolist()) for members in series),
    )


def _new_base_title(rng: np.random.Generator, genre: int, used: set[str]) -> str:
    """A base title of ``genre`` not in ``used`` and not extended by a used title."""
    _, firsts, nouns = GENRE_POOLS[genre]
    for _ in range(1000):
        first, noun, place = (pool[rng.integers(len(pool))] for pool in (firsts, nouns, PLACES))
        title = f"{first} {noun}" if rng.random() < 0.75 else f"The {noun} of {place}"
        if not any(t.startswith(title) or title.startswith(t) for t in used):
            return title
    raise ValueError("the word pools ran out of titles: ask for fewer items or more genres")


def _history_length(rng: np.random.Generator, mean: float, n_items: int) -> int:
    """``L_u = MIN_HISTORY - 1 + Geometric(p)`` with mean ``mean``, capped at ``n_items``."""
    p = 1.0 / (mean - MIN_HISTORY + 1)
    return min(MIN_HISTORY - 1 + int(rng.geometric(p)), n_items)


def _sample_history(
    rng: np.random.Generator,
    first_weight: np.ndarray,
    weight: np.ndarray,
    genre: np.ndarray,
    next_in_series: np.ndarray,
    length: int,
) -> list[int]:
    """One user's time-ordered history (step 3 of the module docstring), no repeats.

    ``first_weight`` is ``w * theta_u[genre]`` ``[N]``; ``weight`` is ``w`` ``[N]``.
    """
    seen = np.zeros(len(weight), dtype=bool)
    history: list[int] = []
    while len(history) < length:
        current = history[-1] if history else -1
        follow = next_in_series[current] if history else -1
        if follow >= 0 and not seen[follow] and rng.random() < P_SERIES:
            item = int(follow)
        else:
            p = first_weight
            if history and rng.random() < P_STAY:
                p = weight * (genre == genre[current])
            p = np.where(seen, 0.0, p)
            if p.sum() == 0:  # the genre is exhausted: fall back to taste
                p = np.where(seen, 0.0, first_weight + weight * 1e-9)
            item = int(rng.choice(len(p), p=p / p.sum()))
        seen[item] = True
        history.append(item)
    return history


def _cover_unseen_items(
    rng: np.random.Generator, histories: list[list[int]], genre: np.ndarray
) -> None:
    """Insert every never-drawn item into one history, after an item of the same genre."""
    counts = np.bincount([i for h in histories for i in h], minlength=len(genre))
    for item in np.flatnonzero(counts == 0).tolist():
        spots = [(u, k) for u, h in enumerate(histories) for k, i in enumerate(h)
                 if genre[i] == genre[item]]
        if not spots:
            spots = [(u, len(h) - 1) for u, h in enumerate(histories)]
        u, k = spots[int(rng.integers(len(spots)))]
        histories[u].insert(k + 1, item)


def main(argv: list[str] | None = None) -> None:
    """Command line: write a synthetic catalogue (``items.tsv``, ``interactions.tsv``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n-items", type=int, default=300)
    parser.add_argument("--n-users", type=int, default=400)
    parser.add_argument("--n-genres", type=int, default=6)
    parser.add_argument("--mean-history", type=float, default=12)
    parser.add_argument("--zipf-a", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    catalog = make_synthetic_catalog(args.n_items, args.n_users, args.n_genres,
                                     args.mean_history, args.zipf_a, args.seed)
    catalog.save(args.out)
    print(f"wrote {catalog!r} to {args.out}")


if __name__ == "__main__":
    main()
