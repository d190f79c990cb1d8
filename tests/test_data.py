"""Catalog, the synthetic generator, the committed default catalogue and MovieLens-100k."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import flower_lite.data as data
from flower_lite.data import (
    Catalog,
    generate_synthetic,
    load_default_catalog,
    load_movielens_100k,
    make_synthetic_catalog,
)
from flower_lite.data.catalog import INTERACTIONS_FILE, ITEMS_FILE
from flower_lite.data.synthetic import main as synthetic_main


@pytest.fixture(scope="module")
def world():
    """The default synthetic catalogue and its latent variables."""
    return generate_synthetic()


def head_share(catalog: Catalog, fraction: float = 0.1) -> float:
    """Share of interactions that go to the top ``fraction`` of items by count."""
    counts = np.sort(catalog.counts())[::-1]
    return counts[: int(len(counts) * fraction)].sum() / counts.sum()


def small() -> Catalog:
    """Three items (two share a title), two users; rows given out of order."""
    rows = [[1, 2, 50], [0, 1, 20], [0, 0, 10], [1, 0, 40], [0, 2, 30]]
    return Catalog("small", ["Ab", "Ab", "Abc — é"], np.array(rows))


# --------------------------------------------------------------------------- Catalog


def test_catalog_accessors_on_a_small_example():
    cat = small()
    assert cat.interactions.tolist() == [[0, 0, 10], [0, 1, 20], [0, 2, 30], [1, 0, 40], [1, 2, 50]]
    assert (cat.num_items, cat.num_users) == (3, 2)
    assert cat.counts().tolist() == [2, 1, 2] and cat.counts().dtype == np.int64
    assert cat.histories() == [[0, 1, 2], [0, 2]]
    assert cat.title_to_items() == {"Ab": [0, 1], "Abc — é": [2]}
    assert cat.distinct_titles() == ["Ab", "Abc — é"]
    assert not cat.interactions.flags.writeable


def test_catalog_without_interactions_and_with_user_gaps():
    empty = Catalog("empty", ["A"], np.zeros((0, 3), dtype=np.int64))
    assert (empty.num_users, empty.histories(), empty.counts().tolist()) == (0, [], [0])
    assert Catalog("list", ["A"], []).interactions.shape == (0, 3)
    gaps = Catalog("gaps", ["A", "B"], [[2, 1, 5]])
    assert gaps.num_users == 3 and gaps.histories() == [[], [], [1]]


def test_catalog_ties_keep_the_given_order():
    cat = Catalog("ties", ["A", "B", "C"], [[0, 2, 7], [0, 0, 7], [0, 1, 3]])
    assert cat.histories() == [[1, 2, 0]]


@pytest.mark.parametrize(
    "titles, rows, message",
    [
        ([], [], "empty"),
        (["A", "  "], [], "item 1 is empty or whitespace-only"),
        (["A", ""], [], "item 1 is empty"),
        (["A\tB"], [], "tab or line break"),
        (["A"], [[0, 5, 1]], "unknown item id 5"),
        (["A"], [[-1, 0, 1]], "negative user id -1"),
        (["A"], [[0, -2, 1]], "negative item id -2"),
        (["A"], [[0, 0]], r"shape \[M, 3\]"),
    ],
)
def test_catalog_validation(titles, rows, message):
    with pytest.raises(ValueError, match=message):
        Catalog("bad", titles, np.array(rows, dtype=np.int64))


def test_save_load_roundtrip(tmp_path):
    cat = small()
    cat.save(tmp_path / "small")
    assert Catalog.load(tmp_path / "small") == cat
    empty = Catalog("empty", ["  padded title "], [])
    empty.save(tmp_path / "empty")
    assert Catalog.load(tmp_path / "empty") == empty


def test_load_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=ITEMS_FILE):
        Catalog.load(tmp_path)
    small().save(tmp_path)
    items, inter = tmp_path / ITEMS_FILE, tmp_path / INTERACTIONS_FILE
    good_items, good_inter = items.read_text(encoding="utf-8"), inter.read_text(encoding="utf-8")

    inter.unlink()
    with pytest.raises(FileNotFoundError, match=INTERACTIONS_FILE):
        Catalog.load(tmp_path)
    inter.write_text(good_inter + "0\tx\t3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{INTERACTIONS_FILE}, line 7"):
        Catalog.load(tmp_path)
    inter.write_text(good_inter + "0\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{INTERACTIONS_FILE}, line 7"):
        Catalog.load(tmp_path)
    inter.write_text("user\titem\ttime\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{INTERACTIONS_FILE}, line 1: expected header"):
        Catalog.load(tmp_path)

    inter.write_text(good_inter, encoding="utf-8")
    items.write_text(good_items.replace("1\tAb", "7\tAb"), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{ITEMS_FILE}, line 3: item id 7 out of order"):
        Catalog.load(tmp_path)
    items.write_text(good_items + "3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{ITEMS_FILE}, line 5"):
        Catalog.load(tmp_path)


# --------------------------------------------------------------------------- synthetic


def test_committed_default_equals_the_generator(tmp_path):
    assert data.DEFAULT_DIR.is_dir(), "data/default is missing from the repository"
    assert load_default_catalog() == make_synthetic_catalog()
    make_synthetic_catalog().save(tmp_path)
    for name in (ITEMS_FILE, INTERACTIONS_FILE):
        assert (tmp_path / name).read_bytes() == (data.DEFAULT_DIR / name).read_bytes(), name


def test_default_falls_back_to_the_generator(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEFAULT_DIR", tmp_path / "absent")
    assert load_default_catalog() == make_synthetic_catalog()


def test_default_numbers(world):
    cat, _ = world
    assert (cat.num_items, cat.num_users, len(cat.interactions)) == (300, 400, 4614)
    assert len(cat.distinct_titles()) == 298
    assert cat.counts().min() >= 1  # every item is seen
    assert 0.35 <= head_share(cat) <= 0.6  # long tail: top 10% of items get ~ half


def test_generator_is_deterministic_by_seed():
    kwargs = dict(n_items=80, n_users=60)
    assert make_synthetic_catalog(**kwargs, seed=3) == make_synthetic_catalog(**kwargs, seed=3)
    a, b = make_synthetic_catalog(**kwargs, seed=3), make_synthetic_catalog(**kwargs, seed=4)
    assert a.titles != b.titles and not np.array_equal(a.interactions, b.interactions)


@pytest.mark.parametrize("seed", [1, 2])
def test_other_seeds_have_a_long_tail_and_two_duplicates(seed):
    cat = make_synthetic_catalog(seed=seed)
    assert 0.35 <= head_share(cat) <= 0.6
    assert len(cat.titles) - len(cat.distinct_titles()) == 2


def test_titles_look_like_a_real_catalogue(world):
    cat, latents = world
    titles = set(cat.titles)
    duplicates = {t: ids for t, ids in cat.title_to_items().items() if len(ids) > 1}
    assert len(duplicates) == 2 and all(len(ids) == 2 for ids in duplicates.values())
    assert len(latents.series) >= 10
    for members in latents.series:
        base = cat.titles[members[0]]
        assert all(cat.titles[i].startswith(base) and cat.titles[i] != base for i in members[1:])
    assert any(t + " II" in titles for t in titles)
    assert any(t + ": The Return" in titles for t in titles)
    prefix_pairs = [(a, b) for a in titles for b in titles if a != b and b.startswith(a)]
    assert len(prefix_pairs) >= 20
    for char in "éüñ—":
        assert any(char in t for t in titles), char


def test_histories_are_time_ordered_and_long_enough(world):
    cat, _ = world
    users, items, times = cat.interactions.T
    same_user = users[1:] == users[:-1]
    assert (np.diff(times)[same_user] > 0).all()
    lengths = [len(h) for h in cat.histories()]
    assert min(lengths) >= 3 and 10 <= np.mean(lengths) <= 14
    assert all(len(set(h)) == len(h) for h in cat.histories())  # no repeats


def test_histories_have_learnable_sequential_structure(world):
    cat, latents = world
    genre = latents.item_genre
    pairs = [(a, b) for h in cat.histories() for a, b in zip(h, h[1:])]
    same_genre = np.mean([genre[a] == genre[b] for a, b in pairs])
    share = np.bincount(genre[cat.interactions[:, 1]]) / len(cat.interactions)
    assert same_genre > (share**2).sum() + 0.4  # ~0.76 versus ~0.17 from popularity alone
    follows = {a: b for s in latents.series for a, b in zip(s, s[1:])}
    continued = np.mean([follows[a] == b for a, b in pairs if a in follows])
    assert continued > 0.3  # a series is continued far more often than chance (~1/300)


def test_user_taste_shows_in_the_histories(world):
    cat, latents = world
    genre, taste = latents.item_genre, latents.user_taste
    favourite_share = [
        np.mean(genre[h] == taste[u].argmax()) for u, h in enumerate(cat.histories())
    ]
    assert np.mean(favourite_share) > 0.5  # 1/6 if taste were ignored


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="n_genres"):
        make_synthetic_catalog(n_genres=99)
    with pytest.raises(ValueError, match="mean_history"):
        make_synthetic_catalog(mean_history=1)
    with pytest.raises(ValueError, match="n_items"):
        make_synthetic_catalog(n_items=0)


def test_tiny_catalogue_still_works():
    cat = make_synthetic_catalog(n_items=5, n_users=3, n_genres=2, seed=7)
    assert cat.num_items == 5 and cat.counts().min() >= 1


def test_command_line_writes_a_catalogue(tmp_path, capsys):
    synthetic_main(["--out", str(tmp_path), "--n-items", "40", "--n-users", "30", "--seed", "5"])
    assert "wrote" in capsys.readouterr().out
    expected = make_synthetic_catalog(n_items=40, n_users=30, seed=5)
    assert Catalog.load(tmp_path, name="synthetic") == expected


# --------------------------------------------------------------------------- MovieLens


@pytest.fixture(scope="module")
def movielens(require):
    require.movielens()  # the recbole wheel (skips without it, fails under CI=true)
    imported_before = "recbole" in sys.modules
    cat = load_movielens_100k()
    return cat, imported_before


def test_movielens_100k_numbers(movielens):
    cat, imported_before = movielens
    assert cat.name == "ml-100k"
    assert (cat.num_items, cat.num_users, len(cat.interactions)) == (1682, 943, 100000)
    assert cat.titles[0] == "Toy Story (1995)" and cat.titles[266] == "unkonwn"
    assert len(cat.distinct_titles()) == 1664  # 18 titles name two movies each
    assert cat.title_to_items()["Chasing Amy (1997)"] == [245, 267]
    assert min(len(h) for h in cat.histories()) == 20
    assert (cat.interactions[0] == [0, 167, 874965478]).all()
    assert imported_before or "recbole" not in sys.modules  # files found without importing


def test_movielens_min_count(movielens):
    cat, _ = movielens
    kept = load_movielens_100k(min_count=5)
    assert kept.name == "ml-100k-min5"
    assert kept.num_items == int((cat.counts() >= 5).sum()) == 1349
    assert kept.counts().min() >= 5 and len(kept.interactions) == 99287
    with pytest.raises(ValueError, match="min_count"):
        load_movielens_100k(min_count=0)


def test_movielens_without_recbole_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps recbole"):
        load_movielens_100k()


def test_a_missing_requirement_skips_and_fails_under_ci(require, monkeypatch):
    """The rule of tests/conftest.py: a test whose requirement is missing skips, saying how to get it, and
    fails instead under CI=true; ``fail_in_ci`` lets a test check a fallback outside CI."""
    monkeypatch.delenv("CI", raising=False)
    require(True, "nothing")
    require.fail_in_ci("a PNG exporter")
    with pytest.raises(pytest.skip.Exception, match="missing MovieLens: pip install --no-deps recbole"):
        require(False, "MovieLens", "pip install --no-deps recbole")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing MovieLens: pip install --no-deps recbole .CI=true"):
        require(False, "MovieLens", "pip install --no-deps recbole")
    with pytest.raises(pytest.fail.Exception, match="missing a PNG exporter"):
        require.fail_in_ci("a PNG exporter")
    monkeypatch.setenv("FLOWER_LITE_DATA", "/nonexistent/shared/data")
    with pytest.raises(pytest.fail.Exception, match="shared data movies_rq1.*must sit beside the repository"):
        require.shared("movies_rq1")
