"""Where evaluation data is found: the project's shared data beside a checkout, and the llmkit cache."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ROOT = Path("..") / "shared" / "data" / "eval"  # relative to the current directory, as a checkout sits


def cache_root() -> Path:
    # the same root as every llmkit cache (models, corpora): $LLMKIT_CACHE or ~/.cache/llmkit
    return Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit")) / "eval"
