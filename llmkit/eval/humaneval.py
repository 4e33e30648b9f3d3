"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): pass@k of
completed Python functions, each checked by running its unit tests in the sandbox.

The prompt is the problem's own text (imports, signature, docstring); the model writes the body, and
generation stops where a new top-level statement would begin (`\\nclass`, `\\ndef`, `\\n#`, `\\nif`,
`\\nprint`: the paper's stop sequences, section 3.4, as lm-evaluation-harness's humaneval). The program
run is prompt + completion + the problem's test code + `check(ENTRY_POINT)`; it passes when it runs to
its end within the limits (sandbox.py: an early exit is a failure).

With --chat the problem is put to the assistant as a request to complete the function; its reply's
first fenced code block (or the whole reply) is the code. When that code defines the function itself,
the program is the prompt (for its imports) followed by the code; otherwise the code is read as the
function's body, as without --chat.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmkit.errors import DataError
from llmkit.eval.extract import extract_code
from llmkit.eval.jsonl import json_lines
from llmkit.eval.sandbox import SandboxLimits, SandboxResult, run_python

FIELDS = ("task_id", "prompt", "entry_point", "test")
CHAT_REQUEST = ("Complete the following Python function. Reply with the whole function in one ```python code "
                "block.\n\n```python\n{prompt}```")


def read_problems(path: Path) -> list[dict]:
    """The problems of a HumanEval file (.jsonl or .jsonl.gz)."""
    if not path.is_file():
        raise DataError(f"{path}: no such HumanEval file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as (gzipped) UTF-8 JSONL ({e})") from None
    problems = []
    for number, record in json_lines(path, text):
        missing = [f for f in FIELDS if not isinstance(record, dict) or not isinstance(record.get(f), str)]
        if missing:
            raise DataError(f"{path}:{number}: a HumanEval problem needs string fields {', '.join(FIELDS)}; "
                            f"missing or not a string: {', '.join(missing)}")
        problems.append(record)
    if not problems:
        raise DataError(f"{path}: no problems (the file is empty)")
    return problems


def build_prompt(problem: dict, chat: bool):
    if chat:
        return [{"role": "user", "content": CHAT_REQUEST.format(prompt=problem["prompt"])}]
    return problem["prompt"]


def program(problem: dict, completion: str, chat: bool) -> str:
    """The script that passes exactly when the completion is right."""
    prompt = problem["prompt"]
    if chat:
        code = extract_code(completion)
        defines = re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE)
        body = prompt + "\n" + code if defines else prompt + code
    else:
        body = prompt + completion
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_programs(programs: Sequence[str], limits: SandboxLimits, workers: int | None = None,
                 on_done=None) -> list[SandboxResult]:
    """Each program in the sandbox, `workers` at a time (each is its own process)."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    results: list[SandboxResult | None] = [None] * len(programs)

    def run(i: int) -> None:
        results[i] = run_python(programs[i], limits)
        if on_done is not None:
            on_done(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, range(len(programs))))
    return results  # type: ignore[return-value]


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimator of Chen et al. 2021 (eq. 1): the chance that at least one of k samples,
    drawn without replacement from n of which `correct` pass, passes: 1 - C(n-c, k) / C(n, k), computed
    as a product so that large n does not overflow."""
    if not 0 <= correct <= n or not 1 <= k <= n:
        raise ValueError(f"pass@{k} of {correct} correct out of {n} samples")
    if n - correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - correct + 1, n + 1))
