"""Forced tool calls for the server: tool_choice "required" or a named function constrains decoding
(llmkit/infer/grammar.py) to exactly one `<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>`, ARGS
valid for that function's `parameters` schema; "none" neither shows tools nor reads calls.

Showing tools to the model and reading its calls back (the `<tool_call>` format, `parse_tool_calls`,
`ToolCallStream`) is shared with the tool loop and lives below serve: llmkit/tool_calls.py.
"""

from __future__ import annotations

import json

from llmkit.serve.protocol import bad

# Compact JSON, as for response_format (grammar.JSON_OPTIONS): a weak model cannot pad it forever.
COMPACT = {"whitespace_flexible": False}


def check_tools(tools: list[dict]) -> None:
    """Refuse a function whose `parameters` is not an object schema (OpenAI's rule too): its arguments could
    never be read as a call (parse_tool_calls takes objects), so a forced call would come back as text."""
    for i, tool in enumerate(tools):
        kind = tool["parameters"].get("type", "object")
        if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
            raise bad(f"tools[{i}].function.parameters", f"must be a JSON schema of type \"object\" (the arguments "
                      f"are an object of named values), not type {json.dumps(kind)}")


def forced_call_lark(tools: list[dict], tool_choice, open_tag: str, close_tag: str) -> str | None:
    """A Lark grammar (llguidance's dialect) for exactly one call, or None when nothing is forced.
    open_tag/close_tag: the tags' Lark form (a quoted literal, or `<[id]>` for a special token).

    The call's frame, {"name":NAME,"arguments":...}, is Lark text and each function's arguments its own
    `%json` of the `parameters` schema as given: that schema stays the root of its own document, so its
    references ("#/$defs/...", "#" for a recursive schema) resolve inside it. Embedded in one schema of
    the whole call they would resolve against the call object (a missing $defs: a 400 for a valid tool;
    "#": arguments nesting whole calls)."""
    if tool_choice in ("none", "auto"):
        return None
    chosen = [t for t in tools if tool_choice == "required" or t["name"] == tool_choice["name"]]
    rules = []
    for i, tool in enumerate(chosen):
        # an object, even where the schema leaves the type open (a bare anyOf, $ref or {})
        arguments = {"x-guidance": COMPACT, **tool["parameters"]}
        arguments.setdefault("type", "object")
        head = json.dumps('{"name":' + json.dumps(tool["name"], ensure_ascii=False) + ',"arguments":',
                          ensure_ascii=False)
        rules.append(f"call_{i}: {head} arguments_{i} \"}}\"\n"
                     f"arguments_{i}: %json {json.dumps(arguments, ensure_ascii=False)}\n")
    alternatives = " | ".join(f"call_{i}" for i in range(len(chosen)))
    return f"start: {open_tag} call {close_tag}\ncall: {alternatives}\n" + "".join(rules)


def tag_lark(compiler, tag: str) -> str:
    return compiler.special_token(tag) or json.dumps(tag)
