"""Configuration files into checked dataclasses: the one validator and the one preset loader.

Every configuration in llmkit is a dataclass; its values come from YAML (a shipped preset under
`llmkit/presets/KIND/NAME.yaml`, or a user's file), from JSON (a checkpoint's config.json) and from
`field=value` strings on the command line. Whatever the source, a value is checked against the field's
type hint before the dataclass sees it, and an error says where the value came from:

    presets/train/sft-assistant.yaml: line 4: field 'lr': must be float, not 'fast'
    command line: field 'learning_rate': unknown field; the training config takes ...

YAML mappings load as `Located` dicts, which remember the line of each key; values merged in from
elsewhere (the command line) remember that instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from llmkit.errors import ConfigError, first_line

PRESET_ROOT = Path(__file__).resolve().parent / "presets"


class Located(dict):
    """A mapping that remembers where each key was set: its line in a YAML file, or (for keys merged in
    from elsewhere) a description such as "command line"."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict[str, int] = {}
        self.line: int | None = None  # the mapping's own first line
        self.sources: dict[str, str] = {}


class _LineLoader(yaml.SafeLoader):
    pass


# YAML 1.1 (PyYAML) reads `1e-3` (no dot) as a string; YAML 1.2 and a user mean the number, as the
# command line's `lr=1e-3` does (parse_overrides)
_LineLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Located:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:  # the mapping's own keys (a `<<` merge's may be overridden, as YAML says)
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:  # PyYAML keeps the last silently: which one the user meant is not known
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key_node.value!r} appears twice (first on line {seen[key_node.value]}); keep one",
                    problem_mark=key_node.start_mark)
            seen[key_node.value] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    out = Located()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """A YAML file whose mappings are `Located`; a missing file or invalid YAML is a ConfigError with its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:  # a binary or Latin-1 file given as a preset: was a traceback
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load_json(path: str | Path, error: type[Exception] = ConfigError, expect: type = dict) -> Any:
    """A JSON file of a model or data folder, which may come from anywhere: unreadable, not UTF-8, invalid
    JSON or not of the `expect`ed type is one `error` naming the file (and the line)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (invalid UTF-8); the file is corrupt or not JSON") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(data, expect):
        wanted = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise error(f"{path}: expected {wanted}, found {type(data).__name__}")
    return data


def where(path: str | Path, mapping: Any, key: str | None = None) -> str:
    """'FILE: line N: field KEY' (or 'command line: field KEY' for a value merged in from there)."""
    if key is not None and isinstance(mapping, Located) and key in mapping.sources:
        return f"{mapping.sources[key]}: field {key!r}"
    line = None
    if isinstance(mapping, Located):
        line = mapping.lines.get(key, mapping.line) if key is not None else mapping.line
    out = str(path)
    if line is not None:
        out += f": line {line}"
    if key is not None:
        out += f": field {key!r}"
    return out


def origin(path: str | Path, mapping: Any, key: str) -> str:
    """Where `mapping[key]` was set, without the field: 'FILE: line N', a merged-in source, or `path`."""
    if isinstance(mapping, Located):
        if key in mapping.sources:
            return mapping.sources[key]
        if key in mapping.lines:
            return f"{path}: line {mapping.lines[key]}"
    return str(path)


def merged(base: Mapping, path: str | Path, overrides: Mapping, overrides_path: str | Path) -> Located:
    """`base` (read from `path`) with `overrides` (from `overrides_path`) on top; each key keeps its origin."""
    out = Located(base)
    if isinstance(base, Located):
        out.lines, out.line, out.sources = dict(base.lines), base.line, dict(base.sources)
    for key, value in overrides.items():
        out[key] = value
        out.lines.pop(key, None)
        out.sources[key] = origin(overrides_path, overrides, key)
    return out


def matches_type(value: Any, hint: Any) -> bool:
    """Whether a YAML/JSON value fits a type hint: ints pass as floats, bools never pass as numbers,
    lists stand for tuples (JSON and YAML have no tuples), and the items of list[...] / dict[...] are checked."""
    origin_type = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin_type in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin_type in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(matches_type(v, args[0]) for v in value))
    if origin_type is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(matches_type(k, key_hint) and matches_type(v, value_hint)
                                               for k, v in value.items())
    return isinstance(value, hint)


def type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def checked_fields(cls: type, mapping: Mapping, path: str | Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of `mapping` for dataclass `cls`, each checked: an unknown field or a value of the wrong
    type is a ConfigError naming where it was set."""
    hints = typing.get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))
    values = {}
    for key, value in mapping.items():
        if key in skip:
            continue
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where(path, mapping, key)}: unknown field{hint}; known fields: {', '.join(names)}")
        if not matches_type(value, hints[key]):
            raise ConfigError(f"{where(path, mapping, key)}: must be {type_name(hints[key])}, not {value!r}")
        problem = range_problem(cls, key, value)
        if problem:
            raise ConfigError(f"{where(path, mapping, key)}: {problem}")
        values[key] = plain(value)
    return values


# --- declared ranges -------------------------------------------------------------------------------------
# A config class declares the valid range of each numeric field in a `RANGES` class attribute, in interval
# notation: {"lr": "(0, inf)", "dropout": "[0, 1)", "seed": "[0, 2^63)"}. A subclass's RANGES add to (or
# replace entries of) its bases'. `checked_fields` checks each value against it with the value's origin;
# `check_ranges` (called from __post_init__) checks an instance built directly. NaN is never in a range,
# and an integer must fit in 64 bits whatever its range says (numpy and torch hold them as int64).
INT64 = 2**63
_BOUND = r"\s*(-?inf|-?\d+(?:\.\d+)?(?:e-?\d+)?|-?2\^\d+)\s*"
_INTERVAL = re.compile(rf"([\[(]){_BOUND},{_BOUND}([\])])$")


@dataclasses.dataclass(frozen=True)
class Interval:
    text: str
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        return self.text


def _bound(text: str) -> float:
    if text.lstrip("-").startswith("2^"):
        sign = -1 if text.startswith("-") else 1
        return sign * 2 ** int(text.lstrip("-")[2:])
    if text.lstrip("-") == "inf":
        return float(text)
    return float(text) if any(c in text for c in ".e") else int(text)


def interval(text: str) -> Interval:
    """'[0, 1)' -> the half-open interval; bounds are numbers, inf or 2^N."""
    m = _INTERVAL.match(text.strip())
    if not m:
        raise ValueError(f"not an interval: {text!r} (write e.g. '[0, 1)' or '(0, inf)')")
    return Interval(text.strip(), _bound(m.group(2)), _bound(m.group(3)), m.group(1) == "[", m.group(4) == "]")


def field_ranges(cls: type) -> dict[str, Interval]:
    """{field: its declared interval} of a config class, from the RANGES of the class and its bases."""
    cached = cls.__dict__.get("_parsed_ranges")
    if cached is not None:
        return cached
    ranges: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        ranges.update(klass.__dict__.get("RANGES", {}))
    parsed = {name: interval(text) for name, text in ranges.items()}
    setattr(cls, "_parsed_ranges", parsed)
    return parsed


def range_problem(cls: type, name: str, value: Any) -> str | None:
    """What is wrong with `value` for field `name` of `cls` (out of its declared range), or None. For a
    mapping or list of numbers (e.g. mixing weights per source) the range applies to each value."""
    if isinstance(value, dict):
        return next((f"{key!r}: {problem}" for key, item in value.items()
                     if (problem := range_problem(cls, name, item))), None)
    if isinstance(value, (list, tuple)):
        return next((f"item {i}: {problem}" for i, item in enumerate(value)
                     if (problem := range_problem(cls, name, item))), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # None for an optional field, or not a number: the type check speaks for those
    allowed = field_ranges(cls).get(name)
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return f"{_shown(value)} is out of range: must be in {allowed or '[-2^63, 2^63)'}"
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number) or (allowed is not None and (value if isinstance(value, int) else number) not in allowed):
        return f"{_shown(value)} is out of range: must be in {allowed or '(-inf, inf)'}"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:6]}...({len(text)} digits)"


def check_ranges(config: Any) -> None:
    """Every numeric field of a config instance within its declared range; a ConfigError naming the first
    that is not (for instances built directly: values from files and the command line were checked with
    their origin by checked_fields)."""
    for name in field_ranges(type(config)):
        problem = range_problem(type(config), name, getattr(config, name, None))
        if problem:
            raise ConfigError(f"field {name!r}: {problem}")


def plain(value: Any) -> Any:
    """`value` with every Located mapping in it turned back into a plain dict (the config keeps no origins)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def build_dataclass(cls: type, mapping: Mapping, path: str | Path, skip: tuple[str, ...] = ()) -> Any:
    """An instance of dataclass `cls` from a mapping (see checked_fields). A ValueError or TypeError of
    its own checks becomes a ConfigError naming the mapping; a ConfigError it raises passes through."""
    values = checked_fields(cls, mapping, path, skip)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where(path, mapping)}: {e}") from None


def parse_overrides(pairs: list[str], source: str = "command line") -> Located:
    """`field=value` strings -> a Located dict whose keys remember `source`. Values are parsed as YAML, so
    `lr=3e-4` is a float, `plot=false` a bool and `data_records=[0,100]` a list."""
    out = Located()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {pair!r} is not of the form field=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: override {pair!r}: the value is not valid YAML "
                              f"({first_line(e)}); quote it, e.g. {key}='\"...\"'") from None
        if re.fullmatch(r"\s*[-+]?0[0-9_]+\s*", raw):
            # YAML 1.1 reads a leading 0 as octal: seed=010 was 8, data=007 the number 7 (and 08 a float)
            raise ConfigError(f"{source}: override {pair!r}: a number with a leading 0 reads as octal in YAML; "
                              f"write it without the 0s, or quote it for text ({key}='\"{raw.strip()}\"')")
        if isinstance(value, str) and not raw.strip().startswith(("'", '"')):  # quoted: the user means text
            try:  # YAML 1.1 reads "5e-3" (no dot) and "inf" as strings; a user means the number
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
        out.sources[key.strip()] = source
    return out


# --- presets ---------------------------------------------------------------------------------------------
def list_presets(kind: str) -> list[str]:
    """The names of the presets shipped in llmkit/presets/KIND/."""
    return sorted(p.stem for p in (PRESET_ROOT / kind).glob("*.yaml"))


def is_preset_file(name: str) -> bool:
    """A preset given as a path (it has a folder separator or a .yaml/.yml suffix), not a shipped name."""
    return "/" in name or os.sep in name or name.endswith((".yaml", ".yml"))


def preset_path(kind: str, name: str, what: str) -> Path:
    """llmkit/presets/KIND/NAME.yaml for a name; for a path (see is_preset_file) the user's own YAML file.
    A name that is not shipped, or a path with no file, is a ConfigError listing the shipped ones."""
    if is_preset_file(name):
        path = Path(name)
        if not path.is_file():
            problem = "a folder, not a YAML file" if path.is_dir() else "no such file"
            raise ConfigError(f"{what} {name!r}: {problem}; give a path to a YAML file of fields, or the name "
                              f"of a shipped one: {', '.join(list_presets(kind))}")
        return path
    path = PRESET_ROOT / kind / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {what} {name!r}; available: {', '.join(list_presets(kind))} "
                          "(or a path to your own YAML file, e.g. ./mine.yaml)")
    return path


def load_preset(kind: str, name: str, what: str) -> tuple[Located, Path]:
    """(the preset's mapping, its path); see preset_path."""
    path = preset_path(kind, name, what)
    data = load_yaml(path)
    if data is None:
        data = Located()
    if not isinstance(data, Located):
        raise ConfigError(f"{path}: expected a mapping of fields, found {type(data).__name__}")
    return data, path
