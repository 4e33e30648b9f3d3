"""Where evaluation data is found: the project's shared data beside a checkout, and the llmkit cache."""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.cache import cache_root as llmkit_cache_root

SHARED_ROOT = Path("..") / "shared" / "data" / "eval"  # relative to the current directory, as a checkout sits


def cache_root() -> Path:
    """The evaluation files' part of the one llmkit cache ($LLMKIT_CACHE or ~/.cache/llmkit)."""
    return llmkit_cache_root() / "eval"


def search_roots(task_dir: str | Path | None, shared: Path, cache: Path) -> list[Path]:
    """Where task files are looked up, in order: --task-dir alone if given, else $LLMKIT_EVAL_DATA
    alone if set, else the shared data beside a checkout (when present) and then the cache."""
    if task_dir is not None:
        return [Path(task_dir)]
    if os.environ.get("LLMKIT_EVAL_DATA"):
        return [Path(os.environ["LLMKIT_EVAL_DATA"])]
    return ([shared] if shared.is_dir() else []) + [cache]
