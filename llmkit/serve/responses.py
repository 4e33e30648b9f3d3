"""Bodies of the OpenAI-compatible responses: choices' text and log-probabilities, usage, chunks.

A `ChoiceState` follows one choice through its updates from the engine thread (worker.py); the same
state builds a streamed chunk or a whole response, so streamed text == non-streamed text.
"""

from __future__ import annotations

import time
import uuid

from llmkit.infer import TokenLogprob
from llmkit.serve.text_stream import TextStream, TokenPiece
from llmkit.tool_calls import ToolCallStream
from llmkit.serve.worker import Update


class ChoiceState:
    def __init__(self, index: int, tokenizer, stop_token_ids, stop_strings, tool_names: set[str] | None = None,
                 max_calls: int | None = None, skip_special_tokens: bool = False):
        """tool_names: the declared functions, when the reply may call them (tools.py reads the calls);
        max_calls: 1 with `parallel_tool_calls: false` (the calls after the first are dropped);
        skip_special_tokens: leave special tokens out of the text (the request's field; the server's
        default is vLLM's, true)."""
        self.index = index
        self.max_calls = max_calls
        self.tools = ToolCallStream(tool_names) if tool_names is not None else None
        self.tool_calls: list[dict] = []
        self.content = ""  # the text shown as content: all of it, or what precedes the tool calls
        self.tokenizer = tokenizer
        skip = tokenizer.special_ids(keep_tool_tags=tool_names is not None) if skip_special_tokens else frozenset()
        self.stream = TextStream(tokenizer, frozenset(stop_token_ids), tuple(stop_strings), skip)
        self.logprobs: list[TokenLogprob] = []  # one per generated token
        self.completion_tokens = 0  # generated tokens, a final stop token included (as OpenAI counts)
        self.cached_tokens = 0
        self.finish_reason: str | None = None
        self.error_status, self.error = 0, ""
        self.pieces_sent = 0
        self.role_sent = False

    def feed(self, update: Update) -> str:
        """Take an update; returns the text that can be shown now."""
        self.completion_tokens += len(update.token_ids)
        self.cached_tokens = max(self.cached_tokens, update.cached_tokens)
        if update.logprobs:
            self.logprobs += update.logprobs
        text = self.stream.add(update.token_ids)
        if update.finish_reason is not None:
            text += self.stream.finish()
        if self.tools is not None:
            text = self.tools.feed(text)
        if update.finish_reason is not None:
            reason = update.finish_reason
            # A stop string seen here on the token that also reached max_tokens is still a stop.
            self.finish_reason = "stop" if self.stream.stopped and reason == "length" else reason
            self.error_status, self.error = update.error_status, update.error
            if self.tools is not None and reason in ("stop", "length"):
                rest, self.tool_calls = self.tools.finish()
                self.tool_calls = self.tool_calls[:self.max_calls]
                text += rest
                if self.tool_calls:
                    self.finish_reason = "tool_calls"
        self.content += text
        return text

    @property
    def text(self) -> str:
        return self.stream.text

    def new_pieces(self, stop_token: bool = False) -> list[tuple[TokenPiece, TokenLogprob]]:
        """Tokens whose text has been shown since the last call, with their log-probabilities. stop_token:
        once finished, also the stop token that ended the reply, with "" as its text (completions list it,
        as OpenAI's and vLLM's do: lm-evaluation-harness reads a prompt's log-probabilities as all but the
        last of `echo` + `max_tokens: 1`'s, whichever token was generated)."""
        pieces = self.stream.pieces if self.finish_reason else self.stream.shown_pieces
        if stop_token and self.finish_reason and self.stream.stop_token is not None:
            pieces = pieces + [TokenPiece(self.stream.stop_token, "")]
        new = pieces[self.pieces_sent:len(self.logprobs)]
        out = list(zip(new, self.logprobs[self.pieces_sent:self.pieces_sent + len(new)]))
        self.pieces_sent += len(out)
        return out


# --- log-probabilities ---------------------------------------------------------------------------------------
def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(tokenizer, pieces: list[tuple[TokenPiece, TokenLogprob]]) -> dict:
    """OpenAI chat format: each token's text (the text it added to the content), log-probability, bytes
    and its most likely alternatives. The bytes are the token's own (half of a UTF-8 character shows as
    that byte), none for a skipped special token: the tokens' bytes concatenate to the content's UTF-8.
    Among the alternatives the chosen token is listed as it is chosen (same text and bytes), so a client
    finds it there; the others as each reads alone."""
    content = []
    for piece, lp in pieces:
        raw = [] if piece.skipped else list(tokenizer.token_bytes(piece.token_id))
        content.append({"token": piece.text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": [
            {"token": piece.text, "logprob": v, "bytes": raw} if t == piece.token_id else
            {"token": token_text(tokenizer, t), "logprob": v, "bytes": list(tokenizer.token_bytes(t))}
            for t, v in lp.top]})
    return {"content": content}


def completion_logprobs(tokenizer, texts: list[str], logprobs: list[TokenLogprob | None], offset: int = 0) -> dict:
    """The legacy completions format: parallel lists; a prompt's first token has no log-probability (None).
    Each token's top alternatives include the token itself, as OpenAI's and vLLM's do, under its text in
    `tokens` (lm-evaluation-harness's is_greedy compares the likeliest key with it): a skipped special
    token's "" or a half character's "", not its text alone (which also listed it twice)."""
    tops, offsets = [], []
    for text, lp in zip(texts, logprobs):
        offsets.append(offset)
        offset += len(text)
        if lp is None:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for t, v in lp.top:  # best first: where two texts coincide, the likelier one's stays
            top.setdefault(text if t == lp.token_id else token_text(tokenizer, t), v)
        top.setdefault(text, lp.logprob)
        tops.append(top)
    return {"tokens": texts, "token_logprobs": [None if lp is None else lp.logprob for lp in logprobs],
            "top_logprobs": tops, "text_offset": offsets}


# --- envelopes -----------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def envelope(kind: str, response_id: str, model: str, created: int | None = None, **fields) -> dict:
    return {"id": response_id, "object": kind, "created": created or int(time.time()), "model": model, **fields}


def sse(data: dict | str) -> str:
    """One server-sent event (the stream ends with `data: [DONE]`)."""
    import json

    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"
