"""`llmkit serve --model smollm2`: a real chat template and vocabulary. The server's reply equals the
Python API's, and a client that goes away has its request cancelled within a second."""

import json
import socket
import time

import httpx
import openai
import pytest

import llmkit
from serve_fixtures import metric, running_server

pytestmark = pytest.mark.slow  # a 135M model served end to end
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_server(smollm2_dir, tmp_path_factory):
    # smollm2_dir has converted the model into this session's LLMKIT_CACHE, which the server inherits.
    log = tmp_path_factory.mktemp("serve-smollm2") / "server.log"
    with running_server(["--model", "smollm2"], log) as url:
        yield url


def test_chat_equals_the_python_api_streamed_or_not(smol_server, smollm2_dir):
    client = openai.OpenAI(base_url=f"{smol_server}/v1", api_key="none", max_retries=0)
    request = dict(model="smollm2", messages=QUESTION, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**request)
    content = whole.choices[0].message.content
    assert "Paris" in content
    assert content == llmkit.load("smollm2").chat(QUESTION, temperature=0, max_new_tokens=8)
    assert "".join(t.token for t in whole.choices[0].logprobs.content) == content
    texts, finishes = [], []
    for chunk in client.chat.completions.create(**request, stream=True):
        for c in chunk.choices:
            texts.append(c.delta.content or "")
            finishes += [c.finish_reason] if c.finish_reason else []
    assert "".join(texts) == content and finishes == [whole.choices[0].finish_reason]
    rendered = httpx.post(f"{smol_server}/tokenize", json={"messages": QUESTION}).json()
    assert whole.usage.prompt_tokens == rendered["count"] and rendered["max_model_len"] == 8192


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_has_its_request_cancelled(smol_server, stream):
    cancelled = metric(smol_server, 'llmkit_requests_finished_total{reason="cancelled"}')
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 400, "temperature": 0, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{smol_server}/v1/chat/completions", json=body, timeout=60) as r:
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            for _ in range(3):  # the role chunk and two tokens: the request is running
                next(events)
            assert metric(smol_server, "llmkit_requests_running") == 1
    else:  # a raw connection, closed once the request is running (a client library would wait for the reply)
        payload = json.dumps(body).encode()
        host, port = smol_server.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            assert wait_for(lambda: metric(smol_server, "llmkit_requests_running") == 1, 60)

    def cancelled_and_freed():
        return (metric(smol_server, 'llmkit_requests_finished_total{reason="cancelled"}') == cancelled + 1
                and metric(smol_server, "llmkit_requests_running") == 0)

    # a request that ran on would finish by length, not as cancelled; the wait only bounds a slow machine (1 s
    # failed once under the full suite on 2 cores)
    assert wait_for(cancelled_and_freed, 10.0)
    assert metric(smol_server, "llmkit_requests_waiting") == 0
