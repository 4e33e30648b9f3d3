"""A config dataclass's fields as help text, from the dataclass itself: each field's default and the
comment written beside it (or on the lines just above it), grouped under the class's `# -- SECTION`
comments. `llmkit pretrain --help` (and every training verb's) ends with this table, so the comment a
field is documented with in the code is the one a user reads; tests check every field has one.

A subclass that re-declares a field without a comment (a different default) keeps the base class's
comment and section.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import shutil
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any


@dataclass
class FieldDoc:
    name: str
    default: Any
    meaning: str
    section: str


def field_docs(cls: type) -> list[FieldDoc]:
    """The fields of dataclass `cls` in declaration order, with their defaults, meanings and sections."""
    meanings: dict[str, str] = {}
    sections: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first: a subclass's own comment wins
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        for name, (meaning, section) in _class_comments(klass).items():
            if meaning:
                meanings[name] = meaning
                if section or name not in sections:
                    sections[name] = section
    docs = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        docs.append(FieldDoc(f.name, default, meanings.get(f.name, ""), sections.get(f.name, "")))
    return docs


def _class_comments(klass: type) -> dict[str, tuple[str, str]]:
    """{field: (its comment, the section it is declared under)} from the class's source."""
    try:
        lines, _ = inspect.getsourcelines(klass)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}  # line (1-based) -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    body = ast.parse(source).body[0].body
    out: dict[str, tuple[str, str]] = {}
    section = ""
    previous_end = 0
    for node in body:
        # the section headers between the previous statement and this one
        for line in range(previous_end + 1, node.lineno):
            text = comments.get(line, "")
            if text.startswith("-- ") and line not in code_lines:
                section = text[3:].split(":", 1)[0].strip()
        previous_end = node.end_lineno
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        meaning = comments.get(node.end_lineno, "") if node.end_lineno in code_lines else ""
        if not meaning:  # the comment lines directly above, when they are not a section header
            above, line = [], node.lineno - 1
            while line in comments and line not in code_lines and not comments[line].startswith("-- "):
                above.insert(0, comments[line])
                line -= 1
            meaning = " ".join(above)
        out[node.target.id] = (meaning, section)
    return out


def show_value(value: Any) -> str:
    """A value as a user writes it after `field=` (YAML): true, null, [a, b], 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def fields_help(cls: type, preset: dict | None = None, preset_name: str | None = None, width: int | None = None) -> str:
    """The help table of `cls`'s fields: name, default (and the preset's value where it sets another), meaning."""
    width = width or min(shutil.get_terminal_size((110, 24)).columns, 140)
    preset = preset or {}
    docs = field_docs(cls)
    name_width = max(len(d.name) for d in docs) + 2
    lines = ["configuration fields (give them after the options as field=value; model fields as "
             "model.FIELD=value):"]
    if preset_name:
        lines.append(f"  the default, then [the value preset {preset_name} sets] where it sets another")
    by_section: dict[str, list[FieldDoc]] = {}
    for doc in docs:
        by_section.setdefault(doc.section, []).append(doc)
    indent = 4 + name_width + 18  # where the meanings start
    for section, section_docs in by_section.items():
        lines += ["", f"  {section or 'other'}:"]
        for doc in section_docs:
            value = show_value(doc.default)
            if doc.name in preset and preset[doc.name] != doc.default:
                value += f" [{show_value(preset[doc.name])}]"
            head = f"    {doc.name:<{name_width}}{value}"
            if len(head) + 2 > indent:  # a long value: the meaning on the lines below
                lines.append(head)
                head = ""
            lines += textwrap.wrap(doc.meaning, width, initial_indent=head.ljust(indent),
                                   subsequent_indent=" " * indent) or [head]
    variant = preset.get("fp32_cpu")  # llmkit.train.config.FP32_CPU_KEY (not imported: help stays light)
    if isinstance(variant, dict) and variant:
        shown = ", ".join(f"{k}={show_value(v)}" for k, v in variant.items())
        lines += [""] + textwrap.wrap(f"On a CPU that trains in fp32 (no AVX512-BF16 or AMX), preset {preset_name} sets "
                                      f"instead: {shown} (fields given on the command line still win).", width,
                                      initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines) + "\n"
