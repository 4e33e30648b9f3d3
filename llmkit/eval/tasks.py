"""Benchmark tasks as files: the three JSONL shapes of the Mosaic Eval Gauntlet, where they are found,
how they are run (shots, delimiter), and how a user with internet fetches them.

One JSON object a line, one of three shapes:
- multiple choice    {"query", "choices": [...], "gold": i}            score query + delimiter + each choice
- schema             {"context_options": [...], "continuation", "gold"}  score the shared continuation
                                                                        after each context (WinoGrande)
- language modelling {"context", "continuation"}                        right when greedy decoding
                                                                        reproduces the continuation

`--tasks core` is DCLM's CORE suite with its published settings (llmkit/presets/eval/core.yaml).
The generative tasks' names (gsm8k, gsm8k_cot, humaneval, ...) come from generative.py, which finds
their files its own way; `parse_task_list` and `fetch_tasks` take both kinds.
A task name is looked up as NAME.jsonl in, in order: --task-dir, $LLMKIT_EVAL_DATA (each, or its core/
subfolder: a folder laid out as ../shared/data/eval, with core/, gsm8k/, humaneval/, serves every task),
../shared/data/eval/core (relative to the current directory) when present, then the llmkit cache, where
`llmkit eval --fetch` writes (locations.py says why a chain).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmkit.atomic import atomic_write_bytes
from llmkit.errors import ConfigError, DataError, text_lines
from llmkit.eval.generative import (GenerativeSpec, fetch_generative_files, generative_settings, generative_spec,
                                    generative_task_names)
from llmkit.eval.jsonl import read_utf8
from llmkit.eval.locations import SHARED_ROOT, cache_root, user_roots

MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELING = "multiple_choice", "schema", "language_modeling"
KINDS = (MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELING)
CORE_FILE = Path(__file__).resolve().parents[1] / "presets" / "eval" / "core.yaml"
SHARED_DIR = SHARED_ROOT / "core"  # the project's shared data, beside a checkout
DEFAULT_SHOTS, DEFAULT_DELIMITER = 0, " "


@dataclass(frozen=True)
class TaskSpec:
    """How one task is run. baseline: the random-guess accuracy (a fraction) of a CORE task, else None."""

    name: str
    path: Path
    kind: str
    shots: int
    delimiter: str
    example_delimiter: str
    fewshot_seed: int
    baseline: float | None = None


def core_settings() -> dict:
    """The CORE table: {"source", "example_delimiter", "fewshot_seed", "tasks": {name: {...}}}."""
    return yaml.safe_load(CORE_FILE.read_text())


def core_task_names() -> list[str]:
    return list(core_settings()["tasks"])


def cache_dir() -> Path:
    return cache_root() / "core"


def search_dirs(task_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """(what named it, folder) where task names are looked up, in order."""
    dirs = []
    for label, root in user_roots(task_dir):
        dirs += [(label, root)] + ([(label, root / "core")] if (root / "core").is_dir() else [])
    if SHARED_DIR.is_dir():
        dirs.append(("the shared data", SHARED_DIR))
    return dirs + [("the cache --fetch fills", cache_dir())]


def find_task_file(name: str, task_dir: str | Path | None = None) -> Path:
    dirs = search_dirs(task_dir)
    for _, directory in dirs:
        if (directory / f"{name}.jsonl").is_file():
            return directory / f"{name}.jsonl"
    where = ", ".join(f"{d} ({label})" for label, d in dirs)
    known = ({"core", *core_task_names(), *generative_task_names()}
             | {p.stem for _, d in dirs if d.is_dir() for p in d.glob("*.jsonl")}) - {name}  # not itself
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"did you mean {close[0]}? Else " if close else ""
    fetch = "; or fetch the CORE files with `llmkit eval --fetch`" if name in core_task_names() else ""
    raise DataError(f"task {name!r}: no {name}.jsonl in {where}; {hint}pass --task-dir DIR (a folder holding "
                    f"{name}.jsonl) or the file's path{fetch}")


def parse_task_list(tasks: str, task_dir: str | Path | None = None, shots: int | None = None,
                    max_new_tokens: int | None = None) -> list[TaskSpec | GenerativeSpec]:
    """`core`, task names and .jsonl paths, comma-separated, as TaskSpecs; the generative tasks' names
    (gsm8k, gsm8k_cot, humaneval, ...: llmkit/presets/eval/generative.yaml) as GenerativeSpecs. A CORE
    task runs at its published shots and delimiter; any other file at 0 shots with a space; --shots
    overrides both. max_new_tokens: the generative tasks' budget (default: the table's)."""
    if shots is not None and shots < 0:
        raise ConfigError(f"--shots {shots}: give 0 or more examples")
    settings = core_settings()
    table = settings["tasks"]
    generative = generative_task_names()
    specs: list[TaskSpec | GenerativeSpec] = []
    for item in (t.strip() for t in tasks.split(",")):
        if not item:
            continue
        names = list(table) if item == "core" else [item]
        for name in names:
            if name in generative:
                specs.append(generative_spec(name, task_dir, shots, max_new_tokens))
                continue
            path = Path(name)
            if name.endswith(".jsonl") or path.is_file():
                if not path.is_file():
                    raise DataError(f"{path}: no such task file")
                name = path.stem
            else:
                path = find_task_file(name, task_dir)
            row = table.get(name, {})
            kind = detect_kind(path)
            if row and row["kind"] != kind:
                raise DataError(f"{path}: holds {kind} examples but the CORE task {name} is {row['kind']}")
            read_examples(path, kind)  # every line checked now, before a model loads, not when the task's turn comes
            specs.append(TaskSpec(
                name=name, path=path, kind=kind,
                shots=shots if shots is not None else row.get("shots", DEFAULT_SHOTS),
                delimiter=row.get("delimiter", DEFAULT_DELIMITER),
                example_delimiter=settings["example_delimiter"], fewshot_seed=settings["fewshot_seed"],
                baseline=row["baseline"] / 100 if row else None))
    if not specs:
        raise ConfigError(f"--tasks {tasks!r}: name at least one task (core, arc_easy, FILE.jsonl, ...)")
    seen = [s.name for s in specs]
    duplicate = next((n for n in seen if seen.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"--tasks: {duplicate} is named twice")
    return specs


# --- reading --------------------------------------------------------------------------------------------
def kind_of(record: dict) -> str | None:
    if "choices" in record and "query" in record:
        return MULTIPLE_CHOICE
    if "context_options" in record:
        return SCHEMA
    if "context" in record and "continuation" in record:
        return LANGUAGE_MODELING
    return None


def task_text(path: Path) -> str:
    """A task file's text without the byte-order mark Windows editors put first: JSON has none, and the
    file's first line would otherwise be refused as not JSON."""
    return read_utf8(path).removeprefix("\ufeff")


def detect_kind(path: Path) -> str:
    for number, line in enumerate(text_lines(task_text(path)), 1):
        if line.strip():
            return _kind_or_error(_parse_line(line, path, number), path, number)
    raise DataError(f"{path}: no examples (the file is empty)")


def _kind_or_error(record: dict, path: Path, number: int) -> str:
    kind = kind_of(record)
    if kind is None:
        raise DataError(f"{path}:{number}: not a task example; expected {{query, choices, gold}}, "
                        f"{{context_options, continuation, gold}} or {{context, continuation}}, "
                        f"got fields {sorted(record)}")
    return kind


def _parse_line(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def read_examples(path: Path, kind: str) -> list[dict]:
    """The file's examples, checked, with their top-level strings stripped of surrounding whitespace
    (Mosaic's datasets strip them by default: piqa's queries end in a newline the delimiter supplies)."""
    examples = []
    text = task_text(path)
    for number, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        record = _parse_line(line, path, number)
        found = _kind_or_error(record, path, number)
        if found != kind:
            raise DataError(f"{path}:{number}: a {found} example in a file of {kind} examples")
        _check(record, kind, path, number)
        examples.append({k: v.strip() if isinstance(v, str) else v for k, v in record.items()})
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def _check(record: dict, kind: str, path: Path, number: int) -> None:
    def fail(message: str):
        raise DataError(f"{path}:{number}: {message}")

    def strings(field: str) -> list[str]:
        value = record.get(field)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            fail(f'"{field}" must be a non-empty list of strings')
        return value

    def string(field: str) -> str:
        if not isinstance(record.get(field), str):
            fail(f'"{field}" must be a string')
        return record[field]

    if kind == LANGUAGE_MODELING:
        string("context")
        if not string("continuation").strip():
            fail('"continuation" is empty; a language-modelling example needs text to reproduce')
        return
    field = "choices" if kind == MULTIPLE_CHOICE else "context_options"
    options = strings(field)
    if len(options) < 2:  # a lone option is always the model's pick: the example would count as right
        fail(f'"{field}" has 1 option; an example needs 2 or more to choose between')
    if kind == MULTIPLE_CHOICE:
        string("query")
    elif not string("continuation").strip():
        # what is scored would be the delimiter alone: which context ends better in a space is no question
        fail('"continuation" is empty; a schema example scores it after each context')
    gold = record.get("gold")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
        fail(f'"gold" must be an index into the {len(options)} options, got {gold!r}')


# --- fetching (users with internet; never reached by tests) ---------------------------------------------
def fetch_tasks(dest: str | Path | None = None, names: list[str] | None = None) -> list[Path]:
    """Download task files: CORE tasks by name (all of them when names is None) and the files of the
    generative tasks named (gsm8k/, humaneval/ under dest or the cache)."""
    generative = generative_settings()["tasks"]
    core = None if names is None else [n for n in names if n not in generative]
    families = sorted({generative[n]["family"] for n in names or [] if n in generative})
    written = fetch_core_tasks(dest, core) if core is None or core else []
    return written + (fetch_generative_files(dest, families) if families else [])


def fetch_core_tasks(dest: str | Path | None = None, names: list[str] | None = None) -> list[Path]:
    """Download CORE task files from the pinned llm-foundry commit into dest (default: the cache),
    each checked against its SHA-256; files already there and intact are kept."""
    settings = core_settings()
    table, source = settings["tasks"], settings["source"]
    names = names or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"cannot fetch {', '.join(unknown)}: not a CORE task; known: {', '.join(table)}")
    dest = Path(dest) if dest is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        row = table[name]
        target = dest / f"{name}.jsonl"
        if target.is_file() and _sha256(target.read_bytes()) == row["sha256"]:
            written.append(target)
            continue
        url = source["url"].format(commit=source["commit"], path=row["path"])
        print(f"downloading {url}", file=sys.stderr)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except OSError as e:
            raise DataError(f"could not download {name} from {url} ({e}); check your connection, or copy the "
                            f"file to {target} yourself") from None
        if _sha256(data) != row["sha256"]:
            raise DataError(f"{url}: the download's SHA-256 is not the pinned one; not written to {target}")
        atomic_write_bytes(target, data)  # never a half-written file under the final name
        written.append(target)
    return written


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
