"""Safety: a bad-words / NSFW filter from a word list, and PII redaction into placeholders."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmkit.data.clean.shared import PRESET_DIR
from llmkit.data.clean.document import Document, Rejection
from llmkit.errors import ConfigError


@dataclass
class BadWordsConfig:
    """The bad_words stage."""

    # A file with one word or phrase per line (or a YAML list); null = the short English list shipped
    # in presets/clean/bad_words_en.yaml. C4 used the LDNOOBW list (Raffel et al. 2020, §2.2), which
    # can be passed here as a file.
    word_list: str | None = None
    # C4 removes a page containing any listed word (ratio > 0.0). A higher ratio keeps pages that only
    # mention a word in passing (medical text, quotes) and still removes pornographic spam.
    max_ratio: float = 0.0

    RANGES = {"max_ratio": "[0, 1]"}


def load_word_list(path: str | None) -> list[str]:
    file = Path(path) if path else PRESET_DIR / "bad_words_en.yaml"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such word list; set bad_words.word_list to a file with one word per line") from None
    if file.suffix in (".yaml", ".yml"):
        words = yaml.safe_load(text)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ConfigError(f"{file}: expected a YAML list of strings")
        return words
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class BadWords:
    name = "bad_words"

    def __init__(self, config: BadWordsConfig):
        self.config = config
        self.words: set[str] = set()
        self.phrases: list[str] = []
        for entry in load_word_list(config.word_list):
            tokens = re.findall(r"\w+", entry.lower())
            if len(tokens) == 1:
                self.words.add(tokens[0])
            elif tokens:
                self.phrases.append(" " + " ".join(tokens) + " ")

    def find(self, doc: Document) -> list[str]:
        words = doc.norm_words
        found = [w for w in words if w in self.words]
        if self.phrases:
            joined = " " + " ".join(words) + " "
            for phrase in self.phrases:
                found += [phrase.strip()] * joined.count(phrase)
        return found

    def __call__(self, doc: Document) -> Document | Rejection:
        found = self.find(doc)
        if found and len(found) / max(1, len(doc.norm_words)) > self.config.max_ratio:
            return Rejection("bad_words.found", ", ".join(sorted(set(found))[:3]))
        return doc


@dataclass
class PIIConfig:
    """The pii stage."""

    # What to redact and the placeholder each becomes (BigCode's StarCoder PII pipeline uses the same
    # idea: <EMAIL>, <IP_ADDRESS> ...; Li et al. 2023, §4).
    email: str | None = "<EMAIL>"
    phone: str | None = "<PHONE>"
    ip_address: str | None = "<IP_ADDRESS>"
    credit_card: str | None = "<CREDIT_CARD>"
    # Private and loopback addresses (192.168.x.x, 10.x, 127.0.0.1) identify no one; BigCode keeps them.
    keep_private_ips: bool = False
    min_phone_digits: int = 10  # fewer digits than a full national number is too often not a phone

    RANGES = {"min_phone_digits": "[1, 2^16)"}


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Card numbers as they are printed: 13-19 digits in one run, in groups of four (Visa, Mastercard,
# Discover: 4-4-4-4[-1..3]) or as American Express' 4-6-5, split by single spaces or dashes. Other
# digit groupings (ISBNs 978-3-16-148410-0, phone numbers) are not cards.
_CARD = re.compile(r"(?<![\w-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{5})(?![\w-])")
# An optional country code, an optional area code in brackets, then 2-4 groups of digits split by
# single spaces, dots or dashes (national formats vary: 415-555-0132, 20 7946 0958, 30 865 42669).
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,3}(?![\w-])")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)  # not ord(ch) - 48: `\d` also matches full-width and other Unicode decimal digits
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class PII:
    name = "pii"

    def __init__(self, config: PIIConfig):
        self.c = config
        self.counts: Counter = Counter()

    def _card(self, m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        # Payment cards have major industry identifier 2-6 (ISO/IEC 7812-1: Mastercard 2/5, Amex/JCB/Diners
        # 3, Visa 4, Discover/UnionPay 6). Without it one in ten 13-digit millisecond timestamps (1...) or
        # ISBN-13s (978...) would pass Luhn by chance and be redacted.
        if 13 <= len(digits) <= 19 and int(digits[0]) in (2, 3, 4, 5, 6) and luhn_ok(digits) and len(set(digits)) > 1:
            self._found["credit_card"] += 1
            return self.c.credit_card
        return m.group()

    def _ipv4(self, m: re.Match) -> str:
        if self.c.keep_private_ips:
            addr = ipaddress.ip_address(m.group())
            if addr.is_private or addr.is_loopback:
                return m.group()
        self._found["ip_address"] += 1
        return self.c.ip_address

    def _ipv6(self, m: re.Match) -> str:
        text = m.group()
        groups = [g for g in text.split(":") if g]
        # "a::b" (C++/Ruby scopes) and times like 10:30 are not worth the risk; but a compressed address
        # with a 3-4 hex-digit group and a digit (fe80::1, 2606:4700::1111, 2001:db8::) is an address.
        compressed = "::" in text and any(len(g) >= 3 for g in groups) and any(ch.isdigit() for ch in text)
        if len(groups) < 3 and not compressed:
            return text
        try:
            addr = ipaddress.IPv6Address(text)
        except ValueError:
            return text
        if self.c.keep_private_ips and (addr.is_private or addr.is_loopback):
            return text
        self._found["ip_address"] += 1
        return self.c.ip_address

    def _phone(self, m: re.Match) -> str:
        text = m.group()
        digits = re.sub(r"\D", "", text)
        # A phone number has separators or a country code; a bare run of digits is an id or an amount.
        if len(digits) < self.c.min_phone_digits or len(digits) > 15 or not re.search(r"[ .()+-]", text):
            return text
        if re.fullmatch(r"(19|20)\d\d[-./](0?[1-9]|1[0-2])[-./]\d{1,2}", text):
            return text  # an ISO date
        self._found["phone"] += 1
        return self.c.phone

    def redact(self, text: str) -> tuple[str, Counter]:
        self._found = Counter()
        c = self.c
        if c.email is not None:
            text, n = _EMAIL.subn(c.email, text)
            self._found["email"] += n
        if c.credit_card is not None:
            text = _CARD.sub(self._card, text)
        if c.ip_address is not None:
            text = _IPV4.sub(self._ipv4, text)
            if ":" in text:
                text = _IPV6.sub(self._ipv6, text)
        if c.phone is not None:
            text = _PHONE.sub(self._phone, text)
        return text, +self._found

    def __call__(self, doc: Document) -> Document:
        text, found = self.redact(doc.text)
        if found:
            doc.set_text(text)
            doc.meta["pii"] = dict(found)
            self.counts.update(found)
        return doc

