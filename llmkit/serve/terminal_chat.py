"""Multi-turn chat in the terminal: the reply streams token by token, the history is kept and
re-rendered with the checkpoint's chat template every turn. /reset forgets the history, /exit quits."""

from __future__ import annotations

import sys
from typing import TextIO

from llmkit.api import LLM


def run_chat(llm: LLM, system: str | None = None, sampling: dict | None = None,
             stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> list[dict]:
    sampling = sampling or {}
    interactive = stdin.isatty()
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
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
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = messages[:1] if system else []
            print("(history cleared)", file=stdout)
            continue
        messages.append({"role": "user", "content": text})
        reply = []
        for piece in llm.chat_stream(messages, **sampling):
            reply.append(piece)
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
        messages.append({"role": "assistant", "content": "".join(reply).strip()})
    return messages
