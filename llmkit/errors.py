"""Errors a user can cause.

Each message says what was wrong, where (file, line, field) and what to do. The CLI prints the message
on one line and exits with status 2, without a traceback (DESIGN.md, Conventions).
"""


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
