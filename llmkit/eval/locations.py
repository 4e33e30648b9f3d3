"""Where evaluation data is found: the user's folders (--task-dir, $LLMKIT_EVAL_DATA), the project's
shared data beside a checkout, and the llmkit cache.

The places form one chain, searched in order, as `llmkit eval --help` and the README say: a --task-dir
holding one's own task adds to the other places instead of hiding them (`--tasks core,my_task
--task-dir mine` finds my_task there and the CORE files where they always are), as lm-evaluation-harness's
--include_path adds to its task registry. A file found earlier in the chain wins, so a --task-dir copy of
a task replaces the stored one; each task's results record the file that was read."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.cache import cache_root as llmkit_cache_root
from llmkit.errors import DataError

SHARED_ROOT = Path("..") / "shared" / "data" / "eval"  # relative to the current directory, as a checkout sits
ENV = "LLMKIT_EVAL_DATA"


def cache_root() -> Path:
    """The evaluation files' part of the one llmkit cache ($LLMKIT_CACHE or ~/.cache/llmkit)."""
    return llmkit_cache_root() / "eval"


def user_roots(task_dir: str | Path | None) -> list[tuple[str, Path]]:
    """(what named it, folder): --task-dir, then $LLMKIT_EVAL_DATA, those given. A folder that does not
    exist is refused: it is a typo, and going on would read the task from a later place without a word."""
    roots = []
    if task_dir is not None:
        if not Path(task_dir).is_dir():
            raise DataError(f"--task-dir {task_dir}: no such folder; give the folder that holds the task files")
        roots.append(("--task-dir", Path(task_dir)))
    if os.environ.get(ENV):
        if not Path(os.environ[ENV]).is_dir():
            raise DataError(f"${ENV}={os.environ[ENV]}: no such folder; point it at the folder that holds the "
                            "task files, or unset it")
        roots.append((f"${ENV}", Path(os.environ[ENV])))
    return roots


def search_roots(task_dir: str | Path | None, shared: Path, cache: Path) -> list[Path]:
    """Where files are looked up, in order: --task-dir if given, $LLMKIT_EVAL_DATA if set, the shared data
    beside a checkout (when present), then the cache."""
    return [path for _, path in user_roots(task_dir)] + ([shared] if shared.is_dir() else []) + [cache]
