"""Command-line numbers with a declared range, as argparse types: `type=int_in("[1, 2^31)")`.

The interval notation and its check are the config files' (llmkit.yaml_config), so an option and a config
field say "out of range" the same way; argparse turns the error into its one usage line and exit status 2:

    llmkit rag search: error: argument --k: 0 is out of range: must be in [1, 2^31)
"""

from __future__ import annotations

import argparse
import math

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
