"""The one cache folder ($LLMKIT_CACHE, default ~/.cache/llmkit) and a lock for filling it.

Named models, the built-in corpus and downloaded task files are fetched into it on first use. Two
processes may do that first use at the same moment (two `llmkit chat --model smollm2` in two terminals,
two pytest workers): each writes into its own temporary name and renames, so neither ever reads half a
file, but both would download and one would delete the other's staging folder. `cache_lock` makes the
second wait for the first and then find the finished result.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit")  # (empty: the default)


def lock_name(*parts: object) -> str:
    """A lock file name for a thing named by a path or several parts (a short digest: any characters)."""
    return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()[:16]


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock named `name` across processes while filling the cache. Callers check
    again for the finished result once they hold it. An advisory POSIX lock (flock): released by the
    kernel when the holder exits, so a killed download never leaves a stale lock. Not re-entrant: a
    process takes each name once at a time. Where there is no flock (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = cache_root() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
