"""Chat with tools: the model replies, its calls are run, their results go back as `tool` messages, and
the model continues — until it answers without a call or `max_tool_rounds` rounds of calls have run.

Rendering and reading calls is llmkit/tool_calls.py's, shared with the server and SFT data: a template with a tools branch
renders the tools itself, any other gets the documented `<tool_call>{"name", "arguments"}</tool_call>`
fallback; `parse_tool_calls` reads the calls back. There is one format and one parser.

Nothing the model writes crashes the loop: a `<tool_call>` block that does not parse (broken JSON), a
tool that does not exist, arguments that do not fit the schema, or a tool that raises each come back
to the model as an error message, which it may correct in the next round. When the bound is reached,
the loop stops without running the last reply's calls and returns that reply's text
(`finish == "max_tool_rounds"`).

The conversation the loop returns holds the assistant's calls in the chat templates' convention
(`tool_calls[i].function.arguments` an object, as Hugging Face templates expect) and each result as
{"role": "tool", "tool_call_id", "name", "content"}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from llmkit.errors import LLMKitError
from llmkit.rag.tools import Tool, resolve_tools, run_call
from llmkit.tool_calls import OPEN, chat_messages, parse_tool_calls

MALFORMED_CALL = ("error: your tool call could not be read: write exactly "
                  "<tool_call>{\"name\": \"TOOL\", \"arguments\": {...}}</tool_call> with valid JSON")


@dataclass
class ToolChat:
    reply: str  # the assistant's final text (without calls)
    messages: list[dict] = field(default_factory=list)  # the conversation, calls, results and the reply
    rounds: int = 0  # rounds of calls that were run
    calls: int = 0  # calls run (well-formed ones, whether they succeeded or not)
    errors: int = 0  # malformed replies and calls that came back as errors
    finish: str = "answer"  # "answer" | "max_tool_rounds"


def run_tool_loop(generate: Callable[[list[dict], list[dict] | None], str], messages: list[dict], tools: list,
                  template: str | None, max_tool_rounds: int = 4) -> ToolChat:
    """generate(messages for the template, tools for a template with a tools branch or None) -> the reply's
    raw text. tools: `Tool`s or built-in names. Returns the final reply and the whole exchange."""
    if not isinstance(max_tool_rounds, int) or max_tool_rounds < 0:
        raise LLMKitError(f"max_tool_rounds must be an integer >= 0, not {max_tool_rounds!r}")
    resolved: list[Tool] = resolve_tools(tools)
    by_name = {t.name: t for t in resolved}
    specs = [t.spec() for t in resolved]
    result = ToolChat("", [dict(m) for m in messages])
    history = result.messages
    for round_index in range(max_tool_rounds + 1):
        rendered, template_tools = chat_messages(history, specs, "auto", template)
        raw = generate(rendered, template_tools)
        content, calls = parse_tool_calls(raw, set(by_name))
        malformed = not calls and OPEN in raw
        if not calls and not malformed:
            history.append({"role": "assistant", "content": raw})
            result.reply = raw
            return result
        if round_index == max_tool_rounds:  # the bound: this reply's calls are not run
            history.append({"role": "assistant", "content": raw})
            result.reply, result.finish = (content if calls else raw[:raw.find(OPEN)]).strip(), "max_tool_rounds"
            return result
        result.rounds += 1
        if malformed:
            history.append({"role": "assistant", "content": raw})
            history.append({"role": "tool", "tool_call_id": "malformed", "name": "error", "content": MALFORMED_CALL})
            result.errors += 1
            continue
        template_calls = [{"id": c["id"], "type": "function",
                           "function": {"name": c["function"]["name"], "arguments": _arguments(c)}} for c in calls]
        history.append({"role": "assistant", "content": content, "tool_calls": template_calls})
        for call in template_calls:
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            ok, text = run_call(by_name, name, arguments)
            result.calls += 1
            result.errors += not ok
            history.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": text})
    raise AssertionError("unreachable: the last round returns")


def _arguments(call: dict) -> dict:
    return json.loads(call["function"]["arguments"])  # parse_tool_calls wrote it from an object
