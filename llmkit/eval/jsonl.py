"""JSON Lines as the evaluation files hold them (GSM8K, HumanEval, MT-Bench questions): one shared loop,
so every reader names a bad line the same way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from llmkit.errors import DataError


def json_lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of `text`, read from `path`; a line that is not
    JSON is a DataError naming path:line and the column."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
