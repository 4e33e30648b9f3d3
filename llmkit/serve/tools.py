"""Forced tool calls for the server: tool_choice "required" or a named function constrains decoding
(llmkit/infer/grammar.py) to exactly one `<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>`, ARGS
valid for that function's `parameters` schema; "none" neither shows tools nor reads calls.

Showing tools to the model and reading its calls back (the `<tool_call>` format, `parse_tool_calls`,
`ToolCallStream`) is shared with the tool loop and lives below serve: llmkit/tool_calls.py.
"""

from __future__ import annotations

import json


def forced_call_lark(tools: list[dict], tool_choice, open_tag: str, close_tag: str) -> str | None:
    """A Lark grammar (llguidance's dialect) for exactly one call, or None when nothing is forced.
    open_tag/close_tag: the tags' Lark form (a quoted literal, or `<[id]>` for a special token)."""
    if tool_choice in ("none", "auto"):
        return None
    chosen = [t for t in tools if tool_choice == "required" or t["name"] == tool_choice["name"]]
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    # Compact JSON, as for response_format (grammar.JSON_OPTIONS): a weak model cannot pad it forever.
    schema = {"x-guidance": {"whitespace_flexible": False}, **({"anyOf": calls} if len(calls) > 1 else calls[0])}
    return f"start: {open_tag} call {close_tag}\ncall: %json {json.dumps(schema, ensure_ascii=False)}\n"


def tag_lark(compiler, tag: str) -> str:
    return compiler.special_token(tag) or json.dumps(tag)
