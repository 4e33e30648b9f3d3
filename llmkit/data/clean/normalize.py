"""Main-text extraction from HTML, Unicode/whitespace normalisation, and language identification."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from llmkit.data.clean.document import Document, Rejection
from llmkit.data.clean.shared import import_extra


@dataclass
class ExtractConfig:
    """The extract stage (HTML -> main text, with trafilatura)."""

    # FineWeb (Penedo et al. 2024, §3.2) extracts with trafilatura, favouring precision: menus,
    # footers and link lists are left out at the cost of occasionally losing a real paragraph.
    favor_precision: bool = True
    include_tables: bool = False
    include_comments: bool = False
    min_chars: int = 1  # extracted text shorter than this removes the page

    RANGES = {"min_chars": "[0, 2^63)"}  # (checked by llmkit.yaml_config with the value's file and line)


class Extract:
    name = "extract"

    def __init__(self, config: ExtractConfig):
        self.config = config
        self._extract = import_extra("trafilatura", "the extract stage").extract

    def __call__(self, doc: Document) -> Document | Rejection:
        if doc.html is None:
            return doc  # already text (a .txt, JSONL, Parquet or WET input)
        c = self.config
        try:
            text = self._extract(doc.html, url=doc.meta.get("url"), favor_precision=c.favor_precision,
                                 include_tables=c.include_tables, include_comments=c.include_comments,
                                 deduplicate=False, with_metadata=False)
        except Exception as e:  # noqa: BLE001 - a malformed page is a removal reason, not a crash
            return Rejection("extract.failed", f"{type(e).__name__}: {e}")
        doc.html = None
        if not text or len(text.strip()) < c.min_chars:
            return Rejection("extract.no_main_text")
        doc.set_text(text)
        return doc


# Line breaks other than LF: CRLF, CR, vertical tab, form feed (a page break in pdftotext output and
# Gutenberg texts), the information separators U+001C-U+001E, NEL (U+0085) and U+2028/U+2029 end a line
# (str.splitlines): they become LF, never deleted, or the words on either side of them would be glued.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Zero-width space, word joiner, byte-order mark and soft hyphen, and the C0/C1 control characters
# except tab, newline and the line breaks above. Not ZWNJ/ZWJ (U+200C/U+200D): they are part of the
# spelling in Persian and Indic scripts and join emoji sequences, so removing them would change the text.
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_UNIT_SEPARATOR = "\x1f"  # whitespace to Python (str.split), so a space, not nothing
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but newline: tabs, NBSP, U+2000..U+200A, U+3000 ...
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class NormalizeConfig:
    """The normalize stage."""

    form: str = "NFC"  # Unicode normal form (NFC keeps the text as written; NFKC also folds ligatures)
    remove_control: bool = True
    collapse_whitespace: bool = True  # runs of spaces/tabs -> one space, 3+ newlines -> a blank line
    min_chars: int = 1  # a text shorter than this after normalisation is removed as empty

    RANGES = {"min_chars": "[0, 2^63)"}

    def __post_init__(self):
        if self.form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"form must be NFC, NFKC, NFD or NFKD, not {self.form!r}")


class Normalize:
    name = "normalize"

    def __init__(self, config: NormalizeConfig):
        self.config = config

    def normalize(self, text: str) -> str:
        c = self.config
        text = _LINE_BREAKS.sub("\n", text)
        # Characters are removed before the Unicode normalisation, not after: "e", a soft hyphen and a
        # combining acute compose to "é" only once the hyphen is gone, and text in the documented form
        # is what exact deduplication and the word statistics compare.
        if c.remove_control:
            text = _CONTROL.sub("", _INVISIBLE.sub("", text)).replace(_UNIT_SEPARATOR, " ")
        text = unicodedata.normalize(c.form, text)
        if c.collapse_whitespace:
            text = "\n".join(line.strip() for line in _SPACES.sub(" ", text).split("\n"))
            text = _BLANK_LINES.sub("\n\n", text).strip()
        return text

    def __call__(self, doc: Document) -> Document | Rejection:
        doc.set_text(self.normalize(doc.text))
        if len(doc.text) < self.config.min_chars:
            return Rejection("normalize.empty")
        return doc


@dataclass
class LanguageConfig:
    """The language stage (py3langid, whose model ships inside the package and runs offline)."""

    languages: list[str] = field(default_factory=lambda: ["en"])
    # FineWeb keeps English documents with a fastText lid.176 score >= 0.65 (Penedo et al. 2024,
    # §3.3). fastText's model cannot be fetched here; langid's normalised probability is a different
    # (peakier) score, so the same number is a looser cut-off.
    min_score: float = 0.65
    max_chars: int = 2000  # the identifier reads the first 2000 characters: enough, and bounded in time

    RANGES = {"min_score": "[0, 1]", "max_chars": "[1, 2^63)"}


class Language:
    name = "language"

    def __init__(self, config: LanguageConfig):
        langid = import_extra("py3langid.langid", "the language stage")
        self.config = config
        self.identifier = _identifier(langid.MODEL_FILE, langid.LanguageIdentifier)
        self.languages = set(config.languages)

    def __call__(self, doc: Document) -> Document | Rejection:
        lang, score = self.identifier.classify(doc.text[: self.config.max_chars])
        doc.meta["language"] = lang
        doc.meta["language_score"] = round(float(score), 4)
        if lang not in self.languages:
            return Rejection("language.other", lang)
        if score < self.config.min_score:
            return Rejection("language.low_score", f"{lang} {score:.2f}")
        return doc


_IDENTIFIER = None


def _identifier(model_file, cls):
    """One identifier per process: loading the model takes ~0.5 s."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        _IDENTIFIER = cls.from_model_file(model_file, norm_probs=True)
    return _IDENTIFIER
