"""Generative tasks (GSM8K, HumanEval): the model writes, the writing is graded.

    llmkit eval --model smollm2 --tasks gsm8k_zero,gsm8k_direct,gsm8k_cot --limit 200
    llmkit eval --model smollm2 --tasks humaneval              # executes model-written code: see sandbox.py

The task table is llmkit/presets/eval/generative.yaml (shots, exemplar style, stop strings, tokens to
generate). A family's files are looked up as FAMILY/FILE in --task-dir, then $LLMKIT_EVAL_DATA, then
../shared/data/eval (beside a checkout), then the llmkit cache that `llmkit eval --fetch --tasks
gsm8k,humaneval` fills: gsm8k/test.jsonl with gsm8k/train.jsonl (the exemplars), humaneval/HumanEval.jsonl.gz
(or an uncompressed HumanEval.jsonl).

Every generation is greedy, so a run is reproducible and batched == one by one (the engine's tests).
Metrics: GSM8K exact match, strict and flexible (extract.py); HumanEval pass@1. Each with its 95% Wilson
interval, like the log-likelihood tasks' accuracies.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmkit.atomic import atomic_write_bytes
from llmkit.errors import ConfigError, DataError
from llmkit.eval.locations import SHARED_ROOT, cache_root, search_roots

GENERATIVE = "generative"
SETTINGS_FILE = Path(__file__).resolve().parents[1] / "presets" / "eval" / "generative.yaml"
FILES = {"gsm8k": ("gsm8k/test.jsonl", "gsm8k/train.jsonl"),
         "humaneval": ("humaneval/HumanEval.jsonl.gz",)}


@dataclass(frozen=True)
class GenerativeSpec:
    name: str
    family: str  # "gsm8k" | "humaneval"
    files: tuple[Path, ...]  # gsm8k: (test, train); humaneval: (problems,)
    shots: int
    style: str | None  # gsm8k's exemplar style
    max_new_tokens: int
    stop: tuple[str, ...]
    example_delimiter: str
    fewshot_seed: int
    kind: str = GENERATIVE
    delimiter: str = ""
    baseline: float | None = None

    @property
    def path(self) -> Path:
        return self.files[0]


def generative_settings() -> dict:
    return yaml.safe_load(SETTINGS_FILE.read_text())


def generative_task_names() -> list[str]:
    return list(generative_settings()["tasks"])


def data_roots(task_dir: str | Path | None = None) -> list[Path]:
    """Folders holding gsm8k/ and humaneval/, in the order they are searched."""
    return search_roots(task_dir, SHARED_ROOT, cache_root())


def find_files(family: str, task_dir: str | Path | None = None) -> tuple[Path, ...]:
    roots = data_roots(task_dir)
    for root in roots:
        found = []
        for relative in FILES[family]:
            path = root / relative
            if not path.is_file() and path.suffix == ".gz" and path.with_suffix("").is_file():
                path = path.with_suffix("")
            found.append(path)
        if all(p.is_file() for p in found):
            return tuple(found)
    wanted = " and ".join(FILES[family])
    raise DataError(f"task {family}: no {wanted} under {', '.join(str(r) for r in roots)}; pass --task-dir DIR "
                    f"(holding {FILES[family][0].split('/')[0]}/), or fetch them with "
                    f"`llmkit eval --fetch --tasks {family}`")


def generative_spec(name: str, task_dir: str | Path | None, shots: int | None,
                    max_new_tokens: int | None) -> GenerativeSpec:
    settings = generative_settings()
    row = settings["tasks"][name]
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens}: give 1 or more")
    if row["family"] == "humaneval" and shots:
        raise ConfigError(f"--shots {shots}: {name} is zero-shot (the prompt is the function to complete); "
                          "run it in a separate command or drop --shots")
    return GenerativeSpec(name=name, family=row["family"], files=find_files(row["family"], task_dir),
                          shots=row["shots"] if shots is None or row["family"] == "humaneval" else shots,
                          style=row.get("style"), max_new_tokens=max_new_tokens or row["max_new_tokens"],
                          stop=tuple(row["stop"]), example_delimiter=settings["example_delimiter"],
                          fewshot_seed=settings["fewshot_seed"])


# --- fetching (users with internet; never reached by tests) ----------------------------------------------
def fetch_generative_files(dest: str | Path | None, families: list[str]) -> list[Path]:
    """Download the families' files into dest (default: the llmkit cache), each checked against its
    pinned SHA-256; files already there and intact are kept."""
    table = generative_settings()["files"]
    root = Path(dest) if dest is not None else cache_root()
    written = []
    for family in families:
        for relative in FILES[family]:
            url, sha256 = table[relative]["url"], table[relative]["sha256"]
            target = root / relative
            if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
                written.append(target)
                continue
            print(f"downloading {url}", file=sys.stderr)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
            except OSError as e:
                raise DataError(f"could not download {url} ({e}); check your connection, or copy the file to "
                                f"{target} yourself") from None
            if hashlib.sha256(data).hexdigest() != sha256:
                raise DataError(f"{url}: the download's SHA-256 is not the pinned one; not written to {target}")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)  # never a half-written file under the final name
            written.append(target)
    return written
