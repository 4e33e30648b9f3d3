"""Multi-turn chat in the terminal: the reply streams token by token, the history is kept and
re-rendered with the checkpoint's chat template every turn. /reset forgets the history, /exit quits.

A conversation that outgrows the model's context keeps going: the oldest turns are dropped (never the
system prompt), and the chat says so. A message too long to fit even alone is refused with its size;
the session and its history stay as they were.

With a retriever (`llmkit chat --rag INDEX`) each turn retrieves for the user's message and answers from
the numbered passages (llmkit/rag/chat.py), then prints the sources the reply cites. With tools
(`--tools calculator,search`) each turn runs the tool loop (llmkit/rag/tool_loop.py): the calls and
their results are printed as they ran, then the reply; the history keeps them."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from llmkit.api import LLM
from llmkit.errors import LLMKitError
from llmkit.rag.chat import fit_retrieval, source_lines

REPLY_ROOM = 256  # tokens kept free for the reply (a quarter of the context at most)


def prompt_counter(llm: LLM, tools: list | None = None):
    """messages -> the prompt's length in tokens, rendered as the turn will be: with tools, as the tool
    loop renders them (tool results and calls in the template's form, the tools' descriptions included)."""
    if not tools:
        return lambda messages: len(llm.tokenizer.encode_chat(messages))
    from llmkit.rag.tools import resolve_tools
    from llmkit.tool_calls import chat_messages

    specs = [tool.spec() for tool in resolve_tools(tools)]

    def count(messages: list[dict]) -> int:
        rendered, template_tools = chat_messages(messages, specs, "auto", llm.tokenizer.chat_template)
        return len(llm.tokenizer.encode_chat(rendered, tools=template_tools))
    return count


def fit_to_context(llm: LLM, messages: list[dict], reply_room: int, count=None) -> tuple[list[dict], int]:
    """Drop the oldest turns after any system prompt until the rendered conversation leaves
    `reply_room` tokens of the context free. Returns (messages, how many were dropped); raises
    ValueError with the token count when the last message alone (with the system prompt) does not fit.
    count: messages -> prompt tokens (`prompt_counter`; default: the plain chat template)."""
    count = count or prompt_counter(llm)
    context = llm.model.text_context
    room = min(reply_room, context // 4)
    keep_from = 1 if messages and messages[0]["role"] == "system" else 0
    dropped = 0
    while True:
        size = count(messages)
        if size + room <= context:
            return messages, dropped
        if len(messages) - keep_from <= 1:
            raise ValueError(f"that message makes a prompt of {size} tokens, and the model's context is {context} "
                             f"({room} kept for the reply); shorten it")
        # a user turn and the reply to it go together, so the history still starts with a user turn
        cut = 2 if len(messages) - keep_from > 2 and messages[keep_from + 1]["role"] == "assistant" else 1
        messages = messages[:keep_from] + messages[keep_from + cut:]
        dropped += cut


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def run_chat(llm: LLM, system: str | None = None, sampling: dict | None = None,
             stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, retriever=None, tools: list | None = None,
             max_tool_rounds: int = 4, failed: list[str] | None = None) -> list[dict]:
    """retriever: a `llmkit.rag.chat.Retriever` (answers from passages); tools: tool names or `Tool`s.
    A turn that is refused or fails is shown and the session goes on; its message is appended to `failed`
    (the CLI's exit status when the input was a script rather than a person)."""
    sampling = sampling or {}
    reply_room = sampling.get("max_new_tokens") or REPLY_ROOM
    interactive = stdin.isatty()
    if hasattr(stdin, "reconfigure"):  # a line that is not UTF-8 is refused alone, not the whole session
        stdin.reconfigure(errors="surrogateescape")
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    count = prompt_counter(llm, tools)
    if interactive:
        print("Chatting with the model. /reset clears the history, /exit (or Ctrl-D) quits.", file=stdout)
    while True:
        if interactive:
            print("\n> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if not _is_utf8(text):  # bytes that were not UTF-8, kept as surrogates (see above)
            print("(that line was not valid UTF-8 text; type it again)", file=stdout, flush=True)
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = messages[:1] if system else []
            print("(history cleared)", file=stdout)
            continue
        try:
            messages = _turn(llm, messages, text, count, reply_room, retriever, tools, max_tool_rounds, sampling,
                             stdout)
        except (ValueError, LLMKitError) as e:  # this turn is refused or failed; the session and history stay
            print(f"({e})", file=stdout, flush=True)
            if failed is not None:
                failed.append(str(e))
    return messages


def _turn(llm: LLM, messages: list[dict], text: str, count, reply_room: int, retriever, tools, max_tool_rounds: int,
          sampling: dict, stdout: TextIO) -> list[dict]:
    """One user turn: the history fitted to the context, the reply streamed; returns the new history."""
    fitted, dropped = fit_to_context(llm, messages + [{"role": "user", "content": text}], reply_room, count)
    if dropped:
        print(f"(the conversation outgrew the model's context of {llm.model.text_context} tokens: "
              f"the oldest {dropped} messages were dropped)", file=stdout, flush=True)
    if tools:
        return _tool_turn(llm, fitted, tools, max_tool_rounds, sampling, stdout)
    shown, passages = fitted, None
    if retriever is not None:
        shown, passages = _retrieval_prompt(llm, fitted, retriever, reply_room)
    reply = []
    for piece in llm.chat_stream(shown, **sampling):
        reply.append(piece)
        print(piece, end="", file=stdout, flush=True)
    print(file=stdout, flush=True)
    fitted = fitted + [{"role": "assistant", "content": "".join(reply).strip()}]
    if passages is not None:
        print("Sources:" if passages else "(no passages retrieved)", file=stdout)
        for source in source_lines(fitted[-1]["content"], passages):
            print(source, file=stdout)
        stdout.flush()
    return fitted


def _retrieval_prompt(llm: LLM, messages: list[dict], retriever, reply_room: int):
    hits = retriever.search(messages[-1]["content"])
    return fit_retrieval(lambda shown: len(llm.tokenizer.encode_chat(shown)), llm.model.text_context, messages, hits,
                         min(reply_room, llm.model.text_context // 4))


def _tool_turn(llm: LLM, messages: list[dict], tools: list, max_tool_rounds: int, sampling: dict,
               stdout: TextIO) -> list[dict]:
    """One turn through the tool loop: each call and its result printed, then the reply; the history
    returned holds the calls and results."""
    result = llm.chat_with_tools(messages, tools, max_tool_rounds, **sampling)
    for message in result.messages[len(messages):]:
        for call in message.get("tool_calls") or []:
            print(f"[calls {call['function']['name']}({json.dumps(call['function']['arguments'])})]", file=stdout)
        if message["role"] == "tool":
            print(f"[{message['name']} -> {message['content']}]", file=stdout)
    print(result.reply.strip(), file=stdout)
    if result.finish == "max_tool_rounds":
        print(f"(stopped after {max_tool_rounds} rounds of tool calls)", file=stdout)
    stdout.flush()
    history = result.messages
    history[-1] = {"role": "assistant", "content": result.reply.strip()}  # the final reply, without a cut call
    return history
