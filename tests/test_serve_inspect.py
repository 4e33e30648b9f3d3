"""The server's /v1/inspect/* endpoints (the web page's Inspect view), in-process: the app with a real
engine thread over a tiny random model. The numbers equal `llm.attention` / `llm.lens` and the model's
own next-token distribution for the same tokens; inspecting while a generation runs leaves its greedy
text unchanged (the work runs on the engine thread between steps); bad input is a 400 OpenAI error and
the server serves on."""

import threading

import pytest
import torch
from starlette.testclient import TestClient

import llmkit
from llmkit.inspect.attention import attention_maps_of_ids
from llmkit.inspect.lens import logit_lens_of_ids
from llmkit.serve import inspect_api
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.openai_api import OpenAIService
from llmkit.serve.server import build_app
from llmkit.serve.worker import EngineWorker
from serve_fixtures import save_wide_tiny_model

KEY = "inspect-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "Speak the speech, I pray you, as I pronounced it to you"
CONVERSATION = [{"role": "system", "content": "You are Hamlet."}, {"role": "user", "content": "Who's there?"},
                {"role": "assistant", "content": "Nay, answer me: stand, and unfold yourself."}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, shakespeare_tokenizer):
    """(client, llm): the app over an engine thread that owns `llm`, with an API key."""
    model_dir = save_wide_tiny_model(tmp_path_factory.mktemp("inspect-tiny"), shakespeare_tokenizer, 512)
    metrics = ServerMetrics()
    worker = EngineWorker(lambda: llmkit.load(model_dir, device="cpu"), metrics, max_batch_size=4, max_waiting=8)
    worker.start()
    assert worker.ready.wait(120) and worker.load_error is None
    with TestClient(build_app(OpenAIService(worker, "tiny"), metrics, api_key=KEY)) as client:
        yield client, worker.llm
    worker.stop()


def post(client, kind, **body):
    return client.post(f"/v1/inspect/{kind}", json=body, headers=AUTH)


def ok(client, kind, **body):
    r = post(client, kind, **body)
    assert r.status_code == 200, r.text
    return r.json()


def chat(client, max_tokens=24):
    r = client.post("/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": TEXT}], "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_attention_equals_the_python_api(served):
    client, llm = served
    maps = llm.attention(TEXT)
    n_layers, n_heads = llm.model.config.n_layers, llm.model.config.n_heads
    body = ok(client, "attention", text=TEXT, token="you", layer=1, head=2)
    assert body["object"] == "inspect.attention" and body["model"] == "tiny"
    assert body["tokens"] == maps.tokens and body["token_ids"] == llm.tokenizer.encode(TEXT, add_bos=True)
    position = max(i for i, t in enumerate(maps.tokens) if t == " you")  # a word: its last occurrence
    assert (body["token"], body["layer"], body["head"], body["n_layers"], body["n_heads"]) == (position, 1, 2, n_layers, n_heads)
    # the chosen token in every layer: each head and the mean, exactly the weights `llm.attention` gives
    assert torch.equal(torch.tensor(body["heads"]), maps.weights[:, :, position, :position + 1])
    assert torch.equal(torch.tensor(body["mean"]), torch.stack([maps.row(position, lay) for lay in range(n_layers)]))
    # the heatmap: layer 1, head 2, row r over tokens 0..r
    assert [len(row) for row in body["matrix"]] == list(range(1, len(maps.tokens) + 1))
    for r, row in enumerate(body["matrix"]):
        assert torch.equal(torch.tensor(row), maps.weights[1, 2, r, :r + 1])
    # defaults: the last token, the middle layer, the mean over heads
    default = ok(client, "attention", text=TEXT)
    last = len(maps.tokens) - 1
    assert (default["token"], default["layer"], default["head"]) == (last, n_layers // 2, None)
    assert torch.equal(torch.tensor(default["matrix"][last]), maps.row(last, n_layers // 2))
    assert abs(sum(default["mean"][0]) - 1) < 1e-5


def test_conversation_is_read_as_the_template_renders_it(served):
    client, llm = served
    ids = llm.tokenizer.encode_chat(CONVERSATION, add_generation_prompt=False)
    body = ok(client, "attention", messages=CONVERSATION, token=-1)
    assert body["token_ids"] == ids and body["token"] == len(ids) - 1
    expected = attention_maps_of_ids(llm.model, llm.tokenizer, ids)
    assert torch.equal(torch.tensor(body["mean"][0]), expected.row(len(ids) - 1, 0))
    prompt = ok(client, "next_token", messages=CONVERSATION[:2], add_generation_prompt=True)
    assert prompt["token_ids"] == llm.tokenizer.encode_chat(CONVERSATION[:2], add_generation_prompt=True)


def test_lens_equals_the_python_api_and_its_last_row_is_the_next_token(served):
    client, llm = served
    body = ok(client, "lens", text=TEXT, top=4)
    result = llm.lens(TEXT, top=4)
    assert body["tokens"] == result.tokens and body["positions"] == list(range(len(result.tokens)))
    assert body["n_layers"] == llm.model.config.n_layers
    assert torch.equal(torch.tensor(body["top_ids"]), result.top_ids)
    assert torch.equal(torch.tensor(body["top_probs"]), result.top_probs)
    assert body["top_texts"] == result.top_texts
    ids = llm.tokenizer.encode(TEXT, add_bos=True)
    assert logit_lens_of_ids(llm.model, llm.tokenizer, ids, 4).top_texts == body["top_texts"]

    following = ok(client, "next_token", text=TEXT, top=7)
    with torch.inference_mode():
        logprobs = torch.log_softmax(llm.model(torch.tensor([ids]))[0, -1].float(), dim=-1)
    values, index = logprobs.topk(7)
    assert following["top_ids"] == index.tolist()
    torch.testing.assert_close(torch.tensor(following["top_logprobs"]), values, rtol=0, atol=1e-6)
    assert following["top_texts"][0] == body["top_texts"][-1][-1][0]  # the lens's last row: the model's own guess
    assert following["top_ids"][:4] == body["top_ids"][-1][-1]
    torch.testing.assert_close(torch.tensor(following["top_logprobs"][:4]).exp(), torch.tensor(body["top_probs"][-1][-1]),
                               rtol=0, atol=1e-5)


def test_inspecting_during_a_generation_leaves_its_text_unchanged(served):
    client, _ = served
    alone = chat(client, 48)
    replies, errors = [], []

    def generate():
        try:
            replies.append(chat(client, 48))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=generate)
    thread.start()
    for kind in ("attention", "lens", "next_token", "attention"):
        ok(client, kind, text=TEXT)
    thread.join(60)
    assert not errors and replies == [alone]


BAD = {
    "no input": ("attention", {}, "text", "invalid_type"),
    "text and messages": ("lens", {"text": "a", "messages": CONVERSATION}, "text", "invalid_type"),
    "text not a string": ("attention", {"text": 5}, "text", "invalid_type"),
    "empty text": ("next_token", {"text": "  "}, "text", "invalid_value"),
    "too many characters": ("lens", {"text": "x" * (inspect_api.MAX_TEXT_CHARS + 1)}, "text", "text_too_long"),
    "too many tokens": ("attention", {"text": "Words, words, words. " * 100}, "text", "text_too_long"),
    "long conversation": ("next_token", {"messages": [{"role": "user", "content": "Words, words. " * 200}]},
                          "messages", "text_too_long"),
    "bad message": ("attention", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
    "token out of range": ("attention", {"text": TEXT, "token": 999}, "token", "invalid_value"),
    "token not in the text": ("attention", {"text": TEXT, "token": "zebra"}, "token", "invalid_value"),
    "token of a wrong type": ("attention", {"text": TEXT, "token": [1]}, "token", "invalid_type"),
    "layer out of range": ("attention", {"text": TEXT, "layer": 99}, "layer", "invalid_value"),
    "head out of range": ("attention", {"text": TEXT, "head": -1}, "head", "invalid_value"),
    "lens top too large": ("lens", {"text": TEXT, "top": inspect_api.MAX_LENS_TOP + 1}, "top", "invalid_value"),
    "next top zero": ("next_token", {"text": TEXT, "top": 0}, "top", "invalid_value"),
    "unknown model": ("lens", {"text": TEXT, "model": "gpt-5"}, "model", "model_not_found"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_400_error_and_the_server_serves_on(served, name):
    client, _ = served
    kind, body, param, code = BAD[name]
    r = post(client, kind, **body)
    assert r.status_code == (404 if code == "model_not_found" else 400), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"].startswith(param.split("[")[0])
    assert (error["param"], error["code"]) == (param, code)
    if code == "text_too_long":
        assert f"at most {inspect_api.MAX_TOKENS}" in error["message"] or "characters" in error["message"]
    ok(client, kind, text="To be")
    assert chat(client, 2)


def test_malformed_json_and_the_key(served):
    client, _ = served
    r = client.post("/v1/inspect/lens", content=b'{"text": ', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = client.post("/v1/inspect/attention", json={"text": TEXT})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/inspect/lens", headers=AUTH).status_code == 405
