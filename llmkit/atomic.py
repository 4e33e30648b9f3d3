"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(directory: str | Path) -> None:
    """Flush every file under a directory, and the directory entries, to disk before it is renamed
    into place: after a power cut the renamed directory then holds whole files, not empty ones."""
    directory = Path(directory)
    for path in sorted(directory.rglob("*"), reverse=True):  # files before the folders that list them
        _fsync_path(path)
    _fsync_path(directory)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside `directory` durable."""
    _fsync_path(Path(directory))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
