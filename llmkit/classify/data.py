"""Labelled text for classification: TSV (`text<TAB>label`, one example a line, a header line optional) or
JSON Lines (`{"text": ..., "label": ...}`). Labels are names (strings); a JSON number or boolean label
becomes its text ("1", "true"), so the GLUE files' 0/1 read the same from TSV and JSONL.

Every bad row stops the read with `FILE:LINE: what is wrong; what to do` (a DataError): a classifier
trained on silently dropped or shifted rows would report an accuracy of data it never saw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError, text_lines

TEXT_HEADERS = ("text", "sentence")  # GLUE's SST-2 TSV calls its text column "sentence"


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    where: str  # FILE:LINE, for messages about this example


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a .tsv or .jsonl file (by its suffix; another suffix: JSONL if its first
    non-blank character is `{`, else TSV)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a TSV (text<TAB>label) or JSONL ({{\"text\", \"label\"}}) file")
    try:
        # utf-8-sig: a byte-order mark (what Excel and Notepad put first in a "UTF-8" file) is not text;
        # read as text it would glue itself to the header's first field, which then reads as an example
        # (its label "label" a class of its own) or, in JSONL, as a JSON error on line 1
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # (utf-8-sig counts its offsets after the mark: the file's own are wanted)
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(f"{path}: not UTF-8 text (byte {start}); save the file as UTF-8") from None
    suffixes = "".join(path.suffixes[-1:]).lower()
    if suffixes in (".jsonl", ".json") or (suffixes not in (".tsv", ".txt") and text.lstrip().startswith("{")):
        examples = _jsonl_examples(path, text)
    else:
        examples = _tsv_examples(path, text)
    if not examples:
        raise DataError(f"{path}: holds no examples; give one text and its label a line")
    return examples


def _tsv_examples(path: Path, text: str) -> list[Example]:
    out = []
    for number, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected text<TAB>label (2 tab-separated fields), found {len(fields)}; "
                            "write one tab between the text and its label (a tab inside a text: use JSONL)")
        sentence, label = fields[0].strip(), fields[1].strip()
        if not out and number == _first_line(text) and sentence.lower() in TEXT_HEADERS and label.lower() == "label":
            continue  # the header line
        out.append(_example(path, number, sentence, label))
    return out


def _first_line(text: str) -> int:
    for number, line in enumerate(text_lines(text), 1):
        if line.strip():
            return number
    return 0


def _jsonl_examples(path: Path, text: str) -> list[Example]:
    from llmkit.eval.jsonl import json_lines

    out = []
    for number, record in json_lines(path, text):
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise DataError(f"{path}:{number}: expected an object with \"text\" and \"label\"; write "
                            "{\"text\": \"...\", \"label\": \"...\"} on each line")
        sentence, label = record["text"], record["label"]
        if not isinstance(sentence, str):
            raise DataError(f"{path}:{number}: \"text\" is a {type(sentence).__name__}, not a string")
        if isinstance(label, bool):
            label = "true" if label else "false"
        elif isinstance(label, (int, float)) and not isinstance(label, bool):
            if not math.isfinite(label):  # (Python's json reads NaN and Infinity): "nan" would be a class
                raise DataError(f"{path}:{number}: \"label\" is {label}; give a string or a finite number")
            label = str(int(label)) if float(label).is_integer() else str(label)
        elif not isinstance(label, str):
            raise DataError(f"{path}:{number}: \"label\" is a {type(label).__name__}; give a string or a number")
        out.append(_example(path, number, sentence.strip(), label.strip()))
    return out


def _example(path: Path, number: int, sentence: str, label: str) -> Example:
    if not sentence:
        raise DataError(f"{path}:{number}: the text is empty; remove the line or give it a text")
    if not label:
        raise DataError(f"{path}:{number}: the label is empty; give every example a label")
    return Example(sentence, label, f"{path}:{number}")


def label_names(examples: list[Example]) -> list[str]:
    """The labels found, in a stable order: numerically when every label is an integer (0 < 1 < 10), else
    alphabetically. A label's index in this list is its output of the classifier's head."""
    names = {e.label for e in examples}
    if all(_is_int(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def label_indices(examples: list[Example], labels: list[str]) -> list[int]:
    """Each example's label as its index in `labels`; a label outside them is a DataError at its line."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for e in examples:
        if e.label not in index:
            raise DataError(f"{e.where}: label {e.label!r} is not one of the classifier's labels "
                            f"({', '.join(labels)}); fix the row or train with this label")
        out.append(index[e.label])
    return out


def subsample(examples: list[Example], n: int, seed: int) -> list[Example]:
    """n examples drawn without replacement (seeded; file order kept), or all of them when n is 0 or
    at least their number."""
    if not n or n >= len(examples):
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]

