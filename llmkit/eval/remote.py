"""The task runner's backend for a model behind an OpenAI-compatible HTTP API (`llmkit serve`, vLLM,
llama.cpp's server, ...): `llmkit eval --model http://HOST:PORT/v1 --tasks ...`.

Log-likelihood: the whole text (context + continuation) is sent to /v1/completions with `echo: true`,
`logprobs: 1`, `max_tokens: 0`, and the server returns every prompt token with its log-probability (the
way lm-evaluation-harness's `local-completions` scores). The client does not know the server's
tokenizer, so the continuation's tokens are found from the end: the fewest final tokens whose texts
cover the continuation's characters (with the continuation's leading whitespace moved as the local
scorer moves it, scoring.py). Where the context's tokens are a prefix of the whole text's tokens (the
usual case at a space or newline boundary), these are exactly the tokens the local scorer scores, and the
sums are equal to float rounding: tests/test_eval_remote.py holds a served checkpoint to its local
run. A token that straddles the boundary is counted with the continuation. The server must fit each
text in its context (no left truncation here: the client cannot count tokens).

Generation: /v1/completions with the prompt, or with --chat /v1/chat/completions with the messages
(the server applies its chat template), greedy (`temperature: 0`), the task's stop strings (at most
four, OpenAI's limit; the rest are cut here). Log-likelihood with --chat is refused: a chat endpoint
returns no prompt log-probabilities.

Requests go out `concurrency` at a time, several prompts per request; a refused connection, a timeout,
429 or a 5xx is retried with backoff (honouring Retry-After), other errors stop the run with the
server's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from llmkit.errors import LLMKitError
from llmkit.eval.backends import Generated, Scored
from llmkit.eval.extract import cut_at_stops
from llmkit.eval.prompts import ExampleRequests
from llmkit.eval.scoring import OptionScore

RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_STOPS = 4  # OpenAI's limit on `stop`


class RemoteModelError(LLMKitError):
    """The server could not be reached, refused a request, or lacks what a task needs."""


def is_url(model: str) -> bool:
    return str(model).startswith(("http://", "https://"))


def api_base(url: str) -> str:
    """http://HOST:PORT, http://HOST:PORT/ or http://HOST:PORT/v1 -> http://HOST:PORT/v1"""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class RemoteBackend:
    scores_chat = False  # log-likelihood needs the prompt's log-probabilities: /v1/completions only

    def __init__(self, url: str, *, chat: bool = False, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600, retries: int = 5, concurrency: int = 4, batch: int = 16,
                 transport: httpx.BaseTransport | None = None):
        """model: the id sent as `model` (default: the first of /v1/models); api_key: sent as a Bearer
        token; transport: an httpx transport (tests)."""
        self.base, self.chat = api_base(url), chat
        self.retries, self.concurrency, self.batch = retries, concurrency, batch
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)
        self.model = model or self._served_model()

    def settings(self) -> dict:
        return {"backend": "remote", "url": self.base, "served_model": self.model, "chat": self.chat}

    def render_chat(self, messages: list[dict]) -> str:
        raise RemoteModelError("log-likelihood tasks cannot use --chat over HTTP (a chat endpoint returns no "
                               "prompt log-probabilities); drop --chat for them or evaluate the checkpoint locally")

    # -- HTTP
    def _served_model(self) -> str | None:
        """The first model the server lists (sent as `model`), or None when it has no /v1/models."""
        try:
            body = self._request("GET", "/models")
            return body["data"][0]["id"]
        except RemoteModelError as e:
            if "HTTP 404" in str(e):
                return None
            raise
        except (KeyError, IndexError, TypeError):
            return None

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        url = self.base + path
        for attempt in range(self.retries + 1):
            wait = min(30.0, 0.5 * 2 ** attempt)
            try:
                response = self.client.request(method, url, json=payload)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RemoteModelError(f"{url}: {type(e).__name__} ({e}) after {attempt + 1} attempts; is the "
                                           "server running, and is the URL right (http://HOST:PORT/v1)?") from None
                time.sleep(wait)
                continue
            if response.status_code in RETRY_STATUS and attempt < self.retries:
                retry_after = response.headers.get("Retry-After", "")
                time.sleep(float(retry_after) if retry_after.replace(".", "", 1).isdigit() else wait)
                continue
            if response.status_code != 200:
                raise RemoteModelError(f"{url}: HTTP {response.status_code}: {_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise RemoteModelError(f"{url}: the reply is not JSON: {response.text[:200]!r}") from None
        raise AssertionError("unreachable")

    def _body(self, **fields) -> dict:
        return {**({"model": self.model} if self.model else {}), **fields}

    def _completions(self, prompts: list[str], **fields) -> list[dict]:
        body = self._request("POST", "/completions", self._body(prompt=prompts, **fields))
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise RemoteModelError(f"{self.base}/completions: {len(prompts)} prompts sent, {len(choices)} choices "
                                   "returned; the server must accept a list of prompts")
        return choices

    def _map(self, fn, items: Sequence) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    # -- log-likelihood
    def loglikelihood(self, requests: Sequence[ExampleRequests], where: Callable[[int], str],
                      on_batch: Callable[[int], None] | None = None) -> list[Scored]:
        chunks, current, size = [], [], 0
        for r in requests:  # whole examples per HTTP request, about `batch` texts each
            if current and size + len(r.pairs) > self.batch:
                chunks.append(current)
                current, size = [], 0
            current.append(r)
            size += len(r.pairs)
        if current:
            chunks.append(current)

        def score(chunk: list[ExampleRequests]) -> list[Scored]:
            pairs = [_moved(c, x) for r in chunk for c, x in r.pairs]
            choices = self._completions([c + x for c, x in pairs], echo=True, logprobs=1, max_tokens=0,
                                        temperature=0)
            scores = [self._option_score(choice, continuation) for choice, (_, continuation) in zip(choices, pairs)]
            out, k = [], 0
            for r in chunk:
                out.append(Scored(scores[k:k + len(r.pairs)], 0))
                k += len(r.pairs)
            if on_batch is not None:
                on_batch(len(chunk))
            return out

        return [s for chunk_scores in self._map(score, chunks) for s in chunk_scores]

    def _option_score(self, choice: dict, continuation: str) -> OptionScore:
        logprobs = choice.get("logprobs") or {}
        tokens, values, tops = logprobs.get("tokens"), logprobs.get("token_logprobs"), logprobs.get("top_logprobs")
        if not tokens or values is None or len(values) != len(tokens):
            raise RemoteModelError(
                f"{self.base}/completions returned no prompt log-probabilities for echo=true, logprobs=1, max_tokens=0; "
                "log-likelihood tasks need them (llmkit serve and vLLM return them; many hosted APIs and "
                "llama.cpp's server do not): run only generative tasks (gsm8k, humaneval) against this server, "
                "or evaluate the model locally")
        k, covered = 0, 0
        while covered < len(continuation) and k < len(tokens):
            k += 1
            covered += len(tokens[-k])
        while k < len(tokens) and tokens[-k - 1] == "":  # part of a character the next token completes
            k += 1
        if covered < len(continuation) or values[-k] is None:
            raise RemoteModelError(f"{self.base}/completions: the echoed tokens do not cover the continuation "
                                   f"{continuation[:40]!r}; the server's echo is not the prompt's text")
        chosen = values[-k:]
        greedy = True
        for j in range(len(tokens) - k, len(tokens)):
            top = (tops or [None] * len(tokens))[j]
            if not top:
                greedy = False  # no alternatives reported: cannot confirm the argmax
            elif max(top.values()) > values[j] + 1e-6:
                greedy = False
        return OptionScore(float(sum(chosen)), k, greedy)

    # -- generation
    def generate(self, prompts: Sequence, max_new_tokens: int, stop: Sequence[str],
                 on_done: Callable[[int], None] | None = None) -> list[Generated]:
        fields = {"max_tokens": max_new_tokens, "temperature": 0, "stop": list(stop)[:MAX_STOPS]}

        def finish(text: str, choice: dict, tokens: int | None) -> Generated:
            return Generated(cut_at_stops(text or "", stop), choice.get("finish_reason") or "stop", tokens)

        if self.chat:
            def one(messages: list[dict]) -> Generated:
                body = self._request("POST", "/chat/completions", self._body(messages=messages, **fields))
                choice = (body.get("choices") or [{}])[0]
                tokens = (body.get("usage") or {}).get("completion_tokens")
                if on_done is not None:
                    on_done(1)
                return finish((choice.get("message") or {}).get("content"), choice, tokens)

            return self._map(one, list(prompts))

        def chunk(batch: list[str]) -> list[Generated]:
            choices = self._completions(batch, **fields)
            if on_done is not None:
                on_done(len(batch))
            return [finish(c.get("text"), c, None) for c in choices]

        batches = [list(prompts[i:i + self.batch]) for i in range(0, len(prompts), self.batch)]
        return [g for out in self._map(chunk, batches) for g in out]

    def first_tokens(self, conversations: Sequence[list[dict]], top: int = 20) -> list[tuple[str, dict[str, float]]]:
        """For each conversation, the first token the server's model answers greedily: (its reply text,
        {token text: log-probability} of the most likely first tokens; empty where the server returns no
        log-probabilities). A judge reads its verdict from these (train/label.py)."""

        def one(messages: list[dict]) -> tuple[str, dict[str, float]]:
            body = self._request("POST", "/chat/completions", self._body(
                messages=messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=top))
            choice = (body.get("choices") or [{}])[0]
            content = ((choice.get("logprobs") or {}).get("content") or [{}])[0]
            tops = {t["token"]: t["logprob"] for t in content.get("top_logprobs") or []
                    if isinstance(t, dict) and isinstance(t.get("token"), str)}
            return (choice.get("message") or {}).get("content") or "", tops

        return self._map(one, list(conversations))


def _moved(context: str, continuation: str) -> tuple[str, str]:
    """The context's trailing whitespace moved to the continuation (scoring.encode_options's rule)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))[:500]
        if error:
            return str(error)[:500]
    except (ValueError, AttributeError):
        pass
    return response.text[:500]
