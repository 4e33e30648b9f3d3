"""Answers out of generated text: the number a maths solution ends with, the code a chat reply holds.

GSM8K (Cobbe et al. 2021) solutions end with `#### N`. A generation is graded twice, as
lm-evaluation-harness grades its gsm8k tasks:
- strict: the number after the task's answer marker (`#### N`, or `The answer is N` for the
  chain-of-thought prompt), the first one the text states; a model that does not follow the format
  gets nothing;
- flexible: the last number anywhere in the text, whatever the format.
Both sides are normalised before comparing: thousands separators, a dollar sign, a trailing full stop
and trailing zeros of a decimal part go ("$1,200.00." and "1200" are the same answer).
"""

from __future__ import annotations

import re

# A number as people write them in solutions: an optional sign and dollar sign, digits with optional
# thousands commas, an optional decimal part. "-$1,234.50" and ".5" are numbers; "1,2,3" reads as 123.
NUMBER = r"-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(NUMBER)
STRICT_MARKERS = {"####": re.compile(r"####\s*(" + NUMBER + ")"),
                  "the answer is": re.compile(r"[Tt]he answer is:?\s*(" + NUMBER + ")")}
CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


def normalize_number(text: str) -> str | None:
    """The canonical form of a written number ("$1,200.00" -> "1200", "-0.50" -> "-0.5"), or None when
    `text` holds no number."""
    text = text.strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", text):
        return None
    sign = "-" if text.startswith("-") else ""
    text = text.lstrip("+-")
    whole, _, fraction = text.partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    number = whole + ("." + fraction if fraction else "")
    return "0" if number == "0" else sign + number


def extract_strict(text: str, marker: str = "####") -> str | None:
    """The normalised number after the first answer marker, or None when the text has none."""
    found = STRICT_MARKERS[marker].search(text)
    return normalize_number(found.group(1)) if found else None


def extract_flexible(text: str) -> str | None:
    """The normalised last number in the text, or None when there is none."""
    for candidate in reversed(_NUMBER_RE.findall(text)):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


def gsm8k_gold(answer: str) -> str:
    """The reference number of a GSM8K answer field (its `#### N` line)."""
    number = extract_strict(answer, "####")
    if number is None:
        raise ValueError(f"a GSM8K answer without '#### N': {answer[-80:]!r}")
    return number


def strip_calculator(answer: str) -> str:
    """A GSM8K solution without its calculator annotations: "2*3=<<2*3=6>>6" -> "2*3=6"."""
    return CALCULATOR_RE.sub("", answer)


def cut_at_stops(text: str, stops) -> str:
    """The text up to the first of the stop strings (the engine ends a request on the token that
    completes one; the stop string itself and anything after it are not the answer)."""
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


_FENCE_RE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(reply: str) -> str:
    """The code of a chat reply: the first fenced block (```python ... ```; an unclosed one runs to the
    end), else the reply as it is."""
    found = _FENCE_RE.search(reply)
    return found.group(1) if found else reply
