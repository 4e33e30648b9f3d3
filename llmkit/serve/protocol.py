"""Requests of the OpenAI-compatible API: JSON bodies checked field by field into plain dataclasses.

Every mistake a client can make is an `APIError` that becomes OpenAI's error body,
`{"error": {"message", "type", "param", "code"}}`, with the HTTP status and the offending field named
(`param`), so a client library shows what to fix. Field names and ranges follow OpenAI's API reference;
the engine's extras (`top_k`, `min_p`, `repetition_penalty`), vLLM's `stop_token_ids` and `skip_special_tokens`
and llmkit's own (`truncate`) are documented in README.md ("Serving"). Fields the server does not know are
ignored, as vLLM and llama.cpp ignore them, except those that would change the reply (IGNORED_ONLY_AS): those
are refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import GenerationError
from llmkit.infer import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 16  # choices per prompt
MAX_STOPS = 16
MAX_STOP_TOKEN_IDS = 256
# A stop string's characters: every new token is checked against each one's prefixes (text_stream.py, the
# engine's tail decode), so their length bounds the per-token work a request can ask for. OpenAI states no
# limit; 1,000 is far beyond any real stop sequence.
MAX_STOP_CHARS = 1000
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on /v1/embeddings inputs in one request
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat's top_logprobs
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function and schema names
MAX_TOOLS = 128


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
    except (ValueError, RecursionError) as e:  # an integer of > 4,300 digits; arrays nested thousands deep
        reason = "it nests too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise APIError(400, f"the request body cannot be read as JSON: {reason}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    if LONE_SURROGATE_ESCAPE.search(text):  # only a \uD800-\uDFFF escape can make one: the walk is rare
        _refuse_lone_surrogates(data)
    return data


# JSON may escape half of a UTF-16 surrogate pair alone ("\ud83d"); Python reads it into a str that is not
# text (it cannot be encoded, and the tokenizer refuses it): a 400 naming the field, not a 500 later.
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(data: dict, where: str = "") -> None:
    stack: list[tuple[str, object]] = [(where, data)]
    while stack:  # iterative: the body may nest as deep as the JSON parser allows
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
            stack += [(where or "body", k) for k in value]  # keys are strings too
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                bad_char = value[e.start]
                raise APIError(400, f"{where}: holds an unpaired UTF-16 surrogate (\\u{ord(bad_char):04x}), "
                                    "half of a character; send whole characters (both halves of a surrogate pair)",
                               param=where, code="invalid_value") from None


# --- typed field readers: each names the field in its error --------------------------------------------------
def _number(body: dict, name: str, default, low: float, high: float, *, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, f"must be a number, not {_shown(value)}", "invalid_type")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number) or number < low or number > high or (low_open and number == low):
        left = "(" if low_open else "["
        raise bad(name, f"must be in {left}{low:g}, {high:g}], not {_shown(value)}")
    return number


def _shown(value, limit: int = 40) -> str:
    """A value as JSON for an error message, cut short (a client may send a 4,000-digit number)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad(name, f"must be an integer, not {_shown(value)}", "invalid_type")
    limit = 2**63 - 1 if high is None else high  # past 64 bits nothing is a meaningful count, seed or k
    if value < low or value > limit:
        raise bad(name, f"must be an integer >= {low}" + (f" and <= {limit}" if high is not None or value > limit
                                                          else "") + f", not {_shown(value)}")
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, not {_shown(value)}", "invalid_type")
    return value


def _string(body: dict, name: str, default: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad(name, f"must be a string, not {_shown(value)}", "invalid_type")
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
    longest = max(stops, key=len, default="")
    if len(longest) > MAX_STOP_CHARS:
        raise bad("stop", f"a stop string may have at most {MAX_STOP_CHARS} characters, not {len(longest)}")
    return stops


def _stop_token_ids(body: dict) -> list[int]:
    """vLLM's `stop_token_ids`: tokens that end the reply as the model's own stop token does (the server
    checks them against the vocabulary)."""
    value = body.get("stop_token_ids")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise bad("stop_token_ids", "must be a list of token ids (integers)", "invalid_type")
    if len(value) > MAX_STOP_TOKEN_IDS:
        raise bad("stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} token ids, not {len(value)}")
    return list(value)


def _not_supported(body: dict) -> None:
    """Fields we know but cannot honour yet: refused by name rather than silently ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad(name, "is not supported yet (the engine has no presence/frequency penalty); "
                      "leave it at 0 or use repetition_penalty", "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad("logit_bias", "is not supported yet", "unsupported_parameter")
    if body.get("functions") or body.get("function_call"):
        param = "functions" if body.get("functions") else "function_call"
        raise bad(param, "the legacy functions API is not supported; use tools and tool_choice",
                  "unsupported_parameter")
    _refuse_unhonoured(body, IGNORED_ONLY_AS)


# Other servers' extensions (vLLM's sampling and guided decoding, llama.cpp's grammar) and OpenAI fields
# that change the reply: unknown fields are ignored, as vLLM and llama.cpp do, but ignoring one of these
# would silently give a reply other than the one asked for (e.g. a benchmark's `ignore_eos: true` getting
# short replies), so each is refused unless its value asks for nothing (the values listed).
IGNORED_ONLY_AS: dict[str, tuple] = {
    "ignore_eos": (False, None), "min_tokens": (0, None), "include_stop_str_in_output": (False, None),
    "use_beam_search": (False, None), "prompt_logprobs": (None,), "typical_p": (1, None),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "structured_outputs": (None,), "grammar": (None, ""), "json_schema": (None,),
    "audio": (None,), "modalities": (None, ["text"]), "web_search_options": (None,),
    "allowed_token_ids": (None,), "bad_words": (None, []), "truncate_prompt_tokens": (None,),
    "return_tokens_as_token_ids": (False, None), "length_penalty": (1, None),
    # llama.cpp's
    "n_predict": (None, -1), "repeat_penalty": (1, None), "mirostat": (0, None), "dry_multiplier": (0, None),
    "xtc_probability": (0, None), "n_probs": (0, None),
}
# vLLM's chat-only ones (on /v1/completions, `echo` is OpenAI's own and honoured)
CHAT_IGNORED_ONLY_AS: dict[str, tuple] = {
    "echo": (False, None), "continue_final_message": (False, None), "add_generation_prompt": (True, None),
    "chat_template": (None,), "chat_template_kwargs": (None, {}), "documents": (None,),
}


def _refuse_unhonoured(body: dict, fields: dict[str, tuple]) -> None:
    for name, harmless in fields.items():
        if name in body and body[name] not in harmless:
            raise bad(name, f"is not supported (only {' or '.join(map(_shown, harmless))}); "
                      "without it the reply would silently differ from what it asks for", "unsupported_parameter")


@dataclass
class ResponseFormat:
    """Structured output: "json_object" (any JSON object) or "json_schema" (JSON valid for `schema`)."""

    type: str
    schema: dict | None = None
    name: str | None = None


def parse_response_format(body: dict) -> ResponseFormat | None:
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("response_format", "must be an object such as {\"type\": \"json_object\"}", "invalid_type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        raise bad("response_format", f"type must be \"text\", \"json_object\" or \"json_schema\", not {json.dumps(kind)}")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise bad("response_format", "json_schema is required with type \"json_schema\": "
                  "{\"name\": ..., \"schema\": {...}}", "invalid_type")
    name = spec.get("name")  # required by OpenAI's API: a client that omits it would fail there
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise bad("response_format", f"json_schema.name is required: 1-64 letters, digits, _ or -, not {json.dumps(name)}")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise bad("response_format", f"json_schema.schema must be a JSON schema object, not {json.dumps(schema)}",
                  "invalid_type")
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise bad("response_format", "json_schema.strict must be true or false", "invalid_type")
    return ResponseFormat("json_schema", schema, name)


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
    response_format: ResponseFormat | None = None  # structured output (compiled into params.grammar later)
    skip_special_tokens: bool = True  # vLLM's field and default: special tokens are left out of the text


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
        include_usage = options.get("include_usage")
        include_usage = False if include_usage is None else include_usage
        if not isinstance(include_usage, bool):  # named by its path, as OpenAI names a nested field
            raise bad("stream_options.include_usage", f"must be true or false, not {_shown(include_usage)}",
                      "invalid_type")
    if chat:
        wants = _boolean(body, "logprobs", False)
        top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not wants:
            raise bad("top_logprobs", "needs logprobs: true")
        logprobs = (top or 0) if wants else None
    else:
        logprobs = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    top_k = _integer(body, "top_k", 0, -1)
    _string(body, "user")  # OpenAI's end-user id: not used, but a wrong type is the client's mistake
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
            top_k=max(top_k, 0),  # -1 (vLLM's "off") and 0 both mean no top-k
            min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
            seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
            stop_strings=_stop_strings(body),
            stop_token_ids=_stop_token_ids(body),
            logprobs=logprobs,
        )
    except GenerationError as e:  # the engine's own rules (e.g. temperature 0 or >= 1e-5): name the field
        name = str(e).split(" ", 1)[0]
        param = name if name in body else None
        raise APIError(400, str(e), param=param, code="invalid_value" if param else None) from None
    return GenerationOptions(model, n, max_tokens, params, stream, include_usage, logprobs,
                             parse_response_format(body), _special_tokens(body))


def _special_tokens(body: dict) -> bool:
    """vLLM's `skip_special_tokens` (default true: `<|im_start|>` a model writes mid-reply is not shown;
    false shows it). Its `spaces_between_special_tokens` is type-checked and changes nothing: vLLM uses it
    only for Python ("slow") tokenizers; with a `tokenizers` one, the only kind llmkit has, vLLM and Hugging
    Face's fast decode ignore it too (`tokenizers` cannot space them), so the text is vLLM's either way."""
    _boolean(body, "spaces_between_special_tokens", True)
    return _boolean(body, "skip_special_tokens", True)


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
    messages: list[dict]  # {"role", "content": str, and "tool_calls" / "tool_call_id"} for the chat template
    truncate: str | None  # None | "oldest"
    tools: list[dict] = field(default_factory=list)  # each {"name", "description", "parameters"}
    tool_choice: str | dict = "none"  # "none" | "auto" | "required" | {"name": ...} (one function)
    parallel_tool_calls: bool = True  # False: at most one call a reply (OpenAI's parameter)


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


def _message_tool_calls(calls: Any, where: str) -> list[dict]:
    """An assistant message's earlier tool calls, as chat templates expect them (arguments as an object)."""
    if not isinstance(calls, list):
        raise bad(f"{where}.tool_calls", "must be a list of {id, type, function: {name, arguments}}", "invalid_type")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}.tool_calls[{j}]", "must be {\"id\", \"type\": \"function\", \"function\": "
                      "{\"name\", \"arguments\"}}", "invalid_type")
        # The name is written into the prompt by the chat template, outside any quoting: held to the rule
        # for tools[].function.name so that it cannot carry a template's control tokens.
        if not NAME.fullmatch(function["name"]):
            raise bad(f"{where}.tool_calls[{j}].function.name",
                      f"must be 1-64 letters, digits, _ or -, not {_shown(function['name'])}")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError):
                arguments = None
        if not isinstance(arguments, dict):
            raise bad(f"{where}.tool_calls[{j}].function.arguments", "must be a JSON object (as a string)")
        _refuse_lone_surrogates(arguments, f"{where}.tool_calls[{j}].function.arguments")
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def parse_chat(body: dict) -> ChatRequest:
    options = parse_generation(body, chat=True)
    _refuse_unhonoured(body, CHAT_IGNORED_ONLY_AS)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad("messages", "is required: a list of {role, content} objects", "invalid_type")
    if not messages:
        raise bad("messages", "must not be empty")
    rendered = []
    answerable: set | None = None  # the ids of the tool calls the messages since the last assistant's may answer
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
        out = {"role": "system" if role == "developer" else role,
               "content": "" if content is None else _message_text(content, where)}
        if role == "assistant" and message.get("tool_calls"):
            out["tool_calls"] = _message_tool_calls(message["tool_calls"], where)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise bad(f"{where}.tool_call_id", "is required: the id of the tool call this message answers",
                          "invalid_type")
            # OpenAI's rule: a tool message answers a call of the assistant message before it (a template
            # would otherwise show the model a result of a call it never made)
            if answerable is None:
                raise bad(f"{where}.role", "a tool message must follow an assistant message with tool_calls "
                          "(or other tool messages answering them)")
            if None not in answerable and call_id not in answerable:
                raise bad(f"{where}.tool_call_id", f"{_shown(call_id)} answers no tool call of the assistant message "
                          f"before it (its calls: {', '.join(sorted(answerable))})")
            out["tool_call_id"] = call_id
        else:
            answerable = {c["id"] for c in out["tool_calls"]} if out.get("tool_calls") else None
        rendered.append(out)
    truncate = _string(body, "truncate")
    if truncate not in (None, "oldest"):
        raise bad("truncate", f"must be \"oldest\" (or absent), not {json.dumps(truncate)}")
    tools, tool_choice = parse_tools(body)
    if options.response_format is not None and tool_choice not in ("none", "auto"):
        raise bad("tool_choice", "a forced tool call cannot be combined with response_format; drop one of them")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad("parallel_tool_calls", "must be true or false", "invalid_type")
    return ChatRequest(options, rendered, truncate, tools, tool_choice, parallel)


def parse_tools(body: dict) -> tuple[list[dict], str | dict]:
    """`tools` (functions only) and `tool_choice`, checked; a named choice becomes {"name": ...}."""
    value = body.get("tools")
    tools = []
    if value is not None:
        if not isinstance(value, list):
            raise bad("tools", "must be a list of {\"type\": \"function\", \"function\": {...}}", "invalid_type")
        if len(value) > MAX_TOOLS:
            raise bad("tools", f"at most {MAX_TOOLS} tools, not {len(value)}")
        for i, tool in enumerate(value):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
                raise bad(where, "must be {\"type\": \"function\", \"function\": {\"name\", \"description\", "
                          "\"parameters\"}}", "invalid_type")
            function = tool["function"]
            name = function.get("name")
            if not (isinstance(name, str) and NAME.fullmatch(name)):
                raise bad(f"{where}.function.name", f"must be 1-64 letters, digits, _ or -, not {json.dumps(name)}")
            if any(t["name"] == name for t in tools):
                raise bad(f"{where}.function.name", f"{name!r} is declared twice")
            parameters = function.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(parameters, dict):
                raise bad(f"{where}.function.parameters", "must be a JSON schema object", "invalid_type")
            description = function.get("description")
            if description is not None and not isinstance(description, str):
                raise bad(f"{where}.function.description", "must be a string", "invalid_type")
            tools.append({"name": name, "description": description or "", "parameters": parameters})
    choice = body.get("tool_choice")
    if choice is None:
        return tools, "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise bad("tool_choice", f"{json.dumps(choice)} needs tools")
        return tools, choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        and isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise bad("tool_choice", "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                  "\"function\": {\"name\": ...}}", "invalid_type")
    if not any(t["name"] == name for t in tools):
        raise bad("tool_choice", f"names the function {name!r}, which is not among tools")
    return tools, {"name": name}


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
    if body.get("dimensions") is not None:  # refused by name rather than silently ignored
        raise bad("dimensions", "is not supported: the embeddings have the model's width (leave it out)",
                  "unsupported_parameter")
    _string(body, "user")
    inputs = parse_prompts(body["input"], "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise bad("input", f"at most {MAX_EMBEDDING_INPUTS} inputs a request, not {len(inputs)}; split them")
    return EmbeddingRequest(_string(body, "model"), inputs, fmt == "base64")


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
