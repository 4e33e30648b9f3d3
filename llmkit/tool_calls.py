"""Tool calls in text: tools shown to the model, its calls read back out of its reply — the one format
and the one parser that the tool loop (llmkit/rag/tool_loop.py, `llm.chat(tools=...)`), the server
(llmkit/serve: tool calls on /v1/chat/completions, streamed or not) and SFT data with `tool_calls` and
`tool` turns (llmkit/train/chat_data.py) share. It sits beside tokenizer.py, below all three, because it
is part of rendering a conversation: it imports nothing from llmkit.

Showing tools. A chat template with a tools branch (one that uses a `tools` variable, as Qwen's, Llama
3.1's and Hermes-style templates do) renders them itself: it gets OpenAI's tool list as `tools`, earlier
calls as each assistant message's `tool_calls` (arguments as objects, the Hugging Face convention) and
results as `tool` messages. Any other template gets the fallback, which needs only system, user and
assistant turns:

- the system turn gains the tool descriptions (one JSON object per line inside <tools></tools>) and the
  calling convention: reply with <tool_call>{"name": ..., "arguments": {...}}</tool_call>;
- an assistant turn that called tools shows those calls in that form after its text;
- a `tool` message becomes a user turn holding <tool_response>RESULT</tool_response>.

Reading calls. `parse_tool_calls` finds <tool_call> blocks (each a JSON object or a list of them, a
block left open at the end of the reply is read too) and, failing that, a reply that is only a JSON call
of a declared function (Llama 3.1's bare-JSON form; "parameters" is read as "arguments"). A reply whose
blocks do not parse is returned as plain content. `ToolCallStream` does the same incrementally: it
shows content as it comes, holds back whatever may be the start of a call, and hands over the calls
when the reply ends, so streamed content and calls equal the non-streamed ones.

Forcing a call (tool_choice "required" or a named function) is the server's: llmkit/serve/tools.py.
"""

from __future__ import annotations

import json
import re
import uuid

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOLS_BRANCH = re.compile(r"\btools\b")
FALLBACK_INSTRUCTIONS = (
    "You can call functions. Their descriptions, one JSON object per line:\n<tools>\n{tools}\n</tools>\n"
    "To call one, reply with <tool_call>{{\"name\": \"FUNCTION\", \"arguments\": {{...}}}}</tool_call> "
    "(several calls: one block each). Each result comes back as <tool_response>RESULT</tool_response>.")


def has_tools_branch(template: str | None) -> bool:
    return bool(template) and bool(TOOLS_BRANCH.search(template))


def openai_tools(tools: list[dict]) -> list[dict]:
    return [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                              "parameters": t["parameters"]}} for t in tools]


def chat_messages(messages: list[dict], tools: list[dict], tool_choice, template: str | None) \
        -> tuple[list[dict], list[dict] | None]:
    """The messages for the chat template and the tools to pass it (None: the template is not told)."""
    show = bool(tools) and tool_choice != "none"
    if has_tools_branch(template):
        return messages, openai_tools(tools) if show else None
    out = []
    for message in messages:
        if message["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>{message['content']}</tool_response>"})
        elif message.get("tool_calls"):
            calls = "".join(f"{OPEN}{call_json(c['function']['name'], c['function']['arguments'])}{CLOSE}"
                            for c in message["tool_calls"])
            out.append({"role": message["role"], "content": message["content"] + calls})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    if show:
        described = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        instructions = FALLBACK_INSTRUCTIONS.format(tools=described)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out, None


def call_json(name: str, arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def _calls_in(blob: str) -> list[tuple[str, dict]] | None:
    """(name, arguments) of each call in a JSON object or list of them; None if it is not that."""
    blob = blob.strip()
    try:  # RecursionError: a reply of thousands of "[" is the model's text, not a call (and no crash)
        value, _ = json.JSONDecoder().raw_decode(blob)
    except (ValueError, RecursionError):
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append((item["name"], arguments))
    return calls or None


def parse_tool_calls(text: str, names: set[str]) -> tuple[str, list[dict]]:
    """(content, calls in OpenAI's form) of a reply; calls == [] means the whole text is content."""
    start = text.find(OPEN)
    if start == -1:
        found = _calls_in(text) if text.lstrip()[:1] in ("{", "[") else None
        if found and all(name in names for name, _ in found):
            return "", [_openai_call(name, args) for name, args in found]
        return text, []
    calls = []
    for block in text[start:].split(OPEN)[1:]:
        found = _calls_in(block.split(CLOSE, 1)[0])
        if found is None:
            return text, []
        calls += [_openai_call(name, args) for name, args in found]
    return text[:start], calls


def _openai_call(name: str, arguments: dict) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


class ToolCallStream:
    """A reply's text as it streams: the content that can be shown now; the calls at the end."""

    def __init__(self, names: set[str]):
        self.names = names
        self.text = ""
        self.sent = 0  # characters of content handed out

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.text.lstrip()[:1] in ("{", "["):  # may be a bare JSON call: wait for the end
            return ""
        end = self.text.find(OPEN)
        if end == -1:  # hold back a tail that may be the start of <tool_call>
            end = len(self.text)
            for n in range(min(len(OPEN) - 1, len(self.text)), 0, -1):
                if self.text.endswith(OPEN[:n]):
                    end -= n
                    break
        out = self.text[self.sent:max(end, self.sent)]
        self.sent += len(out)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(the rest of the content, the calls) once the reply is complete."""
        content, calls = parse_tool_calls(self.text, self.names)
        return content[self.sent:], calls
