"""What a user types, checked before any work: command-line numbers with a declared range, as argparse
types (`type=int_in("[1, 2^31)")`), arguments that are not UTF-8, and the LLMKIT_* environment variables.

The interval notation and its check are the config files' (llmkit.yaml_config), so an option and a config
field say "out of range" the same way; argparse turns the error into its one usage line and exit status 2:

    llmkit rag search: error: argument --k: 0 is out of range: must be in [1, 2^31)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from pathlib import Path

COUNT = "[1, 2^31)"  # how many of something (passages, tokens, rows): at least one, and an index fits in 32 bits
SEED = "[0, 2^63)"  # a seed as numpy and torch hold it
SIGNED_SEED = "[-2^63, 2^63)"  # a seed that is only hashed (any 64-bit integer)


def int_in(bounds: str):
    """An argparse type: an integer inside `bounds` (interval notation, e.g. "[0, 2^63)")."""

    def parse(text: str) -> int:
        allowed = _interval(bounds)
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value not in allowed:
            shown = text if len(text) <= 24 else f"{text[:6]}...({len(text)} digits)"
            raise argparse.ArgumentTypeError(f"{shown} is out of range: must be in {allowed}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return parse


def float_in(bounds: str):
    """An argparse type: a number inside `bounds`; NaN never is."""

    def parse(text: str) -> float:
        allowed = _interval(bounds)
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if math.isnan(value) or value not in allowed:
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be in {allowed}")
        return value

    parse.__name__ = "number"
    return parse


def _interval(bounds: str):
    # imported when an option is parsed, not when the parser is built: `llmkit --help` imports no YAML
    from llmkit.yaml_config import interval

    return interval(bounds)


def undecodable_argument(argv: list[str]) -> str | None:
    """The first argument that was not valid UTF-8 (Python keeps its bytes as lone surrogates, which
    the tokenizer, JSON files and the terminal would each reject later, in their own way), shown safely."""
    for position, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            return f"argument {position} '{shown}' is not valid UTF-8; give text and paths in UTF-8"
    return None


# The LLMKIT_* switches and the values their code reads (README): any other value silently meant the default,
# e.g. LLMKIT_HUGE_PAGES=off left huge pages on (huge_pages.py tests for "0" alone). Empty reads as unset.
ENV_SWITCHES = {
    "LLMKIT_CPU_KERNELS": ("0", "1", "auto"),  # cpu_kernels.py: off, forced on, by the CPU
    "LLMKIT_HUGE_PAGES": ("0", "1"),  # infer/huge_pages.py
    "LLMKIT_TOKEN_STEP": ("0", "1"),  # infer/token_step.py
}


def environment_problem(environ: Mapping[str, str]) -> str | None:
    """What is wrong with the LLMKIT_* environment variables, or None: a switch set to a value its code
    does not read, or an $LLMKIT_CACHE of spaces alone (cache.py would make a folder of that name) or a file."""
    for name, allowed in ENV_SWITCHES.items():
        value = environ.get(name, "")
        if value and value not in allowed:
            return (f"environment variable {name}={value!r} is not a value llmkit reads: set it to "
                    f"{' or '.join(allowed)}, or unset it")
    cache = environ.get("LLMKIT_CACHE", "")  # empty reads as unset, as cache.py's cache_root reads it
    if cache and not cache.strip():
        return (f"environment variable LLMKIT_CACHE={cache!r} is only spaces, which would make a folder named so "
                "llmkit's cache: unset it (the cache is then ~/.cache/llmkit) or set it to a folder")
    if cache and Path(cache).exists() and not Path(cache).is_dir():
        return f"environment variable LLMKIT_CACHE={cache!r} is a file, not a folder: set it to a folder, or unset it"
    return None
