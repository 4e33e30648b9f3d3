"""A constitution as data: the written principles that Constitutional AI critiques, revises and judges by
(Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", section 3.1 and appendix C).

A constitution is a YAML (or JSON) file with one key, `principles`: a list of mappings, each with
`name` (an identifier), `critique` (the request for a critique of the model's last answer), `revision`
(the request to rewrite it) and `compare` (the judge's question when it chooses between two answers).
llmkit ships `llmkit/presets/constitution/default.yaml` (helpfulness, harmlessness, honesty about what
the model does not know); `--principles FILE` reads the user's own. A bad file is a ConfigError naming
the file, the line and the field.

Which principle a prompt gets is drawn from a hash of (seed, what it is for, the prompt), not from a
shared random stream: the choice, like the sampling seeds derived the same way, does not depend on which
other prompts are in the run, their order or --limit, so a run's output for a prompt equals that
prompt's output run alone (tests/test_constitution.py holds this).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import ConfigError
from llmkit.yaml_config import Located, is_preset_file, list_presets, load_preset, where

FIELDS = ("name", "critique", "revision", "compare")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
DEFAULT = "default"


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # asked after the answer: what is wrong with it under this principle
    revision: str  # asked after the critique: the rewritten answer
    compare: str  # the judge's question between two answers


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str  # the file it was read from

    def pick(self, seed: int, purpose: str, prompt) -> Principle:
        """The principle for `prompt` (text or messages) in `purpose` (e.g. "revise:1", "label")."""
        return self.principles[stable_int(seed, purpose, prompt) % len(self.principles)]


def stable_int(seed: int, purpose: str, prompt) -> int:
    """A 31-bit integer from (seed, purpose, prompt) alone: the same in every run, on every machine
    (Python's hash() of a string changes between processes)."""
    key = json.dumps([seed, purpose, prompt], ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") >> 1


def load_constitution(name_or_path: str | Path = DEFAULT) -> Constitution:
    """A shipped constitution by name (`default`) or the user's YAML/JSON file, checked field by field."""
    name = str(name_or_path)
    if not is_preset_file(name) and Path(name).is_file():  # e.g. `mine.json` or a file without a suffix
        name = "./" + name
    data, path = load_preset("constitution", name, "constitution")
    unknown = sorted(set(data) - {"principles"})
    if unknown:
        raise ConfigError(f"{where(path, data, unknown[0])}: unknown field; a constitution file has one key, "
                          "'principles' (a list of {name, critique, revision, compare})")
    items = data.get("principles")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where(path, data, 'principles' if 'principles' in data else None)}: 'principles' must "
                          "be a non-empty list of {name, critique, revision, compare}")
    principles, seen = [], {}
    for i, item in enumerate(items):
        principles.append(_principle(path, data, i, item))
        name = principles[-1].name
        if name in seen:
            raise ConfigError(f"{where(path, item, 'name')}: principle {i}: name {name!r} is used twice "
                              f"(first as principle {seen[name]}); give each principle its own name")
        seen[name] = i
    return Constitution(tuple(principles), str(path))


def _principle(path: Path, data: Located, i: int, item) -> Principle:
    if not isinstance(item, Located):
        raise ConfigError(f"{where(path, data, 'principles')}: principle {i} must be a mapping of "
                          f"{', '.join(FIELDS)}, not {type(item).__name__}")
    for key in item:
        if key not in FIELDS:
            raise ConfigError(f"{where(path, item, key)}: principle {i}: unknown field; a principle has "
                              f"{', '.join(FIELDS)}")
    for key in FIELDS:
        if key not in item:
            raise ConfigError(f"{where(path, item)}: principle {i}: field {key!r} is missing; a principle has "
                              f"{', '.join(FIELDS)}")
        value = item[key]
        if not isinstance(value, str) or not value.strip():
            hint = "; put it in quotes" if isinstance(value, (bool, int, float)) else ""  # YAML's `true`, `1.5`
            raise ConfigError(f"{where(path, item, key)}: principle {i}: must be a non-empty string, not "
                              f"{json.dumps(value)[:60] if not isinstance(value, str) else repr(value)}{hint}")
    if not NAME.match(item["name"]):
        raise ConfigError(f"{where(path, item, 'name')}: principle {i}: {item['name']!r} is not a name; use letters, "
                          "digits, '-' and '_'")
    return Principle(*(item[key].strip() for key in FIELDS))


def shipped() -> list[str]:
    return list_presets("constitution")
