"""Names the config, the readers and the stages all use, kept in a leaf module (it imports nothing
else of `llmkit.data.clean`) so that none of them has to import another for them: the folder of the
shipped presets, the description of an input, and the import of a package of the `clean` extra.

The cleaning stack (trafilatura, warcio, pyarrow, py3langid, Dask) is an optional extra
(`pip install 'llmkit[clean]'`): loading, generating, chatting and training never import it, and a
cleaning step that needs a missing package stops with one line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from llmkit.errors import LLMKitError

PRESET_DIR = Path(__file__).resolve().parents[2] / "presets" / "clean"

# The packages of the `clean` extra (pyproject.toml), by the top-level module llmkit imports.
CLEAN_EXTRA = {"trafilatura": "trafilatura", "warcio": "warcio", "pyarrow": "pyarrow",
               "py3langid": "py3langid", "dask": "dask[distributed]", "distributed": "dask[distributed]"}


@dataclass
class InputSpec:
    """An input: files or directories of text, JSONL, Parquet, HTML or WARC."""

    path: str
    source: str = "default"  # the name mixing weights and the report use
    format: str = "auto"  # auto (by file suffix) | text | jsonl | parquet | html | warc
    text_field: str = "text"  # JSONL field / Parquet column holding the text
    id_field: str = "id"  # JSONL field / Parquet column holding an id (optional)


class MissingExtraError(LLMKitError):
    """A package of the optional `clean` extra is not installed."""


def _missing_extra(needed_by: str, missing: Iterable[str]) -> MissingExtraError:
    # The message is the only argument, so the error pickles back from a worker process unchanged.
    names = ", ".join(dict.fromkeys(CLEAN_EXTRA.get(m.split(".")[0], m) for m in missing))
    return MissingExtraError(f"{needed_by} needs the `clean` extra: pip install 'llmkit[clean]' (missing: {names})")


def import_extra(module: str, needed_by: str) -> ModuleType:
    """`importlib.import_module(module)`, or a MissingExtraError naming the extra when it (or a package
    it needs, e.g. lxml_html_clean under trafilatura) is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise _missing_extra(needed_by, [e.name or module]) from None


def require_extra(modules: Iterable[str], needed_by: str) -> None:
    """Check, without importing them, that `modules` are installed; one error naming every missing one.
    Run before work starts, so a run stops before it clears its output or starts workers."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise _missing_extra(needed_by, missing)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):  # a finder that refuses the name; a half-imported module
        return False
