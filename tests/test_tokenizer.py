"""WordTokenizer: exact round trips, one token path per title, EOS kept apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flower_lite.data import load_default_catalog
from flower_lite.tokenizer import EOS, WordTokenizer, split_pieces


def test_pieces_keep_leading_spaces_on_words():
    assert split_pieces("Star Wars: II") == ["Star", " Wars", ":", " II"]
    assert split_pieces("X — The Final  Chapter!") == [
        "X", " —", " The", " Final", " ", " Chapter", "!"
    ]
    assert split_pieces("Misérables, Les") == ["Misérables", ",", " Les"]


def test_ids_follow_first_appearance_and_eos_is_zero():
    tok = WordTokenizer.fit(["b a", "a c", "b a"])
    assert tok.pieces == (EOS, "b", " a", "a", " c")
    assert (tok.eos_id, tok.vocab_size, tok.token_text(0)) == (0, 5, "</s>")
    assert tok.encode("a c") == [3, 4] and tok.decode([3, 4, 0]) == "a c"


@given(st.text())
def test_pieces_concatenate_back_to_any_text(text):
    assert "".join(split_pieces(text)) == text


@given(st.lists(st.text(min_size=1), min_size=1, max_size=5))
def test_roundtrip_on_random_unicode(titles):
    tok = WordTokenizer.fit(titles)
    for title in titles:
        ids = tok.encode(title)
        assert tok.eos_id not in ids
        assert tok.decode(ids) == title


def test_every_catalogue_title_has_one_path():
    titles = load_default_catalog().distinct_titles()
    tok = WordTokenizer.fit(titles)
    paths = {tuple(tok.encode(t)) + (tok.eos_id,) for t in titles}
    assert len(paths) == len(titles)
    assert all(tok.decode(tok.encode(t) + [tok.eos_id]) == t for t in titles)


def test_eos_text_inside_a_title_is_not_eos():
    tok = WordTokenizer.fit(["Tag </s> End"])
    assert tok.eos_id not in tok.encode("Tag </s> End")


def test_errors():
    tok = WordTokenizer.fit(["Star Quest"])
    with pytest.raises(ValueError, match="' Wars'"):
        tok.encode("Star Wars")
    with pytest.raises(ValueError, match="empty"):
        tok.encode("")
    with pytest.raises(ValueError, match="empty"):
        WordTokenizer.fit(["A", ""])
    with pytest.raises(ValueError, match="unknown token id 9"):
        tok.decode([1, 9])
    with pytest.raises(ValueError, match="only be the last"):
        tok.decode([1, 0, 2])
    with pytest.raises(ValueError, match="first piece"):
        WordTokenizer(("a", EOS))


def test_save_load_roundtrip(tmp_path):
    tok = WordTokenizer.fit(load_default_catalog().titles)
    tok.save(tmp_path / "vocab.json")
    assert WordTokenizer.load(tmp_path / "vocab.json") == tok
    (tmp_path / "bad.json").write_text('{"pieces": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a WordTokenizer"):
        WordTokenizer.load(tmp_path / "bad.json")
