"""A word-level tokenizer for titles, used by the tries of the no-LLM toys (docs/method.md section 2).

A title is cut into *pieces* by :data:`PIECE_PATTERN`: a word with at most one leading space
(``" Wars"``), one punctuation character with at most one leading space (``":"``, ``" —"``),
or one whitespace character that neither of those took. The pieces concatenate back to the
title, so ``decode(encode(t)) == t`` for every string ``t`` made of known pieces::

    "Star Wars: II"  ->  ["Star", " Wars", ":", " II"]

Id 0 is the termination token T = ``"</s>"`` (:attr:`WordTokenizer.eos_id`). The pattern
never produces ``"</s>"`` as one piece, so T never merges with title text and each title has
exactly one token path ``encode(title) + [eos_id]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

EOS = "</s>"
PIECE_PATTERN = re.compile(r" ?\w+| ?[^\w\s]|\s")


def split_pieces(text: str) -> list[str]:
    """The pieces of ``text`` in order; ``"".join(split_pieces(text)) == text``."""
    return PIECE_PATTERN.findall(text)


@dataclass(frozen=True)
class WordTokenizer:
    """Piece <-> id vocabulary; ``pieces[0]`` is :data:`EOS`, the others are title pieces.

    Build one with :meth:`fit` (ids in order of first appearance) or :meth:`load`.
    """

    pieces: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.pieces or self.pieces[0] != EOS:
            raise ValueError(f"the first piece must be {EOS!r}")
        ids = {piece: i for i, piece in enumerate(self.pieces)}
        if len(ids) != len(self.pieces):
            raise ValueError("the vocabulary repeats a piece")
        object.__setattr__(self, "pieces", tuple(self.pieces))
        object.__setattr__(self, "_ids", ids)

    @classmethod
    def fit(cls, titles: Sequence[str]) -> WordTokenizer:
        """The vocabulary of the pieces of ``titles``, ids in order of first appearance."""
        vocab = dict.fromkeys([EOS])
        for title in titles:
            if not title:
                raise ValueError("cannot fit on an empty title")
            vocab.update(dict.fromkeys(split_pieces(title)))
        return cls(tuple(vocab))

    @property
    def eos_id(self) -> int:
        """The id of the termination token T (``"</s>"``): 0."""
        return 0

    @property
    def vocab_size(self) -> int:
        """V, the number of ids (EOS included)."""
        return len(self.pieces)

    def encode(self, title: str) -> list[int]:
        """The token ids of ``title`` (without EOS).

        Raises:
            ValueError: ``title`` is empty, or one of its pieces is not in the vocabulary.
        """
        if not title:
            raise ValueError("cannot encode an empty title")
        ids = []
        for piece in split_pieces(title):
            if piece not in self._ids:
                raise ValueError(f"unknown piece {piece!r} in title {title!r}")
            ids.append(self._ids[piece])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; one trailing EOS is allowed and dropped.

        Raises:
            ValueError: an id outside ``0..V-1``, or EOS before the last position.
        """
        ids = list(ids)
        if ids and ids[-1] == self.eos_id:
            ids.pop()
        if self.eos_id in ids:
            raise ValueError(f"EOS (id {self.eos_id}) may only be the last id")
        return "".join(self.token_text(i) for i in ids)

    def token_text(self, token_id: int) -> str:
        """The piece of ``token_id`` (``"</s>"`` for EOS)."""
        if not 0 <= token_id < len(self.pieces):
            raise ValueError(f"unknown token id {token_id}: ids are 0..{len(self.pieces) - 1}")
        return self.pieces[token_id]

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON ``{"eos": "</s>", "pieces": [...]}`` (UTF-8)."""
        data = {"eos": EOS, "pieces": list(self.pieces)}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("eos") != EOS or not isinstance(data.get("pieces"), list):
            raise ValueError(f"{path} is not a WordTokenizer vocabulary")
        return cls(tuple(data["pieces"]))
