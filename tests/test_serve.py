"""`llmkit serve` tested as its users use it: a real server process on 127.0.0.1 with a tiny random
checkpoint, driven by the official `openai` client (and raw HTTP for what a client library would not
send). Streamed == non-streamed, concurrent == one at a time, echo log-probabilities == `llmkit score`,
and every error answered with OpenAI's error body, the server serving on after each."""

import asyncio
import json
import socket
import time
from collections import Counter

import httpx
import openai
import pytest

import llmkit
from serve_fixtures import metric, running_server, save_wide_tiny_model

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 256
HAMLET = [{"role": "user", "content": "Speak the speech, I pray you, as I pronounced it to you"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, shakespeare_tokenizer):
    """A random tiny model, its weights drawn wide (std 0.3) so that its greedy text varies with the prompt
    and wanders over the whole vocabulary (stray bytes, half characters), not one token repeated."""
    return save_wide_tiny_model(tmp_path_factory.mktemp("serve-tiny"), shakespeare_tokenizer, CONTEXT)


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    args = ["--model", tiny_dir, "--served-model-name", "tiny", "--api-key", KEY, "--max-batch-size", 32,
            "--max-waiting", 8, "--max-body-mib", 0.25]
    with running_server(args, log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def chat(client, messages=HAMLET, **kwargs):
    return client.chat.completions.create(model="tiny", messages=messages, **{"max_tokens": 24, **kwargs})


def streamed_chat(client, messages=HAMLET, **kwargs):
    """(texts per choice, finish reasons per choice, logprob tokens per choice, chunks)."""
    chunks = list(chat(client, messages, stream=True, **kwargs))
    n = kwargs.get("n", 1)
    texts, finishes, tokens = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason is not None:
                finishes[c.index].append(c.finish_reason)
            if c.logprobs is not None:
                tokens[c.index] += [t.token for t in c.logprobs.content]
    return texts, finishes, tokens, chunks


def ok(server):
    """A request that must succeed: the server still serves."""
    r = httpx.post(f"{server}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": "tiny", "messages": HAMLET, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


# --- generation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, seed=7, n=2)])
def test_streamed_equals_non_streamed_and_one_finish_reason_per_choice(client, sampling):
    whole = chat(client, **sampling)
    texts, finishes, _, _ = streamed_chat(client, **sampling)
    n = sampling.get("n", 1)
    assert [c.index for c in whole.choices] == list(range(n))
    assert texts == [c.message.content for c in whole.choices]
    assert finishes == [[c.finish_reason] for c in whole.choices]  # exactly one chunk carries it
    assert all(t for t in texts)
    if n == 2:
        assert texts[0] != texts[1]  # the choices are sampled apart (seeds 7 and 8)


@pytest.mark.parametrize("stream,include_usage", [(False, None), (True, None), (True, False), (True, True)])
def test_usage_matrix(server, client, stream, include_usage):
    prompt_tokens = httpx.post(f"{server}/tokenize", headers=AUTH, json={"messages": HAMLET}).json()["count"]
    if not stream:
        usage = chat(client, temperature=0, max_tokens=5).usage
        assert (usage.prompt_tokens, usage.total_tokens) == (prompt_tokens, prompt_tokens + usage.completion_tokens)
        assert 1 <= usage.completion_tokens <= 5
        return
    options = None if include_usage is None else {"include_usage": include_usage}
    chunks = list(chat(client, stream=True, stream_options=options, temperature=0, max_tokens=5))
    with_usage = [c for c in chunks if c.usage is not None]
    if not include_usage:
        assert with_usage == []
        return
    assert with_usage == [chunks[-1]] and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage.prompt_tokens == prompt_tokens
    assert usage.completion_tokens == chat(client, temperature=0, max_tokens=5).usage.completion_tokens


def test_prefix_cached_prompt_tokens_are_counted(client):
    long = [{"role": "system", "content": "You are a player in a company of travelling actors. " * 4}, *HAMLET]
    first = chat(client, long, temperature=0, max_tokens=3)
    again = chat(client, long, temperature=0, max_tokens=3)
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 48
    assert again.usage.prompt_tokens_details.cached_tokens >= 32  # whole 16-token blocks of the prefix cache
    assert again.choices[0].message.content == first.choices[0].message.content


def test_logprobs_tokens_concatenate_to_the_content(client):
    whole = chat(client, temperature=1.0, seed=5, max_tokens=40, logprobs=True, top_logprobs=3)
    choice = whole.choices[0]
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    for t in choice.logprobs.content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    texts, _, tokens, _ = streamed_chat(client, temperature=1.0, seed=5, max_tokens=40, logprobs=True, top_logprobs=3)
    assert "".join(tokens[0]) == texts[0] == choice.message.content
    greedy = chat(client, temperature=0, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert all(t.logprob == t.top_logprobs[0].logprob for t in greedy)  # greedy picks the most likely


def test_stop_strings_cut_the_text(client):
    sampling = dict(temperature=1.0, seed=11, max_tokens=60)
    full = chat(client, **sampling).choices[0].message.content
    assert len(full) > 30, full
    stop = full[12:15]
    expected = full[:full.index(stop)]
    cut = chat(client, stop=[stop, "@@never@@"], **sampling).choices[0]
    assert (cut.message.content, cut.finish_reason) == (expected, "stop")
    texts, finishes, _, _ = streamed_chat(client, stop=stop, **sampling)
    assert (texts[0], finishes[0]) == (expected, ["stop"])


def test_same_seed_same_text_with_other_requests_in_flight(server):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0) as c:
            async def one(seed, content=HAMLET[0]["content"]):
                r = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                                    temperature=1.0, seed=seed, max_tokens=30)
                return r.choices[0].message.content

            alone = await one(42)
            crowd = await asyncio.gather(one(42), *[one(s, f"Other request {s}") for s in range(6)], one(42))
            return alone, crowd

    alone, crowd = asyncio.run(run())
    assert crowd[0] == alone == crowd[-1]
    assert len(set(crowd[1:-1])) > 1


def test_32_concurrent_greedy_requests_equal_one_at_a_time(server, client):
    prompts = [f"{name}, scene {i}:" for i, name in enumerate(["ROMEO", "JULIET", "HAMLET", "OPHELIA"] * 8)]

    def text(r):
        return r.choices[0].text

    alone = [text(client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)) for p in prompts]

    async def together():
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0) as c:
            return await asyncio.gather(*[c.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)
                                          for p in prompts])

    assert [text(r) for r in asyncio.run(together())] == alone
    assert len(set(alone)) > 1


def test_echo_logprobs_equal_llmkit_score(client, tiny_dir):
    """What lm-evaluation-harness's local-completions model asks for log-likelihood tasks."""
    text = "ROMEO: But soft, what light through yonder window breaks?"
    score = llmkit.load(tiny_dir).score(text)
    expected = [t.logprob for t in score.tokens]
    r = client.completions.create(model="tiny", prompt=text, echo=True, logprobs=1, max_tokens=1, temperature=0)
    choice = r.choices[0]
    assert choice.text.startswith(text)
    got = choice.logprobs.token_logprobs
    assert got[0] is None and len(got) == len(expected) + 2  # BOS, the text's tokens, one generated token
    assert got[1:-1] == pytest.approx(expected, abs=1e-5)
    assert "".join(choice.logprobs.tokens[1:-1]) == text
    # Token-id prompts in a batch (the harness's default), scoring only (max_tokens 0).
    ids = llmkit.load(tiny_dir).tokenizer.encode(text, add_bos=True)
    batch = client.completions.create(model="tiny", prompt=[ids, ids[:6]], echo=True, logprobs=2, max_tokens=0)
    first, second = sorted(batch.choices, key=lambda c: c.index)
    assert first.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert second.logprobs.token_logprobs[1:] == pytest.approx(expected[:5], abs=1e-5)
    for lp, top in zip(first.logprobs.token_logprobs[1:], first.logprobs.top_logprobs[1:]):
        assert max(top.values()) >= lp  # the harness's is_greedy test reads this


def test_embeddings_models_and_tokenizer_endpoints(server, client, tiny_dir):
    vectors = client.embeddings.create(model="tiny", input=["To be, or not to be", "that is the question"]).data
    assert [len(v.embedding) for v in vectors] == [64, 64]
    assert sum(x * x for x in vectors[0].embedding) == pytest.approx(1.0, abs=1e-4)
    floats = httpx.post(f"{server}/v1/embeddings", headers=AUTH,
                        json={"input": "To be, or not to be", "encoding_format": "float"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vectors[0].embedding, abs=1e-6)  # base64 == float
    assert [m.id for m in client.models.list().data] == ["tiny"]
    tokenizer = llmkit.load(tiny_dir).tokenizer
    text = "Alas, poor Yorick! 1603"
    tokenized = httpx.post(f"{server}/tokenize", headers=AUTH, json={"prompt": text}).json()
    assert tokenized["tokens"] == tokenizer.encode(text, add_bos=True) and tokenized["max_model_len"] == CONTEXT
    detok = httpx.post(f"{server}/detokenize", headers=AUTH, json={"tokens": tokenized["tokens"][1:]}).json()
    assert detok["prompt"] == text
    info = httpx.get(f"{server}/tokenizer_info", headers=AUTH).json()
    assert info["bos_token_id"] == tokenizer.bos_id and info["chat_template"] == tokenizer.chat_template


def test_metrics_count_tokens_and_latencies(server, client):
    before = metric(server, "llmkit_generation_tokens_total", AUTH)
    ttft_before = metric(server, "llmkit_time_to_first_token_seconds_count", AUTH)
    r = chat(client, temperature=0, max_tokens=6)
    assert metric(server, "llmkit_generation_tokens_total", AUTH) == before + r.usage.completion_tokens
    assert metric(server, "llmkit_time_to_first_token_seconds_count", AUTH) == ttft_before + 1
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    for name in ("llmkit_requests_running", "llmkit_requests_waiting", "llmkit_kv_cache_usage_ratio",
                 "llmkit_prefix_cache_hit_ratio", 'llmkit_inter_token_latency_seconds_bucket{le="+Inf"}'):
        assert name in text


# --- errors: each answered in OpenAI's format, the server serving on -------------------------------------------
def chat_body(**fields):
    return json.dumps({"model": "tiny", "messages": HAMLET, "max_tokens": 2, **fields}).encode()


ERRORS = {
    "temperature wrong type": (chat_body(temperature="hot"), 400, "temperature"),
    "top_p out of range": (chat_body(top_p=1.5), 400, "top_p"),
    "n zero": (chat_body(n=0), 400, "n"),
    "max_tokens negative": (chat_body(max_tokens=-1), 400, "max_tokens"),
    "unknown role": (chat_body(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role"),
    "empty messages": (chat_body(messages=[]), 400, "messages"),
    "content wrong type": (chat_body(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    "top_logprobs over 20": (chat_body(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    "presence_penalty": (chat_body(presence_penalty=0.5), 400, "presence_penalty"),
    "stream_options without stream": (chat_body(stream_options={"include_usage": True}), 400, "stream_options"),
    "malformed JSON": (b'{"model": "tiny", "messages": [', 400, None),
    "invalid UTF-8": (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    "body not an object": (b"[1, 2]", 400, None),
    "unknown model": (chat_body(model="gpt-5"), 404, "model"),
    "body too large": (chat_body(messages=[{"role": "user", "content": "x" * 300_000}]), 413, None),
    "conversation longer than the context": (
        chat_body(messages=[{"role": "user", "content": "Words, words, words. " * 80}]), 400, "messages"),
    # far longer: refused from a prefix, before the whole text is tokenized
    "conversation far longer than the context": (
        chat_body(messages=[{"role": "user", "content": "ab " * 80_000}]), 400, "messages"),
    "temperature a 400-digit integer": (chat_body(temperature=10**400), 400, "temperature"),
    "temperature below the engine's least": (chat_body(temperature=1e-7), 400, "temperature"),
    "top_k beyond 64 bits": (chat_body(top_k=10**30), 400, "top_k"),
    "seed of 5,000 digits": (b'{"model": "tiny", "seed": ' + b"9" * 5000 + b"}", 400, None),
    "arrays nested 50,000 deep": (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, None),
    "a stop string of 1,001 characters": (chat_body(stop=["x" * 1001]), 400, "stop"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_answered_and_the_server_serves_on(server, name):
    body, status, param = ERRORS[name]
    r = httpx.post(f"{server}/v1/chat/completions", content=body, timeout=30,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if name == "conversation longer than the context":
        assert error["code"] == "context_length_exceeded"
        assert "the messages have" in error["message"]
        assert f"but the model's context is {CONTEXT} tokens" in error["message"]
    if name == "conversation far longer than the context":
        assert error["code"] == "context_length_exceeded" and "characters alone" in error["message"]
    if name in ("seed of 5,000 digits", "arrays nested 50,000 deep"):
        assert error["code"] == "invalid_json"
    ok(server)


def test_requests_the_server_could_never_hold_or_answer_are_400s_not_429s_or_500s(server, client):
    # More generations than --max-batch-size + --max-waiting (40): a 429 would have the client retry forever.
    with pytest.raises(openai.BadRequestError, match="more than this server holds"):
        client.completions.create(model="tiny", prompt=["ROMEO:"] * 41, max_tokens=2)
    r = httpx.post(f"{server}/v1/completions", headers=AUTH, timeout=30,
                   json={"model": "tiny", "prompt": ["ROMEO:"] * 20, "n": 3, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    # embeddings: OpenAI's limit of 2,048 inputs; `dimensions` refused by name rather than ignored
    with pytest.raises(openai.BadRequestError, match="at most 2048 inputs"):
        client.embeddings.create(model="tiny", input=["a"] * 2049)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="tiny", input="a", dimensions=8)
    r = httpx.post(f"{server}/detokenize", headers=AUTH, json={"model": 5, "tokens": [1]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    r = httpx.get(f"{server}/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["message"]
    ok(server)


def test_a_many_input_embeddings_request_stops_when_its_client_hangs_up(server):
    """Embeddings run one forward per input off the engine's batch: a client that hangs up stops the rest
    (counted in /metrics) instead of holding the worker for 2,048 forwards nobody reads."""
    abandoned = metric(server, "llmkit_requests_abandoned_total", AUTH)
    payload = json.dumps({"model": "tiny", "input": ["Speak the speech, I pray you " * 3] * 2048}).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:  # a raw client that sends and goes
        connection.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                           % (KEY.encode(), len(payload), payload))
    deadline = time.monotonic() + 60
    while metric(server, "llmkit_requests_abandoned_total", AUTH) == abandoned and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(server, "llmkit_requests_abandoned_total", AUTH) == abandoned + 1
    ok(server)


def test_half_a_surrogate_pair_is_a_400_naming_the_field(server):
    """JSON can escape half a UTF-16 surrogate pair alone; it is not text, and the tokenizer failed on it
    with a 500 and a traceback."""
    for path, body, param in (
            ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud83d"}]}',
             "messages[0].content"),
            ("/v1/completions", '{"model": "tiny", "prompt": ["fine", "\\udc00 alone"], "max_tokens": 2}', "prompt[1]"),
            ("/tokenize", '{"prompt": "x \\ud83d"}', "prompt"),
            ("/v1/embeddings", '{"model": "tiny", "input": "\\ud800"}', "input"),
            ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}, '
             '{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", '
             '"arguments": "{\\"x\\": \\"\\\\ud83d\\"}"}}]}, {"role": "user", "content": "go"}]}',
             "messages[1].tool_calls[0].function.arguments.x")):
        r = httpx.post(f"{server}{path}", headers={**AUTH, "Content-Type": "application/json"}, content=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)
        assert "unpaired UTF-16 surrogate" in r.json()["error"]["message"]
    # a whole pair is a character, and a backslash-u written as text is text
    r = httpx.post(f"{server}/tokenize", headers=AUTH, content='{"prompt": "\\ud83d\\ude00 and \\\\ud83d"}')
    assert r.status_code == 200, r.text
    ok(server)


def test_errors_through_the_openai_client(server, client):
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        chat(client, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=HAMLET)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(model="tiny", prompt=[[5, 999_999]], max_tokens=2)
    assert httpx.get(f"{server}/health").status_code == 200  # open without the key
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/no/such/path", headers=AUTH).json()["error"]["code"] == "not_found"
    ok(server)


def test_truncate_oldest_drops_turns_but_not_the_system_turn(server, client):
    system = {"role": "system", "content": "You are Horatio."}
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"Turn {i}: " + "the rest is silence " * 8}
             for i in range(9)]
    messages = [system, *turns]
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|tokens"):
        chat(client, messages, max_tokens=8)
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, extra_body={"truncate": "oldest"})
    dropped = r.model_extra["truncated_messages"]
    assert dropped >= 1
    kept = [system, *turns[dropped:]]
    count = httpx.post(f"{server}/tokenize", headers=AUTH, json={"messages": kept}).json()["count"]
    assert r.usage.prompt_tokens == count and count + 8 <= CONTEXT
    one_more = [system, *turns[dropped - 1:]]  # the fewest turns dropped: keeping one more does not fit
    assert httpx.post(f"{server}/tokenize", headers=AUTH, json={"messages": one_more}).json()["count"] + 8 > CONTEXT
    # A history of 3,000 turns: a few renders (a binary search over how many to drop), not one per turn.
    long_history = [system, *[{"role": ("user", "assistant")[i % 2], "content": f"Turn {i}."} for i in range(3001)]]
    r = client.chat.completions.create(model="tiny", messages=long_history, max_tokens=8,
                                       extra_body={"truncate": "oldest"}, timeout=60)
    dropped = r.model_extra["truncated_messages"]
    kept = [system, *long_history[1 + dropped:]]
    assert httpx.post(f"{server}/tokenize", headers=AUTH, json={"messages": kept}).json()["count"] == \
        r.usage.prompt_tokens


async def raw_post(url: str, path: str, body: dict) -> tuple[int, dict, bytes]:
    """A bare HTTP/1.1 POST on its own connection (a thousand of them at once cost the test little)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, content = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, content


def test_a_thousand_requests_at_once_are_answered_or_refused_with_429(server):
    async def burst():
        body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 32, "temperature": 0}
        return await asyncio.gather(*[raw_post(server, "/v1/completions", body) for _ in range(1000)])

    responses = asyncio.run(burst())
    statuses = Counter(status for status, _, _ in responses)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[429] > 0 and statuses[200] >= 32, statuses
    _, headers, content = next(r for r in responses if r[0] == 429)
    assert headers["retry-after"].isdigit() and json.loads(content)["error"]["code"] == "queue_full"
    texts = {json.loads(content)["choices"][0]["text"] for status, _, content in responses if status == 200}
    assert len(texts) == 1  # every accepted greedy request got the same answer
    ok(server)
