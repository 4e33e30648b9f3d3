"""Retrieval and tools for a conversation, turn by turn: what `llmkit chat --rag/--tools` and
`llmkit serve --rag` add to each turn.

A retrieval turn: the user's message is the query; the model sees the conversation so far with the
last user turn replaced by the numbered passages and the question (answer.py's layout, ALCE-style
citations) and the citation instruction as the system turn (after the user's own system prompt,
if any). The history keeps what the user typed, not the passages: each turn retrieves afresh, and
old passages do not crowd the context. Passages that do not fit beside the reply are dropped from the
lowest-ranked up. The question is the last *user* turn: the assistant's tool calls and the tool results
that follow it (an OpenAI client's tool round-trip) stay after it, as they were.

A passage from a file that changed (or went) since it was indexed may cite the wrong lines: the
retriever marks such hits (`SourcedHit.changed`), and the sources say so, as `rag search` and `rag ask` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.errors import GenerationError
from llmkit.rag.answer import SYSTEM_PROMPT, RagAnswer, rag_messages
from llmkit.rag.index import Hit, RagIndex
from llmkit.rag.tools import Tool


@dataclass
class SourcedHit(Hit):
    """A hit and whether its file changed since it was indexed: None, or the warning to show with it."""
    changed: str | None = None


@dataclass
class Retriever:
    """An index and how to search it: k passages, a mode (None: the index's default), an embedder for dense."""
    index: RagIndex
    k: int = 5
    mode: str | None = None
    embedder: object = None

    def search(self, query: str, k: int | None = None) -> list[SourcedHit]:
        return self.sourced(self.index.search(query, k or self.k, self.mode, self.embedder))

    def sourced(self, hits: list[Hit]) -> list[SourcedHit]:
        """The hits, each marked with whether its file changed since it was indexed."""
        warnings: dict[str, str | None] = {}  # per file: one stat (and a hash only if its mtime moved)
        out = []
        for hit in hits:
            record = self.index.file_of(hit.row)
            if record["path"] not in warnings:
                warnings[record["path"]] = self.index.source_warning(record)  # (rag search's and ask's words)
            out.append(SourcedHit(hit.rank, hit.row, hit.chunk, hit.score, warnings[record["path"]]))
        return out


def retrieval_messages(messages: list[dict], passages: list[Hit]) -> list[dict]:
    """The conversation as the model sees it: the last user turn as numbered passages + question."""
    last = last_user_turn(messages)
    if last is None:
        raise GenerationError("retrieval answers a user turn: the conversation has none")
    system = SYSTEM_PROMPT
    rest = messages[:last]
    if rest and rest[0]["role"] == "system":
        system, rest = f"{rest[0]['content']}\n\n{SYSTEM_PROMPT}", rest[1:]
    system_turn, user_turn = rag_messages(messages[last]["content"], passages, system)
    return [system_turn, *rest, user_turn, *messages[last + 1:]]


def last_user_turn(messages: list[dict]) -> int | None:
    """The index of the last user message (the query), or None."""
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)


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
             "text": passages[n - 1].chunk.text, **_warning(passages[n - 1])} for n in numbers]


def source_lines(reply: str, passages: list[Hit]) -> list[str]:
    """`[2] hamlet_gut.txt, line 1734` for each cited passage, then a warning for each cited file that
    changed since it was indexed."""
    answer = RagAnswer("", reply, passages)
    cited = [passages[n - 1] for n in answer.cited or range(1, len(passages) + 1)]
    warnings = dict.fromkeys(w["warning"] for w in map(_warning, cited) if w)
    return answer.sources() + [f"warning: {w}" for w in warnings]


def _warning(hit: Hit) -> dict:
    changed = getattr(hit, "changed", None)  # a plain Hit (from RagIndex.search) was not checked
    return {"warning": changed} if changed else {}


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
