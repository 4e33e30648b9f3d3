"""`llmkit eval --model URL`: tasks scored through an OpenAI-compatible server equal the same checkpoint
scored in this process. The server is a real `llmkit serve` on a tiny checkpoint (tests/serve_fixtures.py)."""

import json

import httpx
import pytest
import torch

from conftest import TEST_DATA, run_cli
from llmkit.checkpoint import save_checkpoint
from llmkit.config import ModelConfig
from llmkit.errors import ConfigError
from llmkit.eval import evaluate_tasks, evaluate_with, parse_task_list
from llmkit.eval.remote import RemoteBackend, RemoteModelError, api_base
from llmkit.model import Transformer
from serve_fixtures import running_server

FIXTURES = TEST_DATA / "eval"
KEY = "eval-key"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shakespeare_tokenizer):
    """A random tiny model with a context the fixtures' few-shot prompts fit in (nothing truncated)."""
    directory = tmp_path_factory.mktemp("remote-tiny")
    torch.manual_seed(3)
    model = Transformer(ModelConfig.preset("tiny", max_seq_len=1024)).eval()
    save_checkpoint(directory, model, shakespeare_tokenizer)
    return directory, model, shakespeare_tokenizer


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("remote-log") / "server.log"
    with running_server(["--model", tiny[0], "--served-model-name", "tiny", "--api-key", KEY], log) as url:
        yield url


def test_loglikelihood_through_the_server_equals_the_local_run(tiny, server):
    _, model, tokenizer = tiny
    specs = parse_task_list("arc_easy,copa,winogrande,lambada_openai", FIXTURES, shots=1)
    local = evaluate_tasks(model, tokenizer, specs, progress=False)
    remote = evaluate_with(RemoteBackend(f"{server}/v1", api_key=KEY, batch=5), specs, progress=False)
    assert remote["settings"]["served_model"] == "tiny" and remote["settings"]["backend"] == "remote"
    for spec in specs:
        mine, theirs = local["examples"][spec.name], remote["examples"][spec.name]
        assert len(mine) == len(theirs) == 20
        for a, b in zip(mine, theirs):
            assert a["tokens"] == b["tokens"]  # the same continuation tokens were found from the echo
            assert b["scores"] == pytest.approx(a["scores"], abs=1e-4)
            assert a["correct"] == b["correct"]
            if spec.kind == "language_modeling":
                assert a["greedy"] == b["greedy"]
        assert local["tasks"][spec.name]["metrics"] == remote["tasks"][spec.name]["metrics"]


def test_generation_through_the_server_equals_the_local_run(tiny, server):
    _, model, tokenizer = tiny
    specs = parse_task_list("gsm8k_direct", FIXTURES, shots=2, max_new_tokens=12)
    local = evaluate_tasks(model, tokenizer, specs, limit=6, progress=False)
    remote = evaluate_with(RemoteBackend(server, api_key=KEY), specs, limit=6, progress=False)
    texts = [r["prediction"] for r in local["examples"]["gsm8k_direct"]]
    assert [r["prediction"] for r in remote["examples"]["gsm8k_direct"]] == texts
    assert any(texts)  # greedy text, not empty replies


def test_chat_generation_uses_the_servers_template_and_loglikelihood_refuses_chat(tiny, server):
    _, model, tokenizer = tiny
    specs = parse_task_list("gsm8k_zero", FIXTURES, max_new_tokens=10)
    local = evaluate_tasks(model, tokenizer, specs, limit=4, progress=False, chat=True)
    remote = evaluate_with(RemoteBackend(server, api_key=KEY, chat=True), specs, limit=4, progress=False)
    assert [r["prediction"] for r in remote["examples"]["gsm8k_zero"]] == \
        [r["prediction"] for r in local["examples"]["gsm8k_zero"]]
    with pytest.raises(ConfigError, match="--chat with log-likelihood tasks"):
        evaluate_with(RemoteBackend(server, api_key=KEY, chat=True), parse_task_list("copa", FIXTURES), limit=2,
                      progress=False)


def test_cli_against_the_server_writes_a_run(server, tmp_path):
    out = tmp_path / "run"
    result = run_cli("eval", "--model", f"{server}/v1", "--tasks", "copa", "--task-dir", FIXTURES, "--limit", 8,
                     "--out", out, env_extra={"OPENAI_API_KEY": KEY}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["settings"]["url"] == f"{server}/v1" and summary["tasks"]["copa"]["n"] == 8
    result = run_cli("eval", "--model", f"{server}/v1", "--tasks", "copa", "--task-dir", FIXTURES, "--limit", 2,
                     "--out", tmp_path / "refused", env_extra={"OPENAI_API_KEY": "wrong"}, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "HTTP 401" in result.stderr


def fake_server(handler):
    return httpx.MockTransport(handler)


def test_a_server_without_prompt_logprobs_gets_a_clear_error():
    def handler(request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        n = len(json.loads(request.content)["prompt"])
        return httpx.Response(200, json={"choices": [{"index": i, "text": "", "logprobs": None} for i in range(n)]})

    backend = RemoteBackend("http://example.invalid:1", transport=fake_server(handler))
    with pytest.raises(RemoteModelError, match="no prompt log-probabilities.*run only generative tasks"):
        evaluate_with(backend, parse_task_list("copa", FIXTURES), limit=2, progress=False)


def test_busy_or_failing_servers_are_retried_then_reported(monkeypatch):
    monkeypatch.setattr("llmkit.eval.remote.time.sleep", lambda s: None)
    calls = []

    def flaky(request):
        calls.append(request.url.path)
        if len(calls) <= 2:
            return httpx.Response(503, json={"error": {"message": "loading"}})
        return httpx.Response(200, json={"data": [{"id": "served"}]})

    assert RemoteBackend("http://h:1/v1/", transport=fake_server(flaky)).model == "served" and len(calls) == 3

    def broken(request):
        return httpx.Response(500, json={"error": {"message": "boom"}})

    with pytest.raises(RemoteModelError, match="HTTP 500: boom"):
        RemoteBackend("http://h:1", transport=fake_server(broken), retries=2)

    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(RemoteModelError, match="is the server running"):
        RemoteBackend("http://h:1", transport=fake_server(down), retries=1)
    assert api_base("http://h:8000") == api_base("http://h:8000/v1/") == "http://h:8000/v1"
