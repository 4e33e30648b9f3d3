"""Heuristic quality filters with their published thresholds as defaults.

- Gopher quality and repetition rules: Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", Appendix A.1.1 and Table A1.
- C4 line and page rules: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
  Text-to-Text Transformer", §2.2 (JMLR version), as in TensorFlow Datasets' `c4_utils`.
- FineWeb rules: Penedo et al. 2024, "The FineWeb Datasets", §3.6.

Every rule is a field; setting it to null switches that rule off, `enabled: false` the whole stage.
A removed document's reason is `stage.rule`, e.g. `gopher_repetition.dup_line_frac`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from llmkit.data.clean.document import Document, Rejection, ngram_hashes


@dataclass
class GopherQualityConfig:
    """The gopher_quality stage."""

    # Rae et al. 2021, Appendix A.1.1: keep documents of 50..100,000 words whose mean word length is
    # 3..10 characters; symbol ('#', '...') to word ratio at most 0.1; at most 90% of lines starting
    # with a bullet and 30% ending with an ellipsis; at least 80% of words with a letter; and at least 2
    # of the 8 stop words.
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])

    RANGES = {"min_words": "[0, 2^63)", "max_words": "[0, 2^63)", "min_mean_word_length": "[0, inf)",
              "max_mean_word_length": "[0, inf)", "max_symbol_word_ratio": "[0, inf)",  # (symbols per word)
              "max_bullet_lines_ratio": "[0, 1]", "max_ellipsis_lines_ratio": "[0, 1]",
              "min_alpha_words_ratio": "[0, 1]", "min_stop_words": "[0, 2^63)"}


_BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "-", "*", "·", "–", "—", "►", "➢")
_ELLIPSES = ("...", "…")
_PUNCT_STRIP = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…–—"
_HAS_ALPHA = re.compile(r"[^\W\d_]")


class GopherQuality:
    name = "gopher_quality"

    def __init__(self, config: GopherQualityConfig):
        self.c = config
        # Compared with the lower-cased words (`norm_words`): a list written "The, And" must not match nothing.
        self.stop_words = {w.lower() for w in config.stop_words}

    def __call__(self, doc: Document) -> Document | Rejection:
        c = self.c
        words = doc.space_words
        n = len(words)
        if c.min_words is not None and n < c.min_words:
            return Rejection("gopher_quality.min_words", f"{n} words")
        if c.max_words is not None and n > c.max_words:
            return Rejection("gopher_quality.max_words", f"{n} words")
        stripped = [w.strip(_PUNCT_STRIP) for w in words]
        stripped = [w for w in stripped if w]
        mean_len = sum(map(len, stripped)) / max(1, len(stripped))
        if c.min_mean_word_length is not None and mean_len < c.min_mean_word_length:
            return Rejection("gopher_quality.min_mean_word_length", f"{mean_len:.2f}")
        if c.max_mean_word_length is not None and mean_len > c.max_mean_word_length:
            return Rejection("gopher_quality.max_mean_word_length", f"{mean_len:.2f}")
        if c.max_symbol_word_ratio is not None and n:
            # "a symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis": two
            # separate ratios, not their sum (Rae et al. 2021, A.1.1; datatrove's GopherQualityFilter too).
            for symbol, count in (("#", doc.text.count("#")), ("...", doc.text.count("...") + doc.text.count("…"))):
                if count / n > c.max_symbol_word_ratio:
                    return Rejection("gopher_quality.max_symbol_word_ratio", f"{symbol} {count / n:.2f}")
        lines = doc.lines
        if lines and c.max_bullet_lines_ratio is not None:
            ratio = sum(line.startswith(_BULLETS) for line in lines) / len(lines)
            if ratio > c.max_bullet_lines_ratio:
                return Rejection("gopher_quality.max_bullet_lines_ratio", f"{ratio:.2f}")
        if lines and c.max_ellipsis_lines_ratio is not None:
            ratio = sum(line.endswith(_ELLIPSES) for line in lines) / len(lines)
            if ratio > c.max_ellipsis_lines_ratio:
                return Rejection("gopher_quality.max_ellipsis_lines_ratio", f"{ratio:.2f}")
        if c.min_alpha_words_ratio is not None and n:
            ratio = sum(1 for w in words if _HAS_ALPHA.search(w)) / n
            if ratio < c.min_alpha_words_ratio:
                return Rejection("gopher_quality.min_alpha_words_ratio", f"{ratio:.2f}")
        if c.min_stop_words is not None:
            found = len(self.stop_words.intersection(doc.norm_words))
            if found < c.min_stop_words:
                return Rejection("gopher_quality.min_stop_words", f"{found} stop words")
        return doc


@dataclass
class GopherRepetitionConfig:
    """The gopher_repetition stage."""

    # Rae et al. 2021, Table A1: remove a document if duplicate lines / paragraphs exceed 30% of them,
    # or 20% of the characters; if the most frequent 2-, 3-, 4-gram covers more than 20%, 18%, 16% of
    # the characters; or duplicated 5..10-grams cover more than 15%, 14%, 13%, 12%, 11%, 10%.
    dup_line_frac: float | None = 0.30
    dup_para_frac: float | None = 0.30
    dup_line_char_frac: float | None = 0.20
    dup_para_char_frac: float | None = 0.20
    top_ngram_char_frac: dict[int, float] | None = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_char_frac: dict[int, float] | None = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

    RANGES = {"dup_line_frac": "[0, 1]", "dup_para_frac": "[0, 1]", "dup_line_char_frac": "[0, 1]",
              "dup_para_char_frac": "[0, 1]", "top_ngram_char_frac": "[0, 1]", "dup_ngram_char_frac": "[0, 1]"}

    def __post_init__(self):
        for name in ("top_ngram_char_frac", "dup_ngram_char_frac"):
            sizes = [n for n in (getattr(self, name) or {}) if not 1 <= n <= 1000]
            if sizes:
                raise ValueError(f"field {name!r}: n-gram size {sizes[0]} is out of range: must be in [1, 1000]")


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / max(1, len(items)), dup_chars / max(1, total_chars)


class GopherRepetition:
    name = "gopher_repetition"

    def __init__(self, config: GopherRepetitionConfig):
        self.c = config

    def __call__(self, doc: Document) -> Document | Rejection:
        c = self.c
        paragraphs = [p.strip() for p in re.split(r"\n{2,}", doc.text) if p.strip()]
        frac, char_frac = duplicate_fractions(paragraphs)
        if c.dup_para_frac is not None and frac > c.dup_para_frac:
            return Rejection("gopher_repetition.dup_para_frac", f"{frac:.2f}")
        if c.dup_para_char_frac is not None and char_frac > c.dup_para_char_frac:
            return Rejection("gopher_repetition.dup_para_char_frac", f"{char_frac:.2f}")
        frac, char_frac = duplicate_fractions(doc.lines)
        if c.dup_line_frac is not None and frac > c.dup_line_frac:
            return Rejection("gopher_repetition.dup_line_frac", f"{frac:.2f}")
        if c.dup_line_char_frac is not None and char_frac > c.dup_line_char_frac:
            return Rejection("gopher_repetition.dup_line_char_frac", f"{char_frac:.2f}")
        hashes = doc.word_hashes
        if len(hashes) == 0:
            return doc
        lengths = np.fromiter(map(len, doc.norm_words), dtype=np.int64, count=len(hashes))
        total = int(lengths.sum())
        cum = np.concatenate([[0], np.cumsum(lengths)])
        for n, limit in sorted((c.top_ngram_char_frac or {}).items()):
            if len(hashes) < n:
                continue
            grams = ngram_hashes(hashes, n)
            values, first, counts = np.unique(grams, return_index=True, return_counts=True)
            best = int(np.argmax(counts))
            if counts[best] < 2:
                continue
            start = int(first[best])
            frac = (cum[start + n] - cum[start]) * int(counts[best]) / total
            if frac > limit:
                return Rejection(f"gopher_repetition.top_{n}gram_char_frac", f"{frac:.2f}")
        for n, limit in sorted((c.dup_ngram_char_frac or {}).items()):
            if len(hashes) < n:
                continue
            frac = duplicate_ngram_char_fraction(hashes, lengths, n)
            if frac > limit:
                return Rejection(f"gopher_repetition.dup_{n}gram_char_frac", f"{frac:.2f}")
            if frac == 0.0:
                break  # no n-gram occurs twice, so no longer one does either
        return doc


def duplicate_ngram_char_fraction(hashes: np.ndarray, lengths: np.ndarray, n: int) -> float:
    """Fraction of word characters inside a repeated occurrence of some n-gram, each character counted
    once however many overlapping n-grams cover it (Rae et al. 2021, Table A1)."""
    grams = ngram_hashes(hashes, n)
    _, first, inverse = np.unique(grams, return_index=True, return_inverse=True)
    repeat_starts = np.nonzero(first[inverse] != np.arange(len(grams)))[0]
    if len(repeat_starts) == 0:
        return 0.0
    cover = np.zeros(len(hashes) + 1, dtype=np.int64)
    np.add.at(cover, repeat_starts, 1)
    np.add.at(cover, repeat_starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(lengths[covered].sum() / max(1, lengths.sum()))


@dataclass
class C4Config:
    """The c4 stage."""

    # Raffel et al. 2020, §2.2: keep only lines ending in terminal punctuation and with at least 5 words;
    # drop lines mentioning Javascript or a cookie/terms policy; drop pages with fewer than 3 sentences,
    # with "lorem ipsum", or with a curly bracket (code). Words over 1000 characters drop their line
    # (TFDS c4_utils). Wikipedia citation markers ([1], [citation needed], [edit]) are removed.
    terminal_punctuation: bool = True
    min_words_per_line: int | None = 5
    max_word_length: int | None = 1000
    remove_javascript_lines: bool = True
    remove_policy_lines: bool = True
    remove_citations: bool = True
    min_sentences: int | None = 3
    remove_lorem_ipsum: bool = True
    remove_curly_bracket: bool = True

    RANGES = {"min_words_per_line": "[0, 2^63)", "max_word_length": "[1, 2^63)", "min_sentences": "[0, 2^63)"}


_END_MARKS = (".", "?", "!", '"', "”")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"”’')\]]*(?=\s|$)")


class C4:
    name = "c4"

    def __init__(self, config: C4Config):
        self.c = config

    def __call__(self, doc: Document) -> Document | Rejection:
        c = self.c
        lower = doc.text.lower()
        if c.remove_curly_bracket and "{" in doc.text:
            return Rejection("c4.curly_bracket")
        if c.remove_lorem_ipsum and "lorem ipsum" in lower:
            return Rejection("c4.lorem_ipsum")
        kept = []
        for line in doc.text.split("\n"):
            if c.remove_citations:
                line = _CITATION.sub("", line)
            line = line.strip()
            if not line:
                if kept and kept[-1] != "":
                    kept.append("")  # keep paragraph breaks between surviving lines
                continue
            # An ellipsis ends with "." but is not terminal punctuation (TFDS c4_utils drops such lines).
            if c.terminal_punctuation and (not line.endswith(_END_MARKS) or line.endswith(_ELLIPSES)):
                continue
            words = line.split()
            if c.min_words_per_line is not None and len(words) < c.min_words_per_line:
                continue
            if c.max_word_length is not None and max(map(len, words)) > c.max_word_length:
                continue
            low = line.lower()
            if c.remove_javascript_lines and "javascript" in low:
                continue
            if c.remove_policy_lines and any(p in low for p in _POLICY):
                continue
            kept.append(line)
        text = "\n".join(kept).strip()
        if not text:
            return Rejection("c4.no_lines_left")
        if c.min_sentences is not None:
            sentences = len(_SENTENCE_END.findall(text))
            if sentences < c.min_sentences:
                return Rejection("c4.min_sentences", f"{sentences} sentences")
        doc.set_text(text)
        return doc


@dataclass
class FineWebConfig:
    """The fineweb stage."""

    # Penedo et al. 2024, §3.6: remove documents where the fraction of lines ending with punctuation is
    # <= 0.12, the fraction of characters in duplicated lines is >= 0.1, or the fraction of lines
    # shorter than 30 characters is >= 0.67. (datatrove's FineWebQualityFilter ships 0.01 for the
    # duplicate-character rule; the paper's 0.1 is used here.) A newline-to-word ratio > 0.3 is the
    # fourth rule of datatrove's implementation (`new_line / len(words) > new_line_ratio`: 0.3 is kept).
    max_line_punct_ratio: float | None = 0.12
    max_dup_line_char_ratio: float | None = 0.1
    max_short_line_ratio: float | None = 0.67
    short_line_length: int = 30
    max_newline_word_ratio: float | None = 0.3

    RANGES = {"max_line_punct_ratio": "[0, 1]", "max_dup_line_char_ratio": "[0, 1]", "max_short_line_ratio": "[0, 1]",
              "short_line_length": "[0, 2^63)", "max_newline_word_ratio": "[0, inf)"}  # (newlines per word)


_FINEWEB_STOP = (".", "'", '"', "!", "?", "”", "’", ":", ";", "…")


class FineWeb:
    name = "fineweb"

    def __init__(self, config: FineWebConfig):
        self.c = config

    def __call__(self, doc: Document) -> Document | Rejection:
        c = self.c
        lines = doc.lines
        if not lines:
            return Rejection("fineweb.empty")
        if c.max_line_punct_ratio is not None:
            ratio = sum(line.endswith(_FINEWEB_STOP) for line in lines) / len(lines)
            if ratio <= c.max_line_punct_ratio:
                return Rejection("fineweb.line_punct_ratio", f"{ratio:.2f}")
        if c.max_dup_line_char_ratio is not None:
            counts = Counter(lines)
            dup_chars = sum(len(line) * (k - 1) for line, k in counts.items() if k > 1)
            ratio = dup_chars / max(1, len(doc.text.replace("\n", "")))
            if ratio >= c.max_dup_line_char_ratio:
                return Rejection("fineweb.dup_line_char_ratio", f"{ratio:.2f}")
        if c.max_short_line_ratio is not None:
            ratio = sum(len(line) <= c.short_line_length for line in lines) / len(lines)
            if ratio >= c.max_short_line_ratio:
                return Rejection("fineweb.short_line_ratio", f"{ratio:.2f}")
        if c.max_newline_word_ratio is not None:
            ratio = doc.text.count("\n") / max(1, len(doc.space_words))
            if ratio > c.max_newline_word_ratio:
                return Rejection("fineweb.newline_word_ratio", f"{ratio:.2f}")
        return doc
