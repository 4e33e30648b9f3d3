"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from llmkit.errors import OutputError


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
    path = writable_target(path)
    remove_leftovers(path, "tmp")
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


def writable_target(path: str | Path) -> Path:
    """Where an atomic write of `path` renames its file: through a symlink to the file it names (renaming
    over the link would cut it), and never over something that is not a regular file. Renamed over,
    `/dev/full` or a named pipe would stop being a device or a pipe (as root, for the whole machine)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "a device, pipe or socket"
        raise OutputError(f"{path}: is {kind}, not a regular file; llmkit writes a file by renaming a complete "
                          "copy into place: choose a file path")
    parent = path.parent
    if not parent.is_dir():  # said of the user's path, not of the hidden temporary file written first
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{path}: the directory {parent} {what}; create it or choose another path")
    return path


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


@contextmanager
def staged_directory(out: str | Path, *, overwrite: bool = False, ours=None, what: str = "the output") -> Iterator[Path]:
    """A directory written whole or not at all, that never replaces a user's files unasked:

        with staged_directory(args.out, overwrite=args.overwrite) as folder:
            save_checkpoint(folder, model, tokenizer)

    An `out` that exists and holds files is refused unless `overwrite` is set or `ours(out)` says it is
    this command's own earlier output (e.g. token shards with their manifest). Files are written into a
    hidden sibling folder, flushed to disk, and renamed into place at the end; an exception removes it,
    and leftovers of killed runs are removed first (`.NAME.partial-*`; a `.NAME.old-*` that a run killed
    between its two renames left while `out` is missing is the previous output, and is put back)."""
    out = Path(out)
    if out.parent.is_dir():
        try:
            for old in _leftovers(out, "old")[:1] if not out.exists() else []:
                os.replace(old, out)
            remove_leftovers(out, "partial", "old")
        except OSError as e:
            raise OutputError(f"{out}: cannot tidy what a killed run left beside it ({e.strerror}); "
                              "choose another --out") from None
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is a file; {what} is a directory: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not (ours and ours(out)):
        raise OutputError(f"{out}: exists and holds files that {what} would replace; choose a new or empty --out, "
                          "or pass --overwrite to replace them")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.parent / f".{out.name}.partial-{os.getpid()}"
        partial.mkdir()
    except OSError as e:
        raise OutputError(f"{out}: cannot write there ({e.strerror}); choose another --out") from None
    try:
        yield partial
        fsync_tree(partial)
        if out.exists():  # os.replace cannot replace a non-empty directory: move the old one aside first
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def overlapping_input(out: str | Path, inputs) -> str | Path | None:
    """The first of `inputs` that is `out`, holds it or lies inside it, else None: a folder a verb fills
    or replaces must not be one it reads (a previous output read as input, or the inputs deleted)."""
    resolved = Path(out).resolve()
    for item in inputs:
        root = Path(item).resolve()
        if root == resolved or root in resolved.parents or resolved in root.parents:
            return item
    return None


def make_output_dir(out: str | Path, ours=None, what: str = "the output") -> Path:
    """`out` created (with its parents) for a verb that writes into it as it runs (a training run's
    checkpoints and metrics): a file in the way, a read-only or missing filesystem is an OutputError
    before any work, not an OSError after it. With `ours` (a test of a folder: is it this verb's own
    earlier output?), a folder holding other files (a model, a user's data) is refused too."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is a file; the output is a directory: choose another --out")
    if ours is not None and out.is_dir() and any(out.iterdir()) and not ours(out):
        raise OutputError(f"{out}: holds files that are not {what}; llmkit does not write among a user's files: "
                          "choose a new or empty --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".llmkit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{out}: cannot write there ({e.strerror or e}); choose another --out") from None
    return out


def _leftovers(path: Path, *kinds: str) -> list[Path]:
    """Hidden siblings `.NAME.KIND-PID` of `path` left by processes that no longer run (a killed run's, not
    a running one's: two runs may write beside each other)."""
    return [stale for kind in kinds for stale in sorted(path.parent.glob(f".{path.name}.{kind}-*"))
            if not _process_alive(stale.name.rpartition("-")[2])]


def remove_leftovers(path: str | Path, *kinds: str) -> None:
    """Remove what killed runs left beside `path` while writing it: `.NAME.tmp-PID` files of atomic_open,
    `.NAME.partial-PID` files or folders of staged writes and downloads."""
    for stale in _leftovers(Path(path), *kinds):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            try:
                stale.unlink(missing_ok=True)
            except OSError:  # tidying is best effort: the write itself will say if the folder is unwritable
                pass


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
