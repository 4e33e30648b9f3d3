"""Retrieval-augmented chat completions (`llmkit serve --rag INDEX`): llmkit's extension of
/v1/chat/completions.

Request: `"rag"` (an extension field; the official clients send it with `extra_body`):
    absent or true     retrieve when the server was started with --rag (the server's --k passages)
    {"k": N}           retrieve N passages (1..MAX_K)
    false              answer without retrieval
The last user turn is the query (the assistant's tool calls and their results may follow it); the model
sees the conversation with that turn replaced by the numbered passages and the question, and the
citation instruction (llmkit/rag/chat.py).
Response: the assistant message carries `"sources": [{"n", "file", "line", "start", "end", "text"}]` (and
`"warning"` on a source whose file changed since it was indexed: its lines may be out of date),
the passages its reply cites ([n]; all shown passages if it cites none); a stream carries them in the
delta of each choice's final chunk (the one with `finish_reason`). A request for retrieval to a server
without an index is a 400.
"""

from __future__ import annotations

import asyncio

from llmkit.errors import GenerationError
from llmkit.rag.chat import cited_sources, fit_retrieval, last_user_turn
from llmkit.rag.index import Hit
from llmkit.serve.protocol import APIError, bad, parse_tools
from llmkit.tool_calls import chat_messages

MAX_K = 50
REPLY_ROOM = 256  # tokens kept for the reply when the request sets no max_tokens (a quarter of the context at most)


def requested_k(body: dict, retriever) -> int | None:
    """Passages to retrieve for this request, or None for none."""
    option = body.get("rag", retriever is not None)
    if option is False or option is None:
        return None
    if option is not True and not (isinstance(option, dict) and set(option) <= {"k"}):
        raise bad("rag", 'must be true, false or {"k": N}', "invalid_type")
    if retriever is None:
        raise bad("rag", "this server has no retrieval index; start it with `llmkit serve --rag INDEX`")
    k = option.get("k", retriever.k) if isinstance(option, dict) else retriever.k
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise bad("rag.k", f"must be an integer from 1 to {MAX_K}")
    return k


async def retrieve(service, body: dict, messages: list[dict], max_tokens: int | None) \
        -> tuple[list[dict], list[Hit] | None]:
    """(the messages for the model, the passages shown: None without retrieval)."""
    retriever = service.retriever
    k = requested_k(body, retriever)
    if k is None:
        return messages, None
    last = last_user_turn(messages)  # the query; a tool round-trip's calls and results may follow it
    if last is None:
        raise bad("messages", "retrieval answers a user turn: the conversation has none (or send \"rag\": false)")
    query = messages[last]["content"]
    if retriever.embedder is not None:  # dense or hybrid: the query is embedded by the model, on the engine thread
        found = await service.worker.call(retriever.index.search, query, k, retriever.mode, retriever.embedder)
        hits = await asyncio.to_thread(retriever.sourced, found)  # stat / hash the files off the engine thread
    else:  # BM25 alone: in a worker thread, so neither the event loop nor the engine's decoding waits for it
        hits = await asyncio.to_thread(retriever.search, query, k)
    room = max_tokens if max_tokens is not None else min(REPLY_ROOM, service.context // 4)
    # Measured as the prompt will be rendered: with the tools' descriptions, and calls and `tool` results in
    # the template's form (a template without a tools branch knows no "tool" role; the fallback turns it into
    # a user turn). Measured without them, passages could crowd out the room the tools take.
    tools, tool_choice = parse_tools(body)
    template = service.tokenizer.chat_template

    def count(shown: list[dict]) -> int:
        return len(service.render_chat(*chat_messages(shown, tools, tool_choice, template)))
    try:  # up to k + 1 renders and tokenizations of the whole conversation: off the event loop too
        return await asyncio.to_thread(fit_retrieval, count, service.context, messages, hits, room)
    except GenerationError as e:
        raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None


def sources_of(text: str, passages: list[Hit] | None) -> dict:
    """{"sources": [...]} to add to a message or a final delta; {} without retrieval."""
    return {} if passages is None else {"sources": cited_sources(text, passages)}
