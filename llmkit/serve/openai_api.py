"""The OpenAI-compatible endpoints: chat and text completions (streamed or not), embeddings, models,
and the tokenizer endpoints evaluation harnesses use with a remote model (/tokenize, /detokenize,
/tokenizer_info, as vLLM names them).

Handlers parse and check the request (protocol.py), turn it into prompt token ids, submit one engine
request per choice to the engine thread (worker.py) and turn its updates into OpenAI's bodies
(responses.py). A streamed reply waits for the first token before sending its headers, so a request
the engine refuses still gets a proper 4xx status.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import struct
import time
import traceback
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from llmkit.errors import LLMKitError
from llmkit.serve import model_jobs
from llmkit.serve.protocol import (APIError, CompletionRequest, GenerationOptions, bad, choice_params, parse_chat,
                                   parse_completion, parse_detokenize, parse_embedding, parse_json, parse_tokenize)
from llmkit.serve.responses import (ChoiceState, chat_logprobs, completion_logprobs, envelope, new_id, sse, usage)
from llmkit.serve.retrieval import retrieve, sources_of
from llmkit.serve.structured import Grammars
from llmkit.serve.text_stream import TextStream
from llmkit.serve.worker import EngineWorker, Generation, Overloaded, Update
from llmkit.tool_calls import chat_messages


class OpenAIService:
    def __init__(self, worker: EngineWorker, model_name: str):
        self.worker = worker
        self.model_name = model_name
        self.created = int(time.time())
        self._grammars: Grammars | None = None
        self.retriever = None  # a llmkit.rag.chat.Retriever when started with --rag (serve/retrieval.py)

    # -- the loaded model
    @property
    def llm(self):
        if self.worker.llm is None:
            raise APIError(503, "the model is still loading; wait for /health to answer 200", code="model_loading")
        return self.worker.llm

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def grammars(self) -> Grammars:
        if self._grammars is None:
            self._grammars = Grammars(self.llm)
        return self._grammars

    async def constrain(self, options: GenerationOptions, tools: list[dict] = (), tool_choice="none") -> None:
        """Set the grammar of structured output (response_format) or of a forced tool call."""
        grammar = await self.grammars.for_request(options.response_format, tools, tool_choice)
        if grammar is not None:
            options.params = dataclasses.replace(options.params, grammar=grammar)

    @property
    def context(self) -> int:
        return self.llm.model.text_context  # (less a prompt-tuned model's soft prompt)

    def check_model(self, name) -> None:
        if name is not None and not isinstance(name, str):
            raise bad("model", f"must be a string, not {type(name).__name__}", "invalid_type")
        if name is not None and name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r} "
                           "(see GET /v1/models)", param="model", code="model_not_found")

    def check_stop_tokens(self, options: GenerationOptions) -> None:
        vocab = self.llm.model.config.vocab_size
        outside = [t for t in options.params.stop_token_ids if not 0 <= t < vocab]
        if outside:
            raise bad("stop_token_ids", f"token id {outside[0]} is outside the vocabulary of {vocab}")

    async def body(self, request: Request) -> dict:
        self.llm  # noqa: B018 - 503 before reading the body while the model loads
        return parse_json(await request.body())

    # -- prompts
    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        try:  # the template writes any BOS itself; what the messages say stays text (no injected role markers)
            return self.tokenizer.encode_chat(messages, add_generation_prompt=True, tools=tools)
        except LLMKitError as e:
            raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None

    def chat_prompt(self, messages: list[dict], max_tokens: int | None, truncate: str | None,
                    tools: list[dict] | None = None) -> tuple[list[int], int]:
        """The conversation's token ids and how many messages were dropped to fit the context (runs on a
        worker thread: a long conversation takes a while to render and tokenize)."""
        advice = "shorten the conversation" + ("" if truncate else ", or send \"truncate\": \"oldest\" to "
                                               "drop its oldest turns")
        # The turns "oldest" may drop: neither a system turn nor the last message, oldest first.
        droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"] if truncate == "oldest" else []
        kept = set(range(len(messages))) - set(droppable)
        self.refuse_far_too_long([str(messages[i]["content"]) for i in sorted(kept)], "messages", advice)

        def without_first(k: int) -> list[int]:
            gone = set(droppable[:k])
            return self.render_chat([m for i, m in enumerate(messages) if i not in gone], tools)

        ids, dropped = without_first(0), 0
        need = max_tokens or 1
        if len(ids) + need > self.context and droppable:
            # The fewest oldest turns to drop: a binary search over how many (a conversation only gets
            # shorter with fewer turns), so a long history costs log2(turns) renders, not one per turn.
            low, high = 1, len(droppable)
            ids, dropped = without_first(high), high
            if len(ids) + need <= self.context:
                while low < high:
                    middle = (low + high) // 2
                    candidate = without_first(middle)
                    if len(candidate) + need <= self.context:
                        ids, dropped, high = candidate, middle, middle
                    else:
                        low = middle + 1
        self.check_fits(len(ids), max_tokens, "messages", "the messages have", advice)
        return ids, dropped

    def refuse_far_too_long(self, texts: list[str], param: str, advice: str) -> None:
        """Refuse texts far beyond the context from a prefix of them, before the whole is tokenized (a client
        may send megabytes, and tokenizing 2.7 M characters took 26 s). The prefix is as many characters as
        the context's tokens could cover at most (its longest token's length each): a prompt that fits is
        never cut, and one whose prefix alone has more tokens than the context cannot fit."""
        budget = (self.context + 8) * self.max_token_chars
        if sum(map(len, texts)) <= budget:
            return
        slack = 8 + 2 * len(texts)  # tokens merged or split where the texts are cut and joined
        n = len(self.tokenizer.encode("\n".join(texts)[:budget]))
        if n > self.context + slack:
            raise APIError(400, f"{param}: has {n} tokens in its first {budget:,} characters alone, but the model's "
                           f"context is {self.context} tokens; {advice}", param=param, code="context_length_exceeded")

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for (its vocabulary entry's length: bytes for byte-level BPE).
        Not cached while the model loads: the 503 that `tokenizer` raises then is not stored."""
        return max(map(len, self.tokenizer.backend.get_vocab()), default=1)

    def check_capacity(self, choices: int, param: str) -> None:
        """A request must fit the server's queue on its own, or a 429 would send the client retrying forever."""
        if choices > self.worker.capacity:
            raise bad(param, f"asks for {choices} generations at once, more than this server holds "
                      f"({self.worker.capacity}: --max-batch-size + --max-waiting); send fewer prompts or a lower n")

    def check_fits(self, n: int, max_tokens: int | None, param: str, what: str, advice: str) -> None:
        need = 1 if max_tokens is None else max_tokens
        if n + need <= self.context:
            return
        asked = f" and max_tokens asks for {max_tokens} more" if max_tokens else ""
        # "lower max_tokens" first: the advice may end in a clause of its own (the chat's "truncate").
        lower = "lower max_tokens or " if max_tokens else ""
        raise APIError(400, f"{param}: {what} {n} tokens{asked}, but the model's context is {self.context} tokens; "
                       f"{lower}{advice}", param=param, code="context_length_exceeded")

    def completion_prompt(self, prompt: str | list[int], max_tokens: int | None, index: int,
                          name: str = "prompt") -> list[int]:
        param = name if index == 0 else f"{name}[{index}]"
        if isinstance(prompt, str):
            self.refuse_far_too_long([prompt], param, "shorten the prompt")
            ids = self.tokenizer.encode(prompt, add_bos=True)
        else:
            vocab = self.llm.model.config.vocab_size
            outside = [t for t in prompt if not 0 <= t < vocab]
            if outside:
                raise bad(param, f"token id {outside[0]} is outside the vocabulary of {vocab}")
            ids = list(prompt)
        if not ids:
            raise bad(param, "is empty; give at least one token")
        self.check_fits(len(ids), max_tokens, param, "the prompt has", "shorten the prompt")
        return ids

    # -- submitting
    def submit(self, ids: list[int], options: GenerationOptions, updates: asyncio.Queue | None = None,
               first_choice: int = 0) -> Generation:
        max_new = options.max_tokens if options.max_tokens is not None else self.context - len(ids)
        params = [choice_params(options, max_new, j) for j in range(options.n)]
        try:
            return self.worker.submit(ids, params, updates, first_choice)
        except Overloaded as e:
            raise APIError(429, str(e), code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": str(e.retry_after_s)}) from None

    def choices(self, total: int, options: GenerationOptions, tool_names: set[str] | None = None,
                max_calls: int | None = None) -> list[ChoiceState]:
        stops = set(self.llm.engine.stop_token_ids) | set(options.params.stop_token_ids)
        return [ChoiceState(i, self.tokenizer, stops, options.params.stop_strings, tool_names, max_calls,
                            options.skip_special_tokens) for i in range(total)]

    # -- POST /v1/chat/completions
    async def chat_completions(self, request: Request):
        body = await self.body(request)
        chat = parse_chat(body)
        options = chat.options
        self.check_model(options.model)
        self.check_stop_tokens(options)
        shown, passages = await retrieve(self, body, chat.messages, options.max_tokens)
        self.check_capacity(options.n, "n")
        messages, template_tools = chat_messages(shown, chat.tools, chat.tool_choice,
                                                 self.tokenizer.chat_template)
        ids, dropped = await asyncio.to_thread(self.chat_prompt, messages, options.max_tokens, chat.truncate,
                                               template_tools)
        await self.constrain(options, chat.tools, chat.tool_choice)
        generation = self.submit(ids, options)
        extra = {"truncated_messages": dropped} if chat.truncate else {}
        tool_names = {t["name"] for t in chat.tools} if chat.tool_choice != "none" else None
        choices = self.choices(options.n, options, tool_names, None if chat.parallel_tool_calls else 1)
        reply = Reply(request, self.worker, [generation], choices)
        rid, created = new_id("chatcmpl"), int(time.time())
        if options.stream:
            first = await reply.first_update()
            return reply.event_stream(self._chat_chunks(reply, first, options, rid, created, extra, passages))
        await reply.collect()
        body = envelope("chat.completion", rid, self.model_name, created, choices=[{
            "index": c.index, "message": {**chat_message(c), **sources_of(c.text, passages)},
            "logprobs": chat_logprobs(self.tokenizer, c.new_pieces()) if options.logprobs is not None else None,
            "finish_reason": c.finish_reason} for c in choices],
            usage=usage(len(ids), sum(c.completion_tokens for c in choices), min(c.cached_tokens for c in choices)),
            **extra)
        return JSONResponse(body)

    async def _chat_chunks(self, reply: "Reply", first: Update, options: GenerationOptions, rid: str,
                           created: int, extra: dict, passages=None) -> AsyncIterator[str]:
        def chunk(choices: list[dict], **fields) -> str:
            if options.include_usage:  # OpenAI: "usage": null on every chunk but the last
                fields = {"usage": None, **fields}
            return sse(envelope("chat.completion.chunk", rid, self.model_name, created, choices=choices, **fields))

        for i, c in enumerate(reply.choices):
            yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}], **(extra if i == 0 else {}))
        async for c, text in reply.texts(first):
            pieces = c.new_pieces() if options.logprobs is not None else []
            if c.tool_calls:  # the reply ended in calls: each as a delta naming it, then its arguments
                if text or pieces:
                    yield chunk([{"index": c.index, "delta": {"content": text} if text else {},
                                  "logprobs": chat_logprobs(self.tokenizer, pieces) if pieces else None,
                                  "finish_reason": None}])
                    text, pieces = "", []
                for k, call in enumerate(c.tool_calls):
                    head = {"index": k, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}
                    for delta in (head, {"index": k, "function": {"arguments": call["function"]["arguments"]}}):
                        yield chunk([{"index": c.index, "delta": {"tool_calls": [delta]}, "logprobs": None,
                                      "finish_reason": None}])
            if text or pieces or c.finish_reason:
                delta = ({"content": text} if text else {}) | (sources_of(c.text, passages) if c.finish_reason else {})
                yield chunk([{"index": c.index, "delta": delta,
                              "logprobs": chat_logprobs(self.tokenizer, pieces) if pieces else None,
                              "finish_reason": c.finish_reason}])
        if options.include_usage:
            yield chunk([], usage=reply.usage([len(reply.generations[0].prompt_ids)]))
        yield sse("[DONE]")

    # -- POST /v1/completions
    async def completions(self, request: Request):
        completion = parse_completion(await self.body(request))
        options = completion.options
        self.check_model(options.model)
        self.check_stop_tokens(options)
        if options.max_tokens != 0:
            self.check_capacity(len(completion.prompts) * options.n, "prompt" if options.n == 1 else "n")
        await self.constrain(options)
        prompts = await asyncio.to_thread(lambda: [self.completion_prompt(p, options.max_tokens, i)
                                                   for i, p in enumerate(completion.prompts)])
        echoed = await self._echo(request, completion, prompts) if completion.echo else [None] * len(prompts)
        choices = self.choices(len(prompts) * options.n, options)
        generations: list[Generation] = []
        if options.max_tokens == 0:  # nothing to generate: scoring a prompt with echo + logprobs
            for c in choices:
                c.finish_reason = "length"
        else:
            updates: asyncio.Queue = asyncio.Queue()
            try:
                for i, ids in enumerate(prompts):
                    generations.append(self.submit(ids, options, updates, first_choice=i * options.n))
            except APIError:
                for generation in generations:
                    self.worker.cancel(generation)
                raise
        reply = Reply(request, self.worker, generations, choices)
        rid, created = new_id("cmpl"), int(time.time())
        if options.stream:
            first = await reply.first_update()
            return reply.event_stream(self._completion_chunks(reply, first, options, rid, created,
                                                              [len(ids) for ids in prompts]))
        await reply.collect()
        out = []
        for c in choices:
            prompt_text, prompt_pieces = echoed[c.index // options.n] or ("", None)
            logprobs = None
            if options.logprobs is not None:
                pieces = c.new_pieces(stop_token=True)
                texts, lps = [p.text for p, _ in pieces], [lp for _, lp in pieces]
                if prompt_pieces is not None:
                    texts, lps = prompt_pieces[0] + texts, prompt_pieces[1] + lps
                logprobs = completion_logprobs(self.tokenizer, texts, lps)
            out.append({"index": c.index, "text": prompt_text + c.text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason})
        cached = [min([c.cached_tokens for c in choices[i * options.n:(i + 1) * options.n]])
                  for i in range(len(prompts))]
        body = envelope("text_completion", rid, self.model_name, created, choices=out,
                        usage=usage(sum(map(len, prompts)), sum(c.completion_tokens for c in choices), sum(cached)))
        return JSONResponse(body)

    async def _echo(self, request: Request, completion: CompletionRequest, prompts: list[list[int]]):
        """Per prompt: its text, and with logprobs its tokens' texts and log-probabilities."""
        out = []
        for prompt, ids in zip(completion.prompts, prompts):
            if completion.options.logprobs is not None:
                await self.stop_if_gone(request)
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)
            pieces = None
            if completion.options.logprobs is not None:
                stream = TextStream(self.tokenizer)
                stream.add(ids)
                stream.finish()
                lps = await self.worker.call(model_jobs.prompt_logprobs, self.llm.model, ids,
                                             completion.options.logprobs)
                pieces = ([p.text for p in stream.pieces], lps)
            out.append((text, pieces))
        return out

    async def _completion_chunks(self, reply: "Reply", first: Update, options: GenerationOptions, rid: str,
                                 created: int, prompt_lengths: list[int]) -> AsyncIterator[str]:
        """prompt_lengths: each prompt's tokens, for the usage chunk (with max_tokens 0 no generation
        holds them)."""
        def chunk(choices: list[dict], **fields) -> str:
            if options.include_usage:  # OpenAI: "usage": null on every chunk but the last
                fields = {"usage": None, **fields}
            return sse(envelope("text_completion", rid, self.model_name, created, choices=choices, **fields))

        offsets = [0] * len(reply.choices)  # characters of each choice's text covered by its logprobs so far
        async for c, text in reply.texts(first):
            pieces = c.new_pieces(stop_token=True) if options.logprobs is not None else []
            if text or pieces or c.finish_reason:
                logprobs = None
                if pieces:
                    # text_offset counts from the start of the choice's whole text, as vLLM's stream does
                    # (not from the chunk's): a client reads the offsets of all chunks as one list
                    texts = [p.text for p, _ in pieces]
                    logprobs = completion_logprobs(self.tokenizer, texts, [lp for _, lp in pieces], offsets[c.index])
                    offsets[c.index] += sum(map(len, texts))
                yield chunk([{"index": c.index, "text": text, "logprobs": logprobs,
                              "finish_reason": c.finish_reason}])
        if options.include_usage:
            yield chunk([], usage=reply.usage(prompt_lengths))
        yield sse("[DONE]")

    # -- POST /v1/embeddings
    async def embeddings(self, request: Request):
        req = parse_embedding(await self.body(request))
        self.check_model(req.model)
        prompts = await asyncio.to_thread(lambda: [self.completion_prompt(p, 0, i, "input")
                                                   for i, p in enumerate(req.inputs)])
        skip_first = self.tokenizer.bos_id is not None
        data = []
        for i, (given, ids) in enumerate(zip(req.inputs, prompts)):
            await self.stop_if_gone(request)
            vector = await self.worker.call(model_jobs.embed, self.llm.model, ids,
                                            skip_first and isinstance(given, str))
            # base64: little-endian float32, what OpenAI's clients decode.
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if req.base64 else vector
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(map(len, prompts))
        return JSONResponse({"object": "list", "data": data, "model": self.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @staticmethod
    async def stop_if_gone(request: Request) -> None:
        """Between the forwards of a many-input request: stop if its client hung up (nobody reads the answer)."""
        if await request.is_disconnected():
            raise ClientGone()

    # -- models and tokenizer
    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "llmkit",
                "max_model_len": self.context}

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request):
        """GET /v1/models/{model}: OpenAI's "retrieve model" (the openai client's `models.retrieve`)."""
        self.check_model(request.path_params["model"])
        return JSONResponse(self.model_card())

    async def tokenize(self, request: Request):
        req = parse_tokenize(await self.body(request))
        self.check_model(req.model)
        if req.messages is not None:
            try:
                ids = await asyncio.to_thread(self.tokenizer.encode_chat, req.messages,
                                              add_generation_prompt=req.add_generation_prompt)
            except LLMKitError as e:
                raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
        else:
            ids = await asyncio.to_thread(self.tokenizer.encode, req.prompt, add_bos=req.add_special_tokens)
        body = {"count": len(ids), "max_model_len": self.context, "tokens": ids}
        if req.return_token_strs:
            body["token_strs"] = [self.tokenizer.decode([t]) for t in ids]
        return JSONResponse(body)

    async def detokenize(self, request: Request):
        body = await self.body(request)
        self.check_model(body.get("model"))
        tokens = parse_detokenize(body, self.tokenizer.vocab_size)
        return JSONResponse({"prompt": self.tokenizer.decode(tokens)})

    async def tokenizer_info(self, request: Request):
        tok = self.tokenizer
        return JSONResponse({
            "tokenizer_class": "PreTrainedTokenizerFast", "vocab_size": tok.vocab_size,
            "model_max_length": self.context, "bos_token": tok.bos_token, "bos_token_id": tok.bos_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_id, "pad_token": tok.pad_token,
            "pad_token_id": tok.pad_id, "stop_token_ids": list(self.llm.engine.stop_token_ids),
            "add_bos_token": tok.bos_id is not None, "chat_template": tok.chat_template})


class ClientGone(Exception):
    """The client disconnected before its answer was ready (server.py answers nobody)."""


def chat_message(c: ChoiceState) -> dict:
    """A choice's assistant message: its content, and its tool calls if it made any (content then null
    when empty, as OpenAI sends it)."""
    if c.tools is None:
        return {"role": "assistant", "content": c.text}
    message = {"role": "assistant", "content": c.content if c.content or not c.tool_calls else None}
    if c.tool_calls:
        message["tool_calls"] = c.tool_calls
    return message


class Reply:
    """The choices of one HTTP request as their updates arrive; cancels its generations when the client
    disconnects (watched on the ASGI receive channel) or the reply is abandoned."""

    def __init__(self, request: Request, worker: EngineWorker, generations: list[Generation],
                 choices: list[ChoiceState]):
        self.worker, self.generations, self.choices = worker, generations, choices
        self.updates = generations[0].updates if generations else None
        self.watch = asyncio.create_task(self._watch(request.receive)) if generations else None

    async def _watch(self, receive: Callable) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancel()

    def cancel(self) -> None:
        for generation in self.generations:
            self.worker.cancel(generation)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        if not self.done:
            self.cancel()

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    async def first_update(self) -> Update | None:
        try:
            if self.done:
                return None
            update = await self.updates.get()
        except BaseException:
            self.close()
            raise
        if update.finish_reason == "error":
            self.close()
            raise APIError(update.error_status or 500, update.error)
        return update

    async def collect(self) -> None:
        try:
            while not self.done:
                update = await self.updates.get()
                self.choices[update.choice].feed(update)
        finally:
            self.close()
        failed = [c for c in self.choices if c.finish_reason == "error"]
        if failed:
            raise APIError(failed[0].error_status or 500, failed[0].error)

    async def texts(self, first: Update | None) -> AsyncIterator[tuple[ChoiceState, str]]:
        """Each update as (its choice, the text it makes showable); raises on an engine error."""
        if first is None:  # nothing was generated (max_tokens 0): each choice's finish, once
            for c in self.choices:
                yield c, ""
            return
        update = first
        while update is not None:
            c = self.choices[update.choice]
            text = c.feed(update)
            if c.finish_reason == "error":
                raise APIError(c.error_status or 500, c.error)
            if c.finish_reason != "cancelled":
                yield c, text
            update = None if self.done else await self.updates.get()

    def usage(self, prompt_lengths: list[int]) -> dict:
        n = len(self.choices) // max(len(prompt_lengths), 1)
        cached = sum(min(c.cached_tokens for c in self.choices[i * n:(i + 1) * n]) for i in range(len(prompt_lengths)))
        return usage(sum(prompt_lengths), sum(c.completion_tokens for c in self.choices), cached)

    def event_stream(self, events: AsyncIterator[str]) -> "EventStream":
        return EventStream(events, self.close)


class EventStream:
    """A server-sent-events response as a plain ASGI app. An error after the headers went out is sent as
    an OpenAI error object in the stream, then `[DONE]`; the reply is closed (its generations
    cancelled if unfinished) however the stream ends."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        self.events, self.on_close = events, on_close

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]})
        try:
            try:
                async for event in self.events:
                    await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            except Exception as e:  # noqa: BLE001 - the status is sent already: report it in the stream
                if not isinstance(e, APIError):
                    traceback.print_exc()
                    e = APIError(500, "internal server error (see the server log)")
                for event in (sse(e.body()), sse("[DONE]")):
                    await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away; on_close cancels its generations
        finally:
            await self.events.aclose()
            self.on_close()
