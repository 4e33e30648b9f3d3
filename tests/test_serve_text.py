"""The server's pieces without a process: token ids -> shown text (half characters held back, stop
strings cut even when they span tokens), and /health's 503 while the model loads."""

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from conftest import run_cli

from llmkit.infer.sampling import TokenLogprob
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.openai_api import OpenAIService
from llmkit.serve.responses import ChoiceState
from llmkit.serve.server import build_app
from llmkit.serve.text_stream import TextStream
from llmkit.serve.worker import EngineWorker, Update


def stream_one_by_one(tokenizer, ids, **kwargs):
    stream = TextStream(tokenizer, **kwargs)
    deltas = [stream.add([t]) for t in ids]
    deltas.append(stream.finish())
    return stream, deltas


@pytest.mark.parametrize("text", ["héllo wörld, ça va? ✓ 日本語 🎭", "To be, or not to be: 1603"])
def test_token_by_token_text_equals_the_whole_decode(shakespeare_tokenizer, text):
    ids = shakespeare_tokenizer.encode(text)
    assert len(ids) > len(text) // 2  # a small vocabulary: accents and emoji are split into byte tokens
    stream, deltas = stream_one_by_one(shakespeare_tokenizer, ids)
    assert "".join(deltas) == text == stream.text
    assert not any("\ufffd" in d for d in deltas)  # half characters are held back, never shown
    assert "".join(p.text for p in stream.pieces) == text and len(stream.pieces) == len(ids)


def test_stop_string_spanning_tokens_is_held_back_and_cut(shakespeare_tokenizer):
    text = "To be, or not to be, that is the question"
    ids = shakespeare_tokenizer.encode(text)
    stream, deltas = stream_one_by_one(shakespeare_tokenizer, ids, stop_strings=("not to", "zzz"))
    assert "".join(deltas) == "To be, or " == stream.text
    assert stream.stopped
    assert "".join(p.text for p in stream.pieces) == "To be, or "
    # While the text ends with "n" or "not t" (the start of a stop string), that part is held back.
    stream, shown = TextStream(shakespeare_tokenizer, stop_strings=("not to",)), ""
    for token in ids:
        shown += stream.add([token])
        if stream.stopped:
            break
        if stream.text.endswith(("n", "no", "not", "not ", "not t")) and stream.text.startswith("To be, or n"):
            assert shown == "To be, or "
    assert stream.stopped


@given(st.text("ab", max_size=14), st.lists(st.text("abc", min_size=1, max_size=9), min_size=1, max_size=3))
def test_held_back_text_is_the_longest_end_that_begins_a_stop_string(text, stops):
    stream = TextStream(None, stop_strings=tuple(stops))
    stream.text = text
    # the definition: the longest n < len(stop) such that the text ends with the stop string's first n characters
    want = max((n for s in stops for n in range(min(len(s) - 1, len(text)) + 1) if text.endswith(s[:n])), default=0)
    assert stream._held_back() == want


def test_stop_token_ends_the_text(shakespeare_tokenizer):
    ids = shakespeare_tokenizer.encode("Alas, poor Yorick")
    end = shakespeare_tokenizer.stop_token_ids[0]
    stream, deltas = stream_one_by_one(shakespeare_tokenizer, ids[:3] + [end] + ids[3:],
                                       stop_token_ids=frozenset([end]))
    assert "".join(deltas) == shakespeare_tokenizer.decode(ids[:3])
    assert stream.stop_token == end


def test_completions_list_the_stop_token_s_log_probability(shakespeare_tokenizer):
    """`echo` + `max_tokens: 1` must give one log-probability past the prompt even when the generated
    token is a stop token: lm-evaluation-harness's local-completions drops the last one as the generated
    token's, and would otherwise drop a scored token instead."""
    ids = shakespeare_tokenizer.encode("Alas, poor")
    end = shakespeare_tokenizer.stop_token_ids[0]
    choice = ChoiceState(0, shakespeare_tokenizer, [end], [])
    choice.feed(Update(0, ids + [end], [TokenLogprob(t, -0.5) for t in ids + [end]], finish_reason="stop"))
    assert choice.text == "Alas, poor"
    completion = choice.new_pieces(stop_token=True)
    assert [p.token_id for p, _ in completion] == ids + [end] and completion[-1][0].text == ""
    assert "".join(p.text for p, _ in completion) == choice.text  # the tokens still concatenate to the text
    chat = ChoiceState(0, shakespeare_tokenizer, [end], [])
    chat.feed(Update(0, ids + [end], [TokenLogprob(t, -0.5) for t in ids + [end]], finish_reason="stop"))
    assert [p.token_id for p, _ in chat.new_pieces()] == ids  # chat lists the content's tokens only


@pytest.mark.parametrize("turns, system", [(300, True), (37, False), (2, True)])
def test_truncate_oldest_drops_what_one_turn_at_a_time_would_in_a_few_renders(shakespeare_tokenizer, turns, system):
    import math
    import types

    config = types.SimpleNamespace(max_seq_len=200)
    llm = types.SimpleNamespace(tokenizer=shakespeare_tokenizer, model=types.SimpleNamespace(config=config, text_context=config.max_seq_len))
    service = OpenAIService(types.SimpleNamespace(llm=llm), "m")
    messages = [{"role": "system", "content": "Be brief."}] * system + [
        {"role": ("user", "assistant")[i % 2], "content": f"Turn {i}: to be or not"} for i in range(turns)]
    renders = []
    render = service.render_chat
    service.render_chat = lambda m, tools=None: renders.append(len(m)) or render(m, tools)
    ids, dropped = service.chat_prompt(messages, 8, "oldest")
    # the definition: drop the oldest non-system turn, never the last message, until the prompt and 8 fit
    kept, expect = list(messages), 0
    while len(render(kept)) + 8 > 200:
        kept.pop(next(i for i, m in enumerate(kept[:-1]) if m["role"] != "system"))
        expect += 1
    assert (ids, dropped) == (render(kept), expect)
    assert len(renders) <= 3 + math.ceil(math.log2(turns))


def test_health_is_503_until_the_model_is_loaded():
    worker = EngineWorker(lambda: None, ServerMetrics(), max_batch_size=1, max_waiting=0)  # never started
    client = TestClient(build_app(OpenAIService(worker, "m"), ServerMetrics()))
    assert client.get("/health").status_code == 503
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    worker.llm = object()  # what the engine thread sets once loading is done
    assert client.get("/health").status_code == 200


def test_serve_user_errors_are_one_line_and_exit_2(tmp_path):
    result = run_cli("serve", "--model", tmp_path / "missing", "--port", 0)  # listens, then the load fails
    assert result.returncode == 2 and "listening on http://127.0.0.1:" in result.stdout
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such checkpoint directory"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--model", tmp_path, "--port", taken.getsockname()[1])
    assert result.returncode == 2 and "cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_engine_bug_in_one_submit_fails_that_request_and_the_server_keeps_serving(saved_tiny_model, capsys):
    """Was: any exception but an LLMKitError escaped engine.submit on the engine thread and ended it;
    /health still said 200 while every later request hung."""
    import llmkit

    metrics = ServerMetrics()
    worker = EngineWorker(lambda: llmkit.load(saved_tiny_model, device="cpu"), metrics, max_batch_size=2,
                          max_waiting=4)
    worker.start()
    assert worker.ready.wait(120) and worker.load_error is None
    real, calls = worker.engine.submit, []

    def first_one_breaks(ids, params):
        calls.append(ids)
        if len(calls) == 1:
            raise RuntimeError("an engine bug")
        return real(ids, params)

    worker.engine.submit = first_one_breaks
    body = {"messages": [{"role": "user", "content": "Who's there?"}], "max_tokens": 3}
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)  # a request the dead engine thread never answers fails the
    try:  # test after a minute instead of hanging it
        with TestClient(build_app(OpenAIService(worker, "m"), metrics)) as client:
            r = pool.submit(client.post, "/v1/chat/completions", json=body).result(timeout=60)
            assert r.status_code == 500 and "RuntimeError: an engine bug" in r.json()["error"]["message"]
            assert worker._thread.is_alive()
            r = pool.submit(client.post, "/v1/chat/completions", json=body).result(timeout=60)
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop"), r.text
    finally:
        worker.stop()
        pool.shutdown(wait=False)
    assert "Traceback" in capsys.readouterr().err  # the bug is in the log


def test_allowed_origins_let_those_pages_call_the_api_and_no_other(tmp_path):
    """--allowed-origins: a browser's preflight from a listed origin passes (before the key check: it carries
    no Authorization header) and replies carry Access-Control-Allow-Origin; other origins, and every origin
    without the option, get no such header, so the browser keeps the reply from the page."""
    worker = EngineWorker(lambda: None, ServerMetrics(), max_batch_size=1, max_waiting=0)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    app = build_app(OpenAIService(worker, "m"), ServerMetrics(), api_key="k", allowed_origins=["https://app.example.com"])
    client = TestClient(app)
    r = client.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.get("/v1/models", headers={"Origin": "https://app.example.com", "Authorization": "Bearer k"})
    assert r.status_code == 503 and r.headers["access-control-allow-origin"] == "https://app.example.com"  # loading
    r = client.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example.com"  # still keyed
    r = client.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    plain = TestClient(build_app(OpenAIService(worker, "m"), ServerMetrics()))
    assert "access-control-allow-origin" not in plain.get("/health", headers={"Origin": "https://app.example.com"}).headers
    result = run_cli("serve", "--model", tmp_path, "--port", 0, "--allowed-origins", "app.example.com/")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: --allowed-origins 'app.example.com/': an origin is a scheme "
                                                  "and a host, such as https://app.example.com or http://localhost:3000 "
                                                  "(no path), or * for any"]
