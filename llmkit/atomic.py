"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file to stream into that appears at `path` whole, or not at all:

        with atomic_open(out / "part.jsonl") as f:
            for line in lines:
                f.write(line)

    Writes go to a hidden temporary sibling (same directory, so the rename cannot cross file systems).
    On a clean exit it is flushed, fsynced (the rename must not reach the disk before the data) and
    renamed over `path`; on an exception it is removed and an existing file at `path` is left as it was.
    `mode` is "wb" or "w" (text mode defaults to UTF-8); the file object also goes to writers that take
    one (np.save, torch.save, savefig with format=)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target."""
    with atomic_open(path, "wb") as f:
        f.write(data)


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
