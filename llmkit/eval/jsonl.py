"""JSON Lines as the evaluation files hold them (GSM8K, HumanEval, MT-Bench questions): one shared loop,
so every reader names a bad line the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from llmkit.errors import DataError, text_lines


def read_utf8(path: Path) -> str:
    """The text of an evaluation file; bytes that are not UTF-8 (a binary or wrongly encoded file) or an
    unreadable file are a DataError naming the file, not a UnicodeDecodeError."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start} is not valid UTF-8; the file is binary or not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def json_lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of `text`, read from `path`; a line that is not
    JSON is a DataError naming path:line and the column."""
    for number, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
