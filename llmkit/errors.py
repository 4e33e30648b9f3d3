"""Errors a user can cause, and how the command line ends on one.

Each message says what was wrong, where (file, line, field) and what to do. The CLI prints the message
on one line and exits with status 2, without a traceback (DESIGN.md, Conventions); a Ctrl-C ends with one
line and status 130, a closed reader of its output (`llmkit ... | head -1`) quietly.
"""

import errno
import os
import sys
from pathlib import Path


class LLMKitError(Exception):
    """Base class: anything the user can fix by changing their input or command."""


class ConfigError(LLMKitError):
    """A configuration file or override is malformed (unknown field, wrong type, bad value)."""


class CheckpointError(LLMKitError):
    """A checkpoint directory is missing a file, is corrupt, or does not fit its config."""


class ConversionError(LLMKitError):
    """A foreign checkpoint (GGUF, Hugging Face) uses something we cannot import or export."""


class TokenizerError(LLMKitError):
    """A tokenizer file is missing or malformed, or a chat template cannot be applied."""


class GenerationError(LLMKitError):
    """A generation request cannot be served (prompt too long, bad sampling parameter)."""


class DataError(LLMKitError):
    """An input data file is malformed (bad JSONL line, missing field)."""


class TrainingError(LLMKitError):
    """Training diverged (a loss that is not finite): the settings or the data, not the code, are to blame."""


class OutputError(LLMKitError):
    """An output location cannot be written, or holds files the command would replace without being told to."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line, for a one-line error (its type's name if it has none:
    `str(e).splitlines()[0]` fails on an empty message)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def os_error_message(error: OSError) -> str:
    """An OSError as one line: the path, the system's words, and for a full disk what to do (outputs are
    written atomically, so finished ones and checkpoints are intact; a write to an open file names no path)."""
    where = f"{error.filename}: " if error.filename else ""
    hint = {errno.ENOSPC: "; free disk space (or choose an --out on another disk) and run the command again: "
                          "finished outputs and checkpoints are intact (a training run: add --resume)",
            errno.EDQUOT: "; the disk quota is used up: free space and run the command again"}.get(error.errno, "")
    return f"{where}{error.strerror or error}{hint}"


def text_lines(text: str) -> list[str]:
    """A file's lines as editors and JSON Lines number them: split at "\n" only ("\r\n" keeps a "\r",
    which JSON and strip() ignore). `str.splitlines` also splits at U+2028, U+2029, U+0085 and other
    separators that JSON strings hold unescaped (json.dumps(ensure_ascii=False) writes them as they are):
    a valid record would be cut in two and the line numbers after it would be wrong."""
    return text.split("\n")


# Said wherever log-probabilities come out NaN or inf (llmkit.load's score, benchmark scoring): a score, and
# an accuracy made from it, would be silently wrong.
NOT_FINITE_SCORES = ("the model's log-probabilities are not finite (NaN or inf): its weights hold NaN/inf values, "
                     "or a low-precision dtype overflowed (try --dtype float32); the checkpoint needs retraining or "
                     "repair")


# --- how the command line ends (llmkit/cli.py main) -------------------------------------------------------
def say(line: str) -> None:
    """One line on stderr; a closed stderr (`2>&1 | head -1`) must not turn into a traceback or status 120."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        discard_output(sys.stderr)


def flush_output() -> None:
    """Flush stdout, which is None where the command ran with it closed (`llmkit ... >&-`): print() then writes
    nothing, and a flush must not turn a run that worked into a traceback and status 1."""
    if sys.stdout is not None:
        sys.stdout.flush()


def discard_output(stream=None) -> None:
    """Point stdout (or `stream`) at /dev/null once its reader is gone (`llmkit ... | head -1`) or a write to
    it failed: Python's flush at exit would print 'Exception ignored ... BrokenPipeError' and exit with 120."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stream with no descriptor (tests capture it in memory)
        pass


def interrupted(interrupt: KeyboardInterrupt, out: str | None, resumable: bool) -> str:
    """The line a Ctrl-C ends with: what the verb said it kept (the KeyboardInterrupt's message), or for a
    training run (`resumable`, writing to `out`) the checkpoint --resume continues from. Outputs are
    written whole or not at all (atomic.py), so nothing half-written needs naming."""
    if str(interrupt) or not (out and resumable):
        return str(interrupt) or "interrupted (Ctrl-C)"
    latest = Path(out) / "checkpoints" / "latest"
    try:
        step = latest.parent / latest.read_text(errors="replace").strip()
    except OSError:  # none yet (or unreadable: --resume will say so)
        return f"interrupted (Ctrl-C) before a checkpoint was saved in {out} (ckpt_every=N saves one every N steps)"
    return f"interrupted (Ctrl-C); the same command with --resume continues from {step}"
