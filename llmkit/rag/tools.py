"""Tools a model can call: a name, a description, JSON-schema parameters and a Python callable — the
definition OpenAI's `tools` field carries (`{"type": "function", "function": {name, description,
parameters}}`), plus the function that runs it.

    from llmkit.rag.tools import Tool
    weather = Tool("weather", "Today's weather in a city", {"type": "object", "properties":
                   {"city": {"type": "string"}}, "required": ["city"]}, lambda city: f"sunny in {city}")
    llm.chat(messages, tools=["calculator", weather])

Built-in tools are named by a string: "calculator". `run_call` checks a call's arguments against the
tool's schema (required fields, no unknown fields where `additionalProperties` is false, JSON types)
and runs it; whatever goes wrong comes back as an error text for the model, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmkit.errors import LLMKitError
from llmkit.rag.calculator import calculate

JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "object": (dict,),
              "array": (list,), "null": (type(None),)}
MAX_RESULT_CHARS = 4000  # a tool result the model reads back: bounded so it cannot fill the context


class ToolError(LLMKitError):
    """A tool definition is malformed, or a tool is named that does not exist."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # a JSON schema of the arguments object
    function: Callable[..., Any]  # called with the arguments as keywords; its result is shown as text

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ToolError(f"tool name {self.name!r}: use letters, digits, _ and - (OpenAI's function names)")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise ToolError(f"tool {self.name}: parameters must be a JSON schema of an object")
        if not callable(self.function):
            raise ToolError(f"tool {self.name}: function must be callable")

    def spec(self) -> dict:
        """{name, description, parameters}: the form llmkit/tool_calls.py renders and llmkit/serve/tools.py forces."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def definition(self) -> dict:
        """The OpenAI `tools` entry."""
        return {"type": "function", "function": self.spec()}

    @classmethod
    def from_definition(cls, definition: dict, function: Callable[..., Any]) -> "Tool":
        """A tool from an OpenAI `tools` entry (or its `function` object) and the callable that runs it."""
        spec = definition.get("function", definition) if isinstance(definition, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ToolError("a tool definition is {\"type\": \"function\", \"function\": {\"name\", \"description\", "
                            "\"parameters\"}}")
        return cls(spec["name"], spec.get("description", ""), spec.get("parameters", {"type": "object"}), function)


CALCULATOR = Tool(
    "calculator",
    "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.",
    {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. (327 * 48) + 5"}},
     "required": ["expression"], "additionalProperties": False},
    calculate)

BUILTIN_TOOLS = {"calculator": CALCULATOR}


def resolve_tools(tools: list) -> list[Tool]:
    """Tools given as `Tool`s or names of built-in tools ("calculator"); names must be unique."""
    resolved = []
    for tool in tools:
        if isinstance(tool, str):
            if tool not in BUILTIN_TOOLS:
                raise ToolError(f"unknown tool {tool!r}; built-in tools: {', '.join(sorted(BUILTIN_TOOLS))} "
                                "(or pass a llmkit.rag.tools.Tool)")
            tool = BUILTIN_TOOLS[tool]
        if not isinstance(tool, Tool):
            raise ToolError(f"a tool is a name or a llmkit.rag.tools.Tool, not {type(tool).__name__} "
                            "(Tool.from_definition turns an OpenAI definition and a function into one)")
        resolved.append(tool)
    names = [t.name for t in resolved]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ToolError(f"two tools are named {duplicate!r}; tool names must be unique")
    return resolved


def argument_problem(schema: dict, arguments: dict) -> str | None:
    """What is wrong with a call's arguments under the tool's schema (the top level), or None."""
    # A property's schema may be a boolean (true: anything), and a hand-written schema may hold the wrong
    # JSON type where an object or list belongs: what cannot be read is not checked, rather than raised.
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    missing = [name for name in required if name not in arguments]
    if missing:
        return f"missing argument(s): {', '.join(missing)}"
    if schema.get("additionalProperties") is False:
        unknown = [name for name in arguments if name not in properties]
        if unknown:
            return f"unknown argument(s): {', '.join(unknown)}; the arguments are: {', '.join(properties) or 'none'}"
    for name, value in arguments.items():
        spec = properties.get(name)
        kind = spec.get("type") if isinstance(spec, dict) else None
        kinds = [k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str) and k in JSON_TYPES]
        allowed = tuple(t for k in kinds for t in JSON_TYPES[k])
        bad_bool = isinstance(value, bool) and "boolean" not in kinds
        if allowed and (not isinstance(value, allowed) or bad_bool):
            return f"argument {name!r} must be {' or '.join(kinds)}, not {json.dumps(value)[:40]}"
    return None


def run_call(tools: dict[str, Tool], name: str, arguments: dict) -> tuple[bool, str]:
    """(ok, text for the model) of one call: the tool's result, or what went wrong."""
    tool = tools.get(name)
    if tool is None:
        return False, f"error: there is no tool {name!r}; the tools are: {', '.join(tools) or 'none'}"
    problem = argument_problem(tool.parameters, arguments)
    if problem:
        return False, f"error: {name}: {problem}"
    try:
        result = tool.function(**arguments)
    except Exception as e:  # noqa: BLE001 - a user's tool failing is a message to the model, not a crash
        return False, f"error: {name}: {e}" if isinstance(e, LLMKitError) else f"error: {name}: {type(e).__name__}: {e}"
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"... ({len(text) - MAX_RESULT_CHARS} more characters cut)"
    return True, text
