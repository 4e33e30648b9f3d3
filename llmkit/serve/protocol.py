"""Requests of the OpenAI-compatible API: JSON bodies checked field by field into plain dataclasses.

Every mistake a client can make is an `APIError` that becomes OpenAI's error body,
`{"error": {"message", "type", "param", "code"}}`, with the HTTP status and the offending field named
(`param`), so a client library shows what to fix. Field names and ranges follow OpenAI's API reference;
the engine's extras (`top_k`, `min_p`, `repetition_penalty`) and llmkit's own (`truncate`) are
documented in README.md ("Serving").
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import GenerationError
from llmkit.infer import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16  # choices per prompt
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat's top_logprobs


class APIError(Exception):
    """An error answered to the client: HTTP status + OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


def parse_json(body: bytes) -> dict:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})", code="invalid_utf8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    return data


# --- typed field readers: each names the field in its error --------------------------------------------------
def _number(body: dict, name: str, default, low: float, high: float, *, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"must be a number, not {json.dumps(value)}", "invalid_type")
    if value < low or value > high or (low_open and value == low):
        left = "(" if low_open else "["
        raise bad(name, f"must be in {left}{low:g}, {high:g}], not {value:g}")
    return float(value)


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad(name, f"must be an integer, not {json.dumps(value)}", "invalid_type")
    if value < low or (high is not None and value > high):
        raise bad(name, f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else "")
                  + f", not {value}")
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, not {json.dumps(value)}", "invalid_type")
    return value


def _string(body: dict, name: str, default: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad(name, f"must be a string, not {json.dumps(value)}", "invalid_type")
    return value


def _stop_strings(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "must be a string or a list of strings", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"at most {MAX_STOPS} stop strings, not {len(stops)}")
    if any(not s for s in stops):
        raise bad("stop", "stop strings must not be empty")
    return stops


def _not_supported(body: dict) -> None:
    """Fields we know but cannot honour yet: refused by name rather than silently ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad(name, "is not supported yet (the engine has no presence/frequency penalty); "
                      "leave it at 0 or use repetition_penalty", "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad("logit_bias", "is not supported yet", "unsupported_parameter")
    if body.get("tools") or body.get("functions"):
        param = "tools" if body.get("tools") else "functions"
        raise bad(param, "tool calling is not supported yet", "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise bad("response_format", "only {\"type\": \"text\"} is supported yet (structured output is not)",
                      "unsupported_parameter")


# --- generation requests -------------------------------------------------------------------------------------
@dataclass
class GenerationOptions:
    """What chat and text completions share: sampling, choices, streaming, log-probabilities."""

    model: str | None
    n: int
    max_tokens: int | None  # None: as many as the context allows (OpenAI's default)
    params: SamplingParams  # max_new_tokens set later, per prompt
    stream: bool
    include_usage: bool
    logprobs: int | None  # None = off, else the number of top alternatives per token


def parse_generation(body: dict, *, chat: bool) -> GenerationOptions:
    _not_supported(body)
    model = _string(body, "model")
    n = _integer(body, "n", 1, 1, MAX_N)
    max_tokens = _integer(body, "max_tokens", None, 0 if not chat else 1)
    if chat:
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("stream_options", "is only allowed when stream is true")
        if not isinstance(options, dict):
            raise bad("stream_options", "must be an object", "invalid_type")
        include_usage = _boolean(options, "include_usage", False)
    if chat:
        wants = _boolean(body, "logprobs", False)
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not wants:
            raise bad("top_logprobs", "needs logprobs: true")
        logprobs = (top or 0) if wants else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    top_k = _integer(body, "top_k", 0, -1)
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
            top_k=max(top_k, 0),  # -1 (vLLM's "off") and 0 both mean no top-k
            min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
            seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
            stop_strings=_stop_strings(body),
            logprobs=logprobs,
        )
    except GenerationError as e:
        raise APIError(400, str(e)) from None
    return GenerationOptions(model, n, max_tokens, params, stream, include_usage, logprobs)


def choice_params(options: GenerationOptions, max_new_tokens: int, choice: int) -> SamplingParams:
    """Sampling parameters of one choice: a seeded request's choices get seeds seed, seed+1, ... so
    they differ from each other and are all reproducible."""
    params = options.params
    seed = None if params.seed is None else (params.seed + choice) % 2**63
    return dataclasses.replace(params, max_new_tokens=max_new_tokens, seed=seed,
                               stop_strings=list(params.stop_strings))


@dataclass
class ChatRequest:
    options: GenerationOptions
    messages: list[dict]  # {"role", "content": str} ready for the chat template
    truncate: str | None  # None | "oldest"


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(f"{where}.content[{j}]", f"only text parts are supported, not {kind!r}",
                          "unsupported_content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where}.content", "must be a string or a list of text parts", "invalid_type")


def parse_chat(body: dict) -> ChatRequest:
    options = parse_generation(body, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad("messages", "is required: a list of {role, content} objects", "invalid_type")
    if not messages:
        raise bad("messages", "must not be empty")
    rendered = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with role and content", "invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"unknown role {json.dumps(role)}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is None and role != "assistant":
            raise bad(f"{where}.content", "is required", "invalid_type")
        # OpenAI's "developer" role is the system role of newer models; chat templates know "system".
        rendered.append({"role": "system" if role == "developer" else role,
                         "content": "" if content is None else _message_text(content, where)})
    truncate = _string(body, "truncate")
    if truncate not in (None, "oldest"):
        raise bad("truncate", f"must be \"oldest\" (or absent), not {json.dumps(truncate)}")
    return ChatRequest(options, rendered, truncate)


@dataclass
class CompletionRequest:
    options: GenerationOptions
    prompts: list[str | list[int]]  # text, or token ids as given
    echo: bool


def parse_prompts(value: Any, param: str = "prompt") -> list[str | list[int]]:
    """A text, a list of token ids, or a list of either: one prompt each."""
    def is_ids(x):
        return isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(value, str):
        return [value]
    if is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) or is_ids(p) for p in value):
        return list(value)
    raise bad(param, "must be a string, a list of token ids, or a non-empty list of strings or of token-id lists",
              "invalid_type")


def parse_completion(body: dict) -> CompletionRequest:
    options = parse_generation(body, chat=False)
    if body.get("suffix"):
        raise bad("suffix", "is not supported", "unsupported_parameter")
    best_of = _integer(body, "best_of", None, 1)
    if best_of is not None and best_of != options.n:
        raise bad("best_of", "is not supported (only best_of == n)", "unsupported_parameter")
    if "prompt" not in body:
        raise bad("prompt", "is required", "invalid_type")
    echo = _boolean(body, "echo", False)
    if echo and options.stream:
        raise bad("echo", "is not supported with stream: true", "unsupported_parameter")
    return CompletionRequest(options, parse_prompts(body["prompt"]), echo)


@dataclass
class EmbeddingRequest:
    model: str | None
    inputs: list[str | list[int]]
    base64: bool


def parse_embedding(body: dict) -> EmbeddingRequest:
    if "input" not in body:
        raise bad("input", "is required", "invalid_type")
    fmt = _string(body, "encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", f"must be \"float\" or \"base64\", not {json.dumps(fmt)}")
    return EmbeddingRequest(_string(body, "model"), parse_prompts(body["input"], "input"), fmt == "base64")


@dataclass
class TokenizeRequest:
    model: str | None
    prompt: str | None
    messages: list[dict] | None
    add_special_tokens: bool
    add_generation_prompt: bool
    return_token_strs: bool = field(default=False)


def parse_tokenize(body: dict) -> TokenizeRequest:
    prompt = _string(body, "prompt")
    messages = None
    if prompt is None:
        if "messages" not in body:
            raise bad("prompt", "is required (or give messages)", "invalid_type")
        messages = parse_chat({"messages": body["messages"]}).messages
    return TokenizeRequest(_string(body, "model"), prompt, messages, _boolean(body, "add_special_tokens", True),
                           _boolean(body, "add_generation_prompt", True), _boolean(body, "return_token_strs", False))


def parse_detokenize(body: dict, vocab_size: int) -> list[int]:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise bad("tokens", "must be a list of token ids", "invalid_type")
    outside = [t for t in tokens if not 0 <= t < vocab_size]
    if outside:
        raise bad("tokens", f"token id {outside[0]} is outside the vocabulary of {vocab_size}")
    return tokens
