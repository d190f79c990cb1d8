"""The raw Amazon pipeline on a small generated raw-format fixture (60 users x 30 items)."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flower_lite.data.amazon_raw import (
    Review,
    clean_title,
    k_core,
    main,
    month_start,
    preprocess,
    read_json_lines,
)
from flower_lite.data.bigrec import COLUMNS, load_bigrec

START, END = "2016-01", "2016-07"
T0, T1 = month_start(START), month_start(END)
DAY = 86400
LONG = " ".join(["word"] * 21)
JUNK = {  # asin -> metadata title (None: no "title" key); all must be dropped
    "J_SPAN": '<span id="productTitle">Nice Game</span>',
    "J_CLASS": '<span class="a-size-medium a-color-secondary a-text-normal',
    "J_DUMP": 'Seal,Hits,Warner Bros.,Rock & Pop - General" />',
    "J_EMPTY": "   ",
    "J_ONE": "x",
    "J_LONG": LONG,
    "J_NONE": None,
    "J_DUP": "Fine Title",  # a second metadata row for it is junk
}
GOOD = {  # asin -> (raw title, cleaned title)
    "G_AMP": ("Tom &amp; Jerry", "Tom & Jerry"),
    "G_APOS": ("Jerry&#39;s  Game ", "Jerry's Game"),
    "G_QUOTE": ('"Quoted, with comma"', "Quoted, with comma"),
    "G_BOTH": ('Disco "Fever" Collector\'s Edition', 'Disco "Fever" Collector\'s Edition'),
    "G_ACCENT": ("Caf&eacute; &ndash; Live", "Café – Live"),
    "G_TAB": ("Tabbed\tTitle\nTwo", "Tabbed Title Two"),
    "G_20": (" ".join(["w"] * 20), " ".join(["w"] * 20)),
}


def make_raw(folder: Path, seed: int = 0) -> tuple[Path, Path, list[dict]]:
    """Reviews (gzipped) and metadata (plain) JSON lines; returns paths and the reviews."""
    rng = np.random.default_rng(seed)
    asins = [f"B{i:04d}" for i in range(23)] + list(GOOD) + list(JUNK)  # 38 items
    titles = {a: f"Item {a} Vol. {i}" for i, a in enumerate(asins[:23])}
    titles.update({a: raw for a, (raw, _) in GOOD.items()})
    weight = np.linspace(2.0, 0.3, len(asins))
    weight /= weight.sum()
    reviews = []
    for u in range(60):
        n = int(rng.integers(3, 16))  # some users end up below 5 and are removed
        for _ in range(n):
            t = T0 + int(rng.integers(0, (T1 - T0) // DAY)) * DAY
            a = asins[int(rng.choice(len(asins), p=weight))]
            reviews.append({"reviewerID": f"U{u:03d}", "asin": a,
                            "overall": float(rng.integers(1, 6)), "unixReviewTime": t,
                            "reviewText": "ok"})
    # outside the window (end is exclusive): these must not count for the 5-core
    for u in range(0, 60, 7):
        for t in (T0 - DAY, T1, T1 + 30 * DAY):
            reviews.append({"reviewerID": f"U{u:03d}", "asin": "B0000", "overall": 5.0,
                            "unixReviewTime": t})
    order = rng.permutation(len(reviews))
    reviews = [reviews[i] for i in order]
    meta = [{"asin": a, "title": t} for a, t in titles.items()]
    meta += [{"asin": a} if t is None else {"asin": a, "title": t} for a, t in JUNK.items()]
    meta.append({"asin": "J_DUP", "title": "<span id=x>"})
    meta.append({"asin": "UNUSED", "title": "Never Reviewed"})
    rpath, mpath = folder / "reviews.json.gz", folder / "meta.json"
    with gzip.open(rpath, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    mpath.write_text("\n".join(json.dumps(m) for m in meta) + "\n\n", encoding="utf-8")
    return rpath, mpath, reviews


def expected_interactions(reviews: list[dict], k: int = 5) -> Counter:
    """Independent re-implementation: window, titles, then peel one entity at a time."""
    good = {f"B{i:04d}" for i in range(23)} | set(GOOD)
    rows = [(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in reviews
            if T0 <= r["unixReviewTime"] < T1 and r["asin"] in good]
    while True:
        users = Counter(u for u, _, _ in rows)
        items = Counter(a for _, a, _ in rows)
        low = [("u", u) for u, c in users.items() if c < k] + \
              [("i", a) for a, c in items.items() if c < k]
        if not low:
            return Counter(rows)
        kind, key = low[0]
        rows = [r for r in rows if (r[0] if kind == "u" else r[1]) != key]


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    rpath, mpath, reviews = make_raw(folder)
    out = folder / "out"
    stats = preprocess(rpath, mpath, out, START, END, progress=False)
    return folder, rpath, mpath, reviews, out, stats


def test_clean_title() -> None:
    for raw, clean in GOOD.values():
        assert clean_title(raw) == clean
    for asin, raw in JUNK.items():
        assert (clean_title(raw) is None) == (asin != "J_DUP")  # J_DUP: its 2nd row is junk
    assert clean_title("&lt;span class=x&gt;") is None  # an escaped tag is still a tag
    assert clean_title("ab") == "ab" and clean_title(5) is None
    assert clean_title("Love &lt;3 Songs") == "Love <3 Songs"  # '<' not starting a tag


def test_month_start_and_k_core() -> None:
    assert month_start("2015-10") == 1443657600  # 2015-10-01 00:00 UTC
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_start("2015-13")
    # u2 has 2 reviews of item c: removing c (< 2) then drops u2, then item b
    rs = [Review(u, a, 5.0, 0) for u, a in
          [("u1", "a"), ("u1", "b"), ("u3", "a"), ("u3", "b"), ("u2", "a"), ("u2", "c"),
           ("u4", "b"), ("u4", "d"), ("u5", "d")]]
    kept = k_core(rs, 2)
    assert [(r.user, r.asin) for r in kept] == [("u1", "a"), ("u1", "b"), ("u3", "a"),
                                                ("u3", "b")]
    assert k_core(kept, 3) == []


def test_output_format_and_round_trip(built) -> None:
    _, _, _, _, out, stats = built
    assert sorted(p.name for p in out.iterdir()) == ["items.tsv", "test.csv", "train.csv",
                                                     "valid.csv"]
    raw = (out / "train.csv").read_bytes()
    assert raw.startswith(",".join(COLUMNS).encode() + b"\r\n")  # csv.writer, CRLF
    data = load_bigrec(out, name="fixture")
    assert (len(data.train), len(data.valid), len(data.test)) == \
        (stats["train"], stats["valid"], stats["test"])
    assert data.num_items == stats["items"] and stats["items"] <= 30
    # ids, ASINs and titles agree in every row; junk items are gone, good ones cleaned
    rows = [r for s in ("train", "valid", "test") for r in read_csv(out / f"{s}.csv")]
    asin_of: dict[int, str] = {}
    for r in rows:
        for a, i in zip(eval_list(r["item_asins"]) + [r["item_asin"]],
                        eval_list(r["history_item_id"]) + [int(r["item_id"])]):
            assert asin_of.setdefault(i, a) == a
    assert len(asin_of) == data.num_items
    assert not any(a.startswith("J_") for a in asin_of.values())
    survivors = {a: data.titles[i] for i, a in asin_of.items() if a in GOOD}
    assert len(survivors) >= 4
    assert all(title == GOOD[a][1] for a, title in survivors.items())
    assert not any("<" in t or "&#" in t or "&amp;" in t for t in data.titles)


def eval_list(text: str) -> list:
    return ast.literal_eval(text)


def test_five_core_and_window(built) -> None:
    _, _, _, reviews, out, stats = built
    rows = [r for s in ("train", "valid", "test") for r in read_csv(out / f"{s}.csv")]
    got: Counter = Counter()
    for r in rows:
        if len(eval_list(r["item_asins"])) == 1:  # a user's first sample
            got[(r["user_id"], eval_list(r["item_asins"])[0],
                 eval_list(r["history_timestamp"])[0])] += 1
        got[(r["user_id"], r["item_asin"], int(r["timestamp"]))] += 1
    assert got == expected_interactions(reviews)
    assert sum(got.values()) == stats["interactions"]
    assert min(Counter(u for u, _, _ in got.elements()).values()) >= 5
    assert min(Counter(a for _, a, _ in got.elements()).values()) >= 5
    times = [t for _, _, t in got]
    assert min(times) >= T0 and max(times) < T1
    assert stats["users"] < 60 and stats["samples"] == stats["interactions"] - stats["users"]


def test_split_sizes_and_chronology(built) -> None:
    _, _, _, _, out, stats = built
    n = stats["samples"]
    assert (stats["train"], stats["valid"], stats["test"]) == \
        (int(0.8 * n), int(0.9 * n) - int(0.8 * n), n - int(0.9 * n))
    data = load_bigrec(out)
    times = np.concatenate([data.train.timestamp, data.valid.timestamp, data.test.timestamp])
    assert (np.diff(times) >= 0).all()
    # sliding windows: at most 10 previous items, oldest first; one 1-item row per user
    rows = [r for s in ("train", "valid", "test") for r in read_csv(out / f"{s}.csv")]
    assert max(len(eval_list(r["history_item_id"])) for r in rows) == 10
    for r in rows:
        ts = eval_list(r["history_timestamp"])
        assert ts == sorted(ts) and ts[-1] <= int(r["timestamp"])
    firsts = Counter(r["user_id"] for r in rows if len(eval_list(r["item_asins"])) == 1)
    assert set(firsts.values()) == {1} and len(firsts) == stats["users"]


def test_deterministic_and_seeded(built, tmp_path: Path) -> None:
    _, rpath, mpath, _, out, _ = built
    again = tmp_path / "again"
    preprocess(rpath, mpath, again, START, END, progress=False)
    for name in ("items.tsv", "train.csv", "valid.csv", "test.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    other = tmp_path / "other"
    preprocess(rpath, mpath, other, START, END, seed=7, progress=False)
    a, b = load_bigrec(out), load_bigrec(other)
    assert a.titles != b.titles and sorted(a.titles) == sorted(b.titles)
    assert [[a.titles[i] for i in h] for h in a.test.history] == \
        [[b.titles[i] for i in h] for h in b.test.history]


def test_cli(built, tmp_path: Path, capsys) -> None:
    _, rpath, mpath, _, out, stats = built
    assert main(["--reviews", str(rpath), "--meta", str(mpath), "--start", START,
                 "--end", END, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert f"train={stats['train']}" in capsys.readouterr().out
    assert (tmp_path / "cli" / "test.csv").read_bytes() == (out / "test.csv").read_bytes()
    assert main(["--reviews", str(tmp_path / "nope.json"), "--meta", str(mpath),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "nope.json" in capsys.readouterr().err
    assert main(["--reviews", str(rpath), "--meta", str(mpath), "--start", "2016-07",
                 "--end", "2016-01", "--out", str(tmp_path / "x"), "--quiet"]) == 1
    done = subprocess.run([sys.executable, "-m", "flower_lite.data.amazon_raw", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--reviews" in done.stdout and not done.stderr


def test_bad_raw_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"asin": "a"}\nnot json at all\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json, line 2: not a JSON object"):
        list(read_json_lines(bad))
    loose = tmp_path / "loose.json"
    loose.write_text("{'asin': 'a', 'title': 'Python literal'}\n", encoding="utf-8")
    assert list(read_json_lines(loose)) == [{"asin": "a", "title": "Python literal"}]
    missing = tmp_path / "reviews.json"
    missing.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n')
    with pytest.raises(ValueError, match=r"record 1: needs reviewerID"):
        preprocess(missing, loose, tmp_path / "o", "1970-01", "1970-02", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        preprocess(tmp_path / "nothing.json", loose, tmp_path / "o", progress=False)
    empty = tmp_path / "one.json"
    empty.write_text('{"reviewerID": "u", "asin": "a", "overall": 5.0, "unixReviewTime": 1}\n')
    with pytest.raises(ValueError, match="no review is left"):
        preprocess(empty, loose, tmp_path / "o", "1970-01", "1970-02", progress=False)
