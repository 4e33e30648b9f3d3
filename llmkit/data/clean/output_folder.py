"""The output folder of `llmkit data clean`: whether OUT may be written (empty, or a previous run's output,
never a user's files), one run at a time (a lock on OUT), and the swap that replaces the previous output
with the new one only when it is complete (OUT/.work holds the run's scratch and the swap's plan).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from llmkit.atomic import atomic_open
from llmkit.data.clean.report import is_clean_report
from llmkit.errors import DataError

OUTPUTS = ("train", "anneal", "report")  # what a run writes into OUT, and replaces there at its end


WORK_MARKER = "llmkit-data-clean"  # made in OUT/.work before anything else: the folder is a run's scratch
# What a run (of this or an earlier version, which wrote no marker) puts in .work, temporary files included.
_WORK_NAMES = re.compile(r"\.?(?:output|replaced|swap\.json|clusters\.jsonl|near_(?:valid|keys)\.npy|p1-\d+\.jsonl"
                         r"|sig-\d+\.(?:meta\.npy|sig\.npy|bands\.npy|ids\.jsonl)|drop-\d+\.npy|"
                         + re.escape(WORK_MARKER) + r")(?:\.tmp-\d+)?")


def _is_our_workdir(workdir: Path) -> bool:
    if not workdir.is_dir() or workdir.is_symlink():
        return False
    return (workdir / WORK_MARKER).exists() or all(_WORK_NAMES.fullmatch(p.name) for p in workdir.iterdir())


def _lock_out(out: Path) -> int | None:
    """An exclusive lock (flock) on the folder OUT, held while the run lives and released by the kernel however
    it ends: a second run into the same OUT would take the first's .work for a killed run's scratch and
    delete it. The open descriptor, or None where there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataError(f"{out}: another `llmkit data clean` is writing this output now; wait for it to finish, "
                        "or choose another --out") from None
    return fd


def prepare_out(out: Path) -> tuple[bool, int | None]:
    """OUT is ours if empty or made by a previous run (it has our report/report.json, or the .work folder of
    a killed one); then its previous output is replaced when the new one is complete (`swap_in`). Anything
    else is refused rather than mixed with our shards: the names alone (a user's `report/report.json` beside
    their `train/`, their own `.work/`) are not proof, or a run would delete the user's files. Returns
    whether OUT was created here, and the lock on OUT (`_lock_out`) for the caller to close at the end."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is a file; --out must be a directory (new, empty, or a previous output)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output directory ({e.strerror}); choose another --out") from None
    lock = _lock_out(out)
    try:
        _check_out_is_ours(out)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return created, lock


def _check_out_is_ours(out: Path) -> None:
    if any(out.iterdir()):
        report, work = out / "report" / "report.json", out / ".work"
        if report.exists() and not is_clean_report(report):
            raise DataError(f"{report}: is not a report of `llmkit data clean`, so {out} is not a previous output "
                            "that a run may replace; choose an empty or new --out directory")
        if (work.exists() or work.is_symlink()) and not _is_our_workdir(work):
            raise DataError(f"{work}: holds files that `llmkit data clean` did not write, and a run deletes its "
                            "scratch folder OUT/.work; choose an empty or new --out directory")
        if not report.exists() and not work.exists():
            raise DataError(f"{out}: exists and is not the output of a previous `llmkit data clean`; "
                            "choose an empty or new --out directory")
        if work.exists():  # the scratch of a killed run: the output only if killed mid-swap
            _finish_swap(out, out / ".work")
            shutil.rmtree(out / ".work")


SWAP_PLAN = "swap.json"  # in OUT/.work: which outputs a swap replaces, written before its first rename


def _finish_swap(out: Path, workdir: Path) -> None:
    """A run killed inside `swap_in` left one whole output only in .work (the previous one moved aside,
    or the new one not yet moved in): finish its swap. The plan is written once the new output is
    complete, so rolling forward is always possible; without a plan no rename had happened."""
    try:
        plan = json.loads((workdir / SWAP_PLAN).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(plan, dict):
        return
    staged, replaced = workdir / "output", workdir / "replaced"
    moved = False
    for name in [n for n in plan.get("old", []) if n in OUTPUTS]:  # not yet moved aside: the previous run's
        if (out / name).exists() and not (replaced / name).exists():
            replaced.mkdir(exist_ok=True)
            os.replace(out / name, replaced / name)
            moved = True
    for name in [n for n in plan.get("new", []) if n in OUTPUTS]:  # not yet moved in
        if (staged / name).exists():
            os.replace(staged / name, out / name)
            moved = True
    (workdir / SWAP_PLAN).unlink(missing_ok=True)  # done: what .work still holds is scratch
    if moved:
        print(f"{out}: finished moving in the output of a run killed while it did so", file=sys.stderr)


def swap_in(staged: Path, out: Path, workdir: Path) -> None:
    """Replace OUT's previous train/anneal/report with the complete new ones built in `staged` (inside
    OUT/.work, so on the same file system: renames only). The old report goes first and the new one comes
    last: a run killed in between leaves .work and no report.json, which `llmkit data prepare` refuses as
    unfinished; before that, OUT holds the previous output whole. Other files in OUT are left alone. An
    error (or Ctrl-C) between the renames puts the previous output back before the caller clears .work; a
    kill leaves the plan (SWAP_PLAN), and the next run into OUT finishes the swap before anything else."""
    replaced = workdir / "replaced"
    replaced.mkdir()
    plan = {"old": [n for n in OUTPUTS if (out / n).exists()], "new": [n for n in OUTPUTS if (staged / n).exists()]}
    with atomic_open(workdir / SWAP_PLAN, "w", encoding="utf-8") as f:  # a kill from here on: _finish_swap
        json.dump(plan, f)
    moved_out, moved_in = [], []
    try:
        for name in reversed(OUTPUTS):
            if (out / name).exists():
                os.replace(out / name, replaced / name)
                moved_out.append(name)
        for name in OUTPUTS:
            if (staged / name).exists():
                os.replace(staged / name, out / name)
                moved_in.append(name)
    except BaseException:
        for name in moved_in:
            os.replace(out / name, staged / name)
        for name in moved_out:
            os.replace(replaced / name, out / name)
        (workdir / SWAP_PLAN).unlink(missing_ok=True)  # OUT is as it was: nothing for a next run to finish
        raise
    # Swapped: the plan goes before .work is deleted (the old output with it), or a kill during that
    # deletion would leave a plan that moves the new output aside.
    (workdir / SWAP_PLAN).unlink()
