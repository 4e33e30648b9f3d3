"""The unit every cleaning stage works on: one document, and the verdict a stage gives it.

A stage is a callable `stage(doc) -> Document | Rejection`: it returns the document (unchanged, or with
its text rewritten, e.g. lines dropped or PII redacted) to keep it, or a `Rejection` naming the rule
that removed it. Stages hold no state across documents, so a stream of documents can be split over
any number of processes (multiprocessing locally, Dask on a cluster) and give the same result.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

# Words for statistics (Gopher's word counts, mean word length, symbol ratios): whitespace tokens,
# punctuation attached, as Rae et al. 2021 count them.
_SPACE_WORDS = re.compile(r"\S+")
# Words for n-grams (repetition, deduplication, the quality model): lower-cased runs of letters and
# digits, so that "Neuer," and "neuer" are the same word and punctuation differences do not split
# n-grams.
_NORM_WORDS = re.compile(r"\w+")


class Rejection(NamedTuple):
    """Why a stage removed a document: `rule` is `stage.rule` (e.g. `gopher_quality.min_words`)."""

    rule: str
    detail: str = ""


@dataclass
class Document:
    text: str
    id: str
    source: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)  # url, language, quality score, PII counts ...
    html: str | None = None  # raw HTML until the `extract` stage turns it into text
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def set_text(self, text: str) -> None:
        """Rewrite the text (and forget everything computed from the old one)."""
        if text != self.text:
            self.text = text
            self._cache.clear()

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value of `compute()` for the current text, computed once: several stages read the same
        words, hashes and lines of a document. A value belongs to the text it was computed from and is
        recomputed after the text changes (set_text, or a stage assigning `text`)."""
        entry = self._cache.get(key)
        if entry is None or entry[0] is not self.text:
            entry = (self.text, compute())
            self._cache[key] = entry
        return entry[1]

    def remember(self, key: str, value: Any) -> None:
        """Store a value computed elsewhere for the current text, as `cached` would (e.g. word hashes
        read back from a signature file, so that `word_hashes` does not need the text)."""
        self._cache[key] = (self.text, value)

    @property
    def space_words(self) -> list[str]:
        return self.cached("space_words", lambda: _SPACE_WORDS.findall(self.text))

    @property
    def norm_words(self) -> list[str]:
        return self.cached("norm_words", lambda: _NORM_WORDS.findall(self.text.lower()))

    @property
    def word_hashes(self) -> np.ndarray:
        """A stable 32-bit hash per normalised word (CRC-32: the same in every process and on every
        machine, unlike Python's salted `hash`), the input of n-gram statistics and MinHash."""
        return self.cached("word_hashes", lambda: hash_words(self.norm_words))

    @property
    def lines(self) -> list[str]:
        return self.cached("lines", lambda: [s.strip() for s in self.text.split("\n") if s.strip()])

    def to_record(self) -> dict[str, Any]:
        record = {"text": self.text, "id": self.id, "source": self.source}
        if self.meta:
            record["meta"] = self.meta
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Document":
        return cls(text=record["text"], id=record["id"], source=record.get("source", "default"),
                   meta=record.get("meta", {}))


def hash_words(words: list[str]) -> np.ndarray:
    return np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint32, count=len(words))


# Odd 64-bit multipliers, one per position in an n-gram, so that "a b" and "b a" hash differently.
_NGRAM_MULTIPLIERS = np.random.default_rng(0x11_6D_6B_69_74).integers(
    1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every run of `n` consecutive words (vectorised; wraps modulo 2**64).
    A document shorter than `n` words gives one hash of all its words, so that it still has a
    signature; an empty one gives none."""
    count = len(word_hashes)
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    n = min(n, count)
    h = word_hashes.astype(np.uint64)
    out = np.zeros(count - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out = (out ^ (out >> np.uint64(29))) + h[j:count - n + 1 + j] * _NGRAM_MULTIPLIERS[j]
    return out
