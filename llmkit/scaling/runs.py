"""DIR/runs.jsonl: one finished training run per line.

Required per line: `params` (N), `tokens` (D), `flops` (C) and `val_loss` (nats per token), all positive
numbers. A sweep also writes `name`, `budget` (the nominal C the run belongs to), `val_bpb`, `epochs`,
`wall_s`, `train_s` and the model shape; a file written by hand from other runs needs only the four.
Lines are appended by rewriting the whole file atomically: a sweep killed mid-write leaves the file as it
was before that run, never a torn line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import DataError, text_lines

RUNS_FILE = "runs.jsonl"
REQUIRED_FIELDS = ("params", "tokens", "flops", "val_loss")
OPTIONAL_NUMBERS = ("budget", "val_bpb", "epochs", "wall_s", "train_s", "params_total", "flops_per_token")


def _positive_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def parse_run(line: str, where: str) -> dict:
    """One line of runs.jsonl, checked; `where` is `file:line` for the error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one object "
                        'like {"params": 1e6, "tokens": 2e7, "flops": 1.2e14, "val_loss": 3.1}') from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON {type(record).__name__}, not an object; each line must be one object "
                        "with params, tokens, flops and val_loss")
    for field in REQUIRED_FIELDS:
        if field not in record:
            raise DataError(f"{where}: field '{field}' is missing; every run needs params, tokens, flops and "
                            "val_loss (fix or delete the line)")
        if not _positive_number(record[field]):
            raise DataError(f"{where}: field '{field}' is {record[field]!r}; it must be a positive finite number "
                            "(fix or delete the line)")
    for field in OPTIONAL_NUMBERS:
        if field in record and record[field] is not None and not _positive_number(record[field]):
            raise DataError(f"{where}: field '{field}' is {record[field]!r}; it must be a positive finite number "
                            "or absent (fix or delete the line)")
    return record


def read_runs(path: str | Path) -> list[dict]:
    """Every run of a runs.jsonl (blank lines skipped), each line checked; a bad line stops with file:line:field."""
    path = Path(path)
    if path.is_dir():
        path = path / RUNS_FILE
    if path.exists() and not path.is_file():  # a device or a pipe: "no such file" would send the user looking
        raise DataError(f"{path}: not a regular file; give a sweep directory or a runs.jsonl file")
    if not path.is_file():
        raise DataError(f"{path}: no such file; run `llmkit scaling sweep --out {path.parent}` first, or write one "
                        "JSON object per run with params, tokens, flops and val_loss")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); runs.jsonl holds one JSON object per line") from None
    return [parse_run(line, f"{path}:{number}") for number, line in enumerate(text_lines(text), 1) if line.strip()]


def append_run(path: str | Path, record: dict) -> None:
    """Add one run: the file is rewritten whole through a temporary sibling (a crash keeps the old file)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")
