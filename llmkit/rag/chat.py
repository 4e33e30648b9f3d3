"""Retrieval and tools for a conversation, turn by turn: what `llmkit chat --rag/--tools` and
`llmkit serve --rag` add to each turn.

A retrieval turn: the user's message is the query; the model sees the conversation so far with the
last user turn replaced by the numbered passages and the question (answer.py's layout, ALCE-style
citations) and the citation instruction as the system turn (after the user's own system prompt,
if any). The history keeps what the user typed, not the passages: each turn retrieves afresh, and
old passages do not crowd the context. Passages that do not fit beside the reply are dropped from the
lowest-ranked up.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.errors import GenerationError
from llmkit.rag.answer import SYSTEM_PROMPT, RagAnswer, rag_messages
from llmkit.rag.index import Hit, RagIndex
from llmkit.rag.tools import Tool


@dataclass
class Retriever:
    """An index and how to search it: k passages, a mode (None: the index's default), an embedder for dense."""
    index: RagIndex
    k: int = 5
    mode: str | None = None
    embedder: object = None

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        return self.index.search(query, k or self.k, self.mode, self.embedder)


def retrieval_messages(messages: list[dict], passages: list[Hit]) -> list[dict]:
    """The conversation as the model sees it: the last (user) turn as numbered passages + question."""
    if not messages or messages[-1]["role"] != "user":
        raise GenerationError("retrieval answers a user turn: the conversation must end with one")
    system = SYSTEM_PROMPT
    rest = messages[:-1]
    if rest and rest[0]["role"] == "system":
        system, rest = f"{rest[0]['content']}\n\n{SYSTEM_PROMPT}", rest[1:]
    system_turn, user_turn = rag_messages(messages[-1]["content"], passages, system)
    return [system_turn, *rest, user_turn]


def fit_retrieval(count_tokens, context: int, messages: list[dict], hits: list[Hit],
                  reply_room: int) -> tuple[list[dict], list[Hit]]:
    """(messages for the model, the passages kept): as many of the best passages as fit beside reply_room.
    count_tokens(messages) -> the rendered prompt's length."""
    for keep in range(len(hits), -1, -1):
        shown = retrieval_messages(messages, hits[:keep])
        if count_tokens(shown) + max(reply_room, 1) <= context:
            return shown, hits[:keep]
    raise GenerationError(f"the conversation does not fit the model's context of {context} tokens beside "
                          f"{reply_room} new tokens even without passages; shorten it")


def cited_sources(reply: str, passages: list[Hit]) -> list[dict]:
    """The passages a reply cites ([n]; all of them if it cites none) as {"n", "file", "line", "start",
    "end", "text"}: what the server returns as `sources` and the terminal prints."""
    answer = RagAnswer("", reply, passages)
    numbers = answer.cited or range(1, len(passages) + 1)
    return [{"n": n, "file": passages[n - 1].chunk.file, "line": passages[n - 1].chunk.line,
             "start": passages[n - 1].chunk.start, "end": passages[n - 1].chunk.end,
             "text": passages[n - 1].chunk.text} for n in numbers]


def source_lines(reply: str, passages: list[Hit]) -> list[str]:
    """`[2] hamlet_gut.txt, line 1734` for each cited passage."""
    return RagAnswer("", reply, passages).sources()


def search_tool(retriever: Retriever) -> Tool:
    """Retrieval as a tool: the model asks a query and reads back the numbered passages with their sources."""
    def search(query: str) -> str:
        hits = retriever.search(query)
        if not hits:
            return "no passages found"
        return "\n\n".join(f"[{i}] ({hit.chunk.citation()})\n{hit.chunk.text.strip()}" for i, hit in enumerate(hits, 1))

    return Tool("search", "Search the indexed documents; returns the best passages with their sources.",
                {"type": "object", "properties": {"query": {"type": "string", "description": "what to look for"}},
                 "required": ["query"], "additionalProperties": False}, search)
