"""BIGRec reader: a quirky hand-made folder (parsing, every error) and the shared Amazon data
(the published counts of ../shared/data/README.md), plus the next-item split helpers."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from flower_lite.data import load_default_catalog
from flower_lite.data.bigrec import (
    COLUMNS,
    DATA_ENV,
    load_amazon,
    load_bigrec,
    read_items,
    shared_amazon_dir,
    shared_data_dir,
)
from flower_lite.data.catalog import ITEMS_FILE
from flower_lite.data.splits import (
    NextItemData,
    Sample,
    Split,
    chronological_split,
    next_item_data_from_catalog,
    pad_histories,
    sliding_window_samples,
)
from flower_lite.metrics import group_unfairness, popularity_group_ids

# ------------------------------------------------------------------ a quirky tiny folder

QUIRKY = [
    "Plain Title",
    "Tom, Jerry, and Friends",                 # commas
    "Don't Explain",                           # apostrophe: repr uses double quotes
    'The "Best" Of',                           # double quotes
    'Disco "Fever" Collector\'s Edition',      # both: repr escapes the apostrophe
    "Earth A.D.\\Die Die My Darling",          # a backslash: repr doubles it
    "Café Déjà Vu",                            # non-ASCII
    "Plain Title",                             # a duplicate title (item 7 = item 0's title)
]
ROWS = {  # split -> (history, target, user, timestamp)
    "train": [([0], 1, "", ""), ([0, 1], 2, "", ""), ([3], 4, "", ""),
              ([0, 1, 2], 5, "", ""), ([5, 6, 7, 4, 3, 2, 1, 0, 1, 2], 3, "", "")],
    "valid": [([4, 5], 6, "A1", "100"), ([2], 7, "B2", "200")],
    "test": [([4, 5, 6], 7, "A1", "300"), ([7, 7], 0, "C3", "400")],
}


def write_items(folder: Path, titles: list[str]) -> None:
    lines = ["item_id\ttitle"] + [f"{i}\t{t}" for i, t in enumerate(titles)]
    (folder / "items.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def bigrec_row(titles, hist, tgt, user="", ts="") -> list:
    return [user, "", "", str(hist), tgt, str([titles[i] for i in hist]), titles[tgt],
            "", "", "", ts]


def write_split(path: Path, rows: list[list], header=COLUMNS) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)  # default dialect: CRLF line ends, minimal quoting
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    """A BIGRec folder in the shared files' format: train gzipped, valid/test plain."""
    write_items(tmp_path, QUIRKY)
    for split, rows in ROWS.items():
        name = f"{split}.csv.gz" if split == "train" else f"{split}.csv"
        write_split(tmp_path / name, [bigrec_row(QUIRKY, *r) for r in rows])
    return tmp_path


def test_quirky_folder_round_trip(quirky: Path) -> None:
    raw = gzip.decompress((quirky / "train.csv.gz").read_bytes()).decode("utf-8")
    assert raw.count("\r\n") == 6  # CRLF line ends: header + 5 rows
    assert '""Don\'t Explain""' in raw  # repr double-quotes it, csv doubles the quotes
    assert "Collector\\'s Edition'" in raw  # ' and " in one title: escaped apostrophe
    assert "Earth A.D.\\\\Die" in raw  # the backslash doubled by repr
    data = load_bigrec(quirky)
    assert data.name == quirky.name and data.titles == QUIRKY
    for split, rows in ROWS.items():
        s = getattr(data, split)
        assert s.history == [r[0] for r in rows]
        assert s.target.tolist() == [r[1] for r in rows]
    assert data.train.user.tolist() == [-1] * 5 and data.train.timestamp.tolist() == [-1] * 5
    assert data.valid.user.tolist() == [0, 1] and data.test.user.tolist() == [0, 2]  # shared
    assert data.test.timestamp.tolist() == [300, 400]
    assert data.train_history_counts().tolist() == [4, 4, 3, 2, 1, 1, 1, 1]
    assert data.train_target_counts().tolist() == [0, 1, 1, 1, 1, 1, 0, 0]
    # title-level counts pool the duplicate title (items 0 and 7), first-appearance order
    assert list(data.title_history_counts().items()) == [
        ("Plain Title", 5), ("Tom, Jerry, and Friends", 4), ('The "Best" Of', 2),
        ("Don't Explain", 3), ("Earth A.D.\\Die Die My Darling", 1), ("Café Déjà Vu", 1),
        ('Disco "Fever" Collector\'s Edition', 1)]
    assert load_bigrec(quirky, max_rows=1).valid.target.tolist() == [6]


def test_other_list_spellings_parse_with_literal_eval(tmp_path: Path) -> None:
    """JSON-style double quotes and odd spacing are not the writer's spelling but are valid
    Python literals: they go through ast.literal_eval and must agree with items.tsv."""
    write_items(tmp_path, QUIRKY)
    row = bigrec_row(QUIRKY, [1, 3], 2)
    row[3] = "[ 1 ,3 ]"
    row[5] = '["Tom, Jerry, and Friends", \'The "Best" Of\']'
    for split in ("train", "valid", "test"):
        write_split(tmp_path / f"{split}.csv", [row])
    data = load_bigrec(tmp_path)
    assert data.test.history == [[1, 3]]


def test_minimal_columns_are_enough(tmp_path: Path) -> None:
    write_items(tmp_path, QUIRKY)
    for split in ("train", "valid", "test"):
        write_split(tmp_path / f"{split}.csv", [["[0, 1]", "2"]],
                    header=("history_item_id", "item_id"))
    data = load_bigrec(tmp_path, name="mini")
    assert data.name == "mini" and data.valid.history == [[0, 1]]


def _corrupt(folder: Path, split: str, row: list, header=COLUMNS) -> None:
    """Replace ``split`` by a valid first row followed by ``row`` (data row 2)."""
    for f in folder.glob(f"{split}.csv*"):
        f.unlink()
    write_split(folder / f"{split}.csv", [bigrec_row(QUIRKY, [0], 1), row], header)


@pytest.mark.parametrize("bad_row, message", [
    (bigrec_row(QUIRKY + ["x"], [8], 1), r"row 2: item id 8 is outside the catalogue 0\.\.7"),
    (bigrec_row(QUIRKY + ["x"], [0], 8), r"row 2: item id 8 is outside"),
    (["", "", "", "[-1]", "1", "", "", "", "", "", ""], r"row 2: item id -1 is outside"),
    (["", "", "", "[0, 1]", "2", "['Plain Title', 'Tom, Jerry & Friends']", "Don't Explain",
      "", "", "", ""], r"row 2: history title 1 'Tom, Jerry & Friends' is not the items\.tsv"),
    (["", "", "", "[0]", "2", "['Plain Title']", "Dont Explain", "", "", "", ""],
     r"row 2: item_title 'Dont Explain' is not the items\.tsv title of item 2"),
    (["", "", "", "[0, 1]", "2", "['Plain Title']", "Don't Explain", "", "", "", ""],
     r"row 2: history_item_title has 1 titles but history_item_id has 2"),
    (["", "", "", "[0]", "2", "__import__('os').getcwd()", "Don't Explain", "", "", "", ""],
     r"row 2: history_item_title is not a Python list literal"),
    (["", "", "", "[0]", "2", "'Plain Title'", "Don't Explain", "", "", "", ""],
     r"row 2: history_item_title is not a list"),
    (["", "", "", "[0, 'a']", "2", "", "", "", "", "", ""], r"row 2: history_item_id"),
    (["", "", "", "[]", "2", "[]", "Don't Explain", "", "", "", ""], r"row 2: empty history"),
    (["", "", "", "[0]", "two", "", "", "", "", "", ""], r"row 2: item_id 'two'"),
    (["", "", "", "[0]", "2", "['Plain Title']", "Don't Explain", "", "", "", "noon"],
     r"row 2: timestamp 'noon'"),
    (["", "[0]", "2"], r"row 2 \(line 3\): 3 fields, expected 11"),
])
def test_bad_rows_name_file_and_row(quirky: Path, bad_row: list, message: str) -> None:
    _corrupt(quirky, "valid", bad_row)
    with pytest.raises(ValueError, match=message) as info:
        load_bigrec(quirky)
    assert str(quirky / "valid.csv") in str(info.value)


def test_missing_files_and_bad_headers(quirky: Path, tmp_path_factory) -> None:
    (quirky / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.csv") as info:
        load_bigrec(quirky)
    assert str(quirky / "test.csv") in str(info.value)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match=r"items\.tsv"):
        load_bigrec(empty)
    write_items(empty, ["A", "B"])
    write_split(empty / "train.csv", [["1", "[0]"]], header=("item_id", "history"))
    write_split(empty / "valid.csv", [])
    write_split(empty / "test.csv", [])
    with pytest.raises(ValueError, match=r"train\.csv: header lacks column\(s\) history_item_id"):
        load_bigrec(empty)
    (empty / "train.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty file"):
        load_bigrec(empty)
    (empty / "items.tsv").write_text("id\ttitle\n0\tA\n")
    with pytest.raises(ValueError, match=r"items\.tsv, line 1: expected header"):
        read_items(empty / "items.tsv")
    (empty / "items.tsv").write_text("item_id\ttitle\n1\tA\n")
    with pytest.raises(ValueError, match=r"line 2: item id 1 out of order"):
        read_items(empty / "items.tsv")


def test_load_amazon_with_a_root(quirky: Path, tmp_path_factory) -> None:
    root = quirky.parent
    data = load_amazon(quirky.name, root=root)
    assert data.name == quirky.name and len(data.train) == 5
    with pytest.raises(FileNotFoundError, match="no items.tsv for 'Nope'"):
        load_amazon("Nope", root=tmp_path_factory.mktemp("nothing"))


def test_data_env_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert shared_amazon_dir("Video_Games") is None
    with pytest.raises(FileNotFoundError, match=DATA_ENV):
        load_amazon("Video_Games")
    folder = tmp_path / "amazon" / "Video_Games"
    folder.mkdir(parents=True)
    write_items(folder, ["A"])
    assert shared_amazon_dir("Video_Games") == folder
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    assert shared_data_dir() is None


# ------------------------------------------------------------------ split helpers

def test_sliding_window_and_split_arithmetic() -> None:
    samples = sliding_window_samples([[5, 6, 7], [], [1], list(range(13))], max_history=10,
                                     timestamps=[[1, 2, 3], [], [0], list(range(100, 113))])
    assert samples[:2] == [Sample(0, [5], 6, 2), Sample(0, [5, 6], 7, 3)]
    assert len(samples) == 2 + 12
    assert samples[-1] == Sample(3, list(range(2, 12)), 12, 112)  # newest 10 kept
    assert max(len(s.history) for s in samples) == 10
    # the reference's cuts: int(0.8 N), int(0.9 N), for the shared data's N
    for n, (tr, va, te) in {61417: (49133, 6142, 6142), 61564: (49251, 6156, 6157),
                            27422: (21937, 2742, 2743)}.items():
        parts = chronological_split([Sample(0, [0], 0, -1)] * n)
        assert tuple(map(len, parts)) == (tr, va, te)
    shuffled = [Sample(0, [0], k, t) for k, t in enumerate([5, 1, 3, 1, 2, 9, 0, 4, 4, 8])]
    tr, va, te = chronological_split(shuffled)
    assert [s.target for s in tr + va + te] == [6, 1, 3, 4, 2, 7, 8, 0, 9, 5]  # stable
    with pytest.raises(ValueError, match="ratios"):
        chronological_split(shuffled, (0.5, 0.5, 0.5))


def test_pad_histories_left_pads_and_truncates() -> None:
    out = pad_histories([[1], [1, 2, 3, 4]], 3, 9)
    assert out.tolist() == [[9, 9, 1], [2, 3, 4]]


def test_next_item_data_from_the_synthetic_default() -> None:
    catalog = load_default_catalog()
    data = next_item_data_from_catalog(catalog)
    rows = sum(max(len(h) - 1, 0) for h in catalog.histories())
    assert len(data.train) == int(0.8 * rows)
    assert len(data.train) + len(data.valid) == int(0.9 * rows)
    assert len(data.train) + len(data.valid) + len(data.test) == rows
    times = np.concatenate([s.timestamp for s in data.splits().values()])
    assert (np.diff(times) >= 0).all() and (times > 0).all()
    assert all(1 <= len(h) <= 10 for s in data.splits().values() for h in s.history)
    assert data.train.first_sample_rows() == len(set(data.train.user.tolist()))
    # every sample continues its user's history
    histories = catalog.histories()
    for s in data.splits().values():
        for u, h, t in zip(s.user.tolist(), s.history, s.target.tolist()):
            seq = histories[u]
            k = seq.index(t)
            assert seq[max(0, k - 10):k] == h
    counts = data.train_history_counts()
    assert counts.sum() == sum(len(h) for h in data.train.history)
    groups = popularity_group_ids(counts, 8)
    assert len(groups) == 8 and sum(map(len, groups)) == (counts > 0).sum()
    n_pos = int((counts > 0).sum())
    assert [len(g) for g in groups] == [len(g) for g in np.array_split(np.arange(n_pos), 8)]
    share = np.array([counts[g].sum() for g in groups]) / counts.sum()
    assert np.allclose(share, group_unfairness([[0]], counts)["gp_data"])  # one grouping rule
    assert (np.diff(share) <= 0).all()


def test_split_and_data_validation() -> None:
    with pytest.raises(ValueError, match="empty history"):
        Split([[1], []], np.array([0, 0]))
    with pytest.raises(ValueError, match=r"target must have shape \[2\]"):
        Split([[1], [2]], np.array([0]))
    ok = Split([[0]], np.array([1]))
    with pytest.raises(ValueError, match=r"valid: target id 5 is outside the catalogue 0\.\.1"):
        NextItemData("x", ["A", "B"], ok, Split([[0]], np.array([5])), ok)
    with pytest.raises(ValueError, match=r"n_groups"):
        popularity_group_ids(np.array([0, 3, 0]), 2)


# ------------------------------------------------------------------ the shared Amazon data

# Published in ../shared/data/README.md ("Counts", "Verification").
PUBLISHED = {
    "Video_Games": dict(items=3858, distinct_titles=3806, rows=(49133, 6142, 6142),
                        users=(8064, 2202, 2122), users_overall=9066,
                        distinct_items=(3820, 3325, 3389), distinct_targets=(3815, 2328, 2286),
                        mean_history=(4.43, 5.21, 5.45), history_titles=3751,
                        history_title_sum=217723),
    "CDs_and_Vinyl": dict(items=5841, distinct_titles=5377, rows=(49251, 6156, 6157),
                          users=(6865, 1907, 1723), users_overall=7685,
                          distinct_items=(5837, 4987, 4948),
                          distinct_targets=(5830, 3316, 3309),
                          mean_history=(5.13, 6.00, 6.18), history_titles=5364,
                          history_title_sum=252643),
    "Movies_and_TV": dict(items=2653, distinct_titles=2599, rows=(21937, 2742, 2743),
                          users=(3250, 751, 971), users_overall=3663,
                          distinct_items=(2638, 2165, 2206), distinct_targets=(2636, 1499, 1061),
                          mean_history=(4.84, 5.71, 5.77), history_titles=2571,
                          history_title_sum=106178),
}
# The 8 popularity-group shares: VG from the README (4 decimals); all three are the `gh_genre`
# constants hard-coded in the reference's SASRec evaluation (which the README says they
# equal to the last digit). We *compute* them here and compare.
GROUP_SHARES_README = {"Video_Games": [0.4810, 0.1725, 0.1099, 0.0795, 0.0611, 0.0467, 0.0332,
                                       0.0161]}
GROUP_SHARES_REFERENCE = {
    "Video_Games": [0.48097812357904307, 0.17252196598430114, 0.10991029886599027,
                    0.07947254079725155, 0.06112813069818072, 0.0467336937301066,
                    0.033188960284398064, 0.01606628606072854],
    "CDs_and_Vinyl": [0.42919059700842693, 0.17071915707144072, 0.11809153627846408,
                      0.09089901560700277, 0.07123886274308015, 0.05642744900907605,
                      0.04134688077643157, 0.022086501506077747],
    "Movies_and_TV": [0.3926707980937671, 0.17973591516133286, 0.1274746180941438,
                      0.09763792876113696, 0.07813294656143457, 0.060718792970295164,
                      0.043097440147676545, 0.02053156021021304],
}
_CACHE: dict[str, NextItemData] = {}


@pytest.fixture(scope="module", params=list(PUBLISHED))
def amazon(request, require) -> tuple[str, NextItemData]:
    """Each category loaded once per session (about 1 s for the largest); skips without the shared data
    (fails under CI=true)."""
    category = request.param
    require.shared(f"amazon/{category}/{ITEMS_FILE}")
    if category not in _CACHE:
        _CACHE[category] = load_amazon(category)
    return category, _CACHE[category]


def test_amazon_sizes(amazon) -> None:
    category, data = amazon
    pub = PUBLISHED[category]
    assert data.name == category
    assert data.num_items == pub["items"]
    assert len(set(data.titles)) == pub["distinct_titles"]
    splits = (data.train, data.valid, data.test)
    assert tuple(map(len, splits)) == pub["rows"]
    assert all(1 <= len(h) <= 10 for s in splits for h in s.history)
    for s, mean in zip(splits, pub["mean_history"]):
        assert round(float(s.history_lengths().mean()), 2) == mean


def test_amazon_users(amazon) -> None:
    category, data = amazon
    pub = PUBLISHED[category]
    # train users are derived: a user's first sample is the only one with a 1-item history
    assert data.train.first_sample_rows() == pub["users"][0]
    assert (data.train.user == -1).all()
    for s, n in zip((data.valid, data.test), pub["users"][1:]):
        assert (s.user >= 0).all() and len(np.unique(s.user)) == n
    first = sum(s.first_sample_rows() for s in (data.train, data.valid, data.test))
    assert first == pub["users_overall"]


def test_amazon_items(amazon) -> None:
    category, data = amazon
    pub = PUBLISHED[category]
    splits = (data.train, data.valid, data.test)
    seen = [set(s.history_items().tolist()) | set(s.target.tolist()) for s in splits]
    assert tuple(map(len, seen)) == pub["distinct_items"]
    assert tuple(len(set(s.target.tolist())) for s in splits) == pub["distinct_targets"]
    assert set.union(*seen) == set(range(data.num_items))  # no catalogue item in no split
    ts = np.concatenate([data.valid.timestamp, data.test.timestamp])
    assert (ts % 86400 == 0).all() and (np.diff(ts) >= 0).all()  # day-granular, sorted


def test_amazon_title_popularity_and_groups(amazon) -> None:
    """Popularity by title string (the reference's): every title in every train history."""
    category, data = amazon
    pub = PUBLISHED[category]
    by_title = data.title_history_counts()
    counts = np.array(list(by_title.values()))
    assert len(by_title) == pub["history_titles"] and counts.sum() == pub["history_title_sum"]
    # by item id the numbers differ (duplicate titles split their counts across ids)
    by_id = data.train_history_counts()
    assert by_id.sum() == pub["history_title_sum"]
    assert (by_id > 0).sum() >= len(by_title)
    shares = np.array([counts[g].sum() for g in popularity_group_ids(counts, 8)]) / counts.sum()
    if category in GROUP_SHARES_README:
        assert np.round(shares, 4).tolist() == GROUP_SHARES_README[category]
    np.testing.assert_allclose(shares, GROUP_SHARES_REFERENCE[category], rtol=0, atol=1e-15)
