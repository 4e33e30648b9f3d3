"""Answers out of generated text: the number a maths solution ends with, the code a chat reply holds.

GSM8K (Cobbe et al. 2021) solutions end with `#### N`. A generation is graded as lm-evaluation-harness
grades its gsm8k tasks, rule for rule (its gsm8k*.yaml filters and `exact_match` with regexes_to_ignore;
tests/test_eval_extract.py holds them equal to lm_eval's own code):
- strict: the first `#### N` (`The answer is N.` for the chain-of-thought prompt), N being what
  `-?[0-9.,]+` takes; a model that does not follow the format gets "[invalid]";
- flexible: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` anywhere in the text;
then the extraction and the reference lose commas, dollar signs, everything up to a `#### ` and one
final full stop, are lower-cased, and must be equal as strings: "18.00" is not "18".
- numeric (llmkit's own, more lenient): the last number in the text and the reference compared as
  numbers (thousands separators, a dollar sign, a trailing full stop and trailing zeros of a decimal
  part go: "$1,200.00." and "1200" are the same answer).
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

# lm-evaluation-harness's gsm8k.yaml / gsm8k-cot.yaml: filters, then exact_match's regexes_to_ignore.
LM_EVAL_STRICT = {"####": re.compile(r"#### (\-?[0-9\.\,]+)"),
                  "the answer is": re.compile(r"The answer is (\-?[0-9\.\,]+).")}
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"  # lm-eval's fallback when its regex finds nothing


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


def lm_eval_extract(text: str, pattern: re.Pattern, last: bool = False) -> str:
    """lm-eval's RegexFilter: the first (or last) match; of a match's groups the first non-empty one;
    stripped; "[invalid]" when nothing matches."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[-1 if last else 0]
    if isinstance(match, tuple):
        match = next((group for group in match if group), INVALID)
    return match.strip()


def lm_eval_exact_match(extracted: str, reference: str) -> bool:
    """lm-eval's exact_match with the gsm8k tasks' regexes_to_ignore and ignore_case."""
    for pattern in LM_EVAL_IGNORE:
        extracted, reference = re.sub(pattern, "", extracted), re.sub(pattern, "", reference)
    return extracted.lower() == reference.lower()


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
