"""`llmkit serve`'s API surface against OpenAI's reference and vLLM's server, field by field: a real server
process (a tiny random checkpoint) driven by the official `openai` client and raw HTTP."""

import json

import httpx
import openai
import pytest

from serve_fixtures import running_server, save_wide_tiny_model

CONTEXT = 256
HELLO = [{"role": "user", "content": "Speak the speech, I pray you"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, shakespeare_tokenizer):
    out = tmp_path_factory.mktemp("serve-api-audit")
    model = save_wide_tiny_model(out / "model", shakespeare_tokenizer, CONTEXT)
    with running_server(["--model", model, "--served-model-name", "tiny"], out / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def events(server: str, path: str, body: dict) -> list[dict]:
    """The JSON events of a streamed reply (checking the SSE framing: `data: ...` + a blank line, then [DONE])."""
    with httpx.stream("POST", f"{server}{path}", json={"model": "tiny", "stream": True, **body}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and all(f.startswith("data: ") for f in frames[:-1]), raw
    return [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]


def test_streamed_completion_text_offsets_count_from_the_start_of_the_text(server, client):
    """vLLM's stream gives each chunk's offsets from the start of the choice's text (so the chunks' lists
    concatenate to the whole reply's); each chunk started again at 0."""
    sampling = dict(prompt="ROMEO: But soft", max_tokens=12, temperature=0, logprobs=1)
    whole = client.completions.create(model="tiny", **sampling).choices[0]
    tokens, offsets, text = [], [], ""
    for event in events(server, "/v1/completions", sampling):
        for choice in event["choices"]:
            text += choice["text"]
            if choice["logprobs"] is not None:
                tokens += choice["logprobs"]["tokens"]
                offsets += choice["logprobs"]["text_offset"]
    assert text == whole.text and tokens == whole.logprobs.tokens
    assert offsets == whole.logprobs.text_offset and len(set(offsets)) > 3
    assert all(text[o:o + len(t)] == t for o, t in zip(offsets, tokens))


def test_streamed_usage_of_a_scoring_only_request_counts_its_prompts(server, client):
    """max_tokens 0 starts no generation; the streamed usage read the prompts' lengths from the
    generations, and said 0 prompt tokens where the non-streamed reply said 9."""
    body = {"prompt": ["Hi", "Hello there"], "max_tokens": 0}
    expected = client.completions.create(model="tiny", **body).usage
    assert expected.prompt_tokens > 2
    streamed = events(server, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["prompt_tokens"] == expected.prompt_tokens
    assert sorted(c["index"] for e in streamed[:-1] for c in e["choices"]) == [0, 1]


def test_a_model_is_retrieved_by_its_id(client):
    """OpenAI's GET /v1/models/{model} (the client's models.retrieve) was a 404 "no such endpoint"."""
    model = client.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "llmkit")
    assert model.created == client.models.list().data[0].created
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("org/other-model")
    assert caught.value.body["code"] == "model_not_found" and "does not exist" in caught.value.body["message"]


def post(server: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server}{path}", json={"model": "tiny", **body}, timeout=60)


CHAT = {"messages": HELLO, "max_tokens": 3}
COMPLETION = {"prompt": "ROMEO:", "max_tokens": 3}


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {**CHAT, "user": 5}, "user"),
    ("/v1/completions", {**COMPLETION, "user": ["x"]}, "user"),
    ("/v1/embeddings", {"input": "hi", "user": {"id": 1}}, "user"),
    # a nested field named by its path (it was named "include_usage" alone)
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    # fields of other servers and of OpenAI that change the reply: refused by name, not silently ignored
    ("/v1/completions", {**COMPLETION, "ignore_eos": True}, "ignore_eos"),
    ("/v1/chat/completions", {**CHAT, "min_tokens": 5}, "min_tokens"),
    ("/v1/chat/completions", {**CHAT, "guided_json": {"type": "object"}}, "guided_json"),
    ("/v1/completions", {**COMPLETION, "grammar": "root ::= \"a\""}, "grammar"),
    ("/v1/chat/completions", {**CHAT, "echo": True}, "echo"),
    ("/v1/chat/completions", {**CHAT, "continue_final_message": True}, "continue_final_message"),
    ("/v1/chat/completions", {**CHAT, "modalities": ["text", "audio"]}, "modalities"),
    ("/v1/completions", {**COMPLETION, "skip_special_tokens": "no"}, "skip_special_tokens"),
    ("/v1/completions", {**COMPLETION, "n_predict": 8}, "n_predict"),
    ("/v1/chat/completions", {**CHAT, "chat_template": "{{ messages }}"}, "chat_template"),
    ("/v1/chat/completions", {**CHAT, "stop_token_ids": [3, "4"]}, "stop_token_ids"),
    ("/v1/chat/completions", {**CHAT, "stop_token_ids": [100_000]}, "stop_token_ids"),
])
def test_wrong_or_unhonoured_fields_are_400s_naming_them(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"].startswith(param), r.text


def test_the_same_fields_asking_for_nothing_and_unknown_fields_are_accepted(server):
    """As vLLM and llama.cpp do, fields the server does not know are ignored; so are these fields at
    their do-nothing values, which clients send by default."""
    harmless = {"user": "u-1", "ignore_eos": False, "min_tokens": 0, "echo": False, "modalities": ["text"],
                "add_generation_prompt": True, "store": False, "metadata": {"k": "v"}, "no_such_field": 1}
    r = post(server, "/v1/chat/completions", {**CHAT, **harmless})
    assert r.status_code == 200, r.text


def test_stop_token_ids_end_the_reply_at_that_token(client, shakespeare_tokenizer):
    """vLLM's stop_token_ids were accepted and ignored: the reply ran on past the token."""
    sampling = dict(prompt="ROMEO: But soft, what light", max_tokens=16, temperature=0)
    whole = client.completions.create(model="tiny", logprobs=0, **sampling).choices[0]
    tokens = whole.logprobs.tokens
    # a generated token that is one whole token when encoded alone and appears nowhere before
    k, stop_id = next((k, ids[0]) for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k] and t.isprintable() and "\ufffd" not in t
                      and len(ids := shakespeare_tokenizer.encode(t, add_bos=False)) == 1)
    cut = client.completions.create(model="tiny", extra_body={"stop_token_ids": [stop_id]}, **sampling)
    assert cut.choices[0].text == "".join(tokens[:k]) and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == k + 1  # the stop token is generated and counted, not shown
