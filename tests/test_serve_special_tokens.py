"""Special tokens in generated text: left out by default, as vLLM's `skip_special_tokens: true` leaves
them, shown with `false`, on /v1/chat/completions and /v1/completions, streamed or not; the tokens of the
log-probabilities still concatenate to the text, and tool-call tags that a tokenizer has as special tokens
are still read.

The server tests run a real engine on a tiny model whose weights are set to a bigram table, so that greedy
decoding writes a known reply with a special token in the middle: "H", <|user|>, "i", then <|end|>."""

import json
import random

import pytest
from starlette.testclient import TestClient
from tokenizers import AddedToken

from llmkit.infer.sampling import TokenLogprob
from llmkit.serve.metrics import ServerMetrics
from llmkit.serve.openai_api import OpenAIService
from llmkit.serve.responses import ChoiceState, completion_logprobs
from llmkit.serve.server import build_app
from llmkit.serve.text_stream import TextStream
from llmkit.serve.worker import EngineWorker, Update
from llmkit.tokenizer import END, Tokenizer


def script(tokenizer) -> list[int]:
    """The reply the bigram model writes after any prompt: H <|user|> i <|end|>."""
    [h], [i] = tokenizer.encode("H"), tokenizer.encode("i")
    return [h, tokenizer.backend.token_to_id("<|user|>"), i, tokenizer.backend.token_to_id(END)]


@pytest.fixture(scope="module")
def bigram(tmp_path_factory, shakespeare_tokenizer):
    """The checkpoint of the bigram model (module docstring)."""
    import torch

    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    tok = shakespeare_tokenizer
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, tie_embeddings=False)).eval()
    chain = script(tok)  # every other token -> chain[0] -> chain[1] -> chain[2] -> chain[3]
    with torch.no_grad():
        for block in model.blocks:  # the blocks add nothing: the last position's state is its token's embedding
            block.attn.out.weight.zero_()
            block.mlp.down.weight.zero_()
        model.tok_emb.weight.zero_()
        model.tok_emb.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[chain[0], 0] = 10.0
        for k, (token, following) in enumerate(zip(chain, chain[1:]), start=1):
            model.tok_emb.weight[token] = 0.0
            model.tok_emb.weight[token, k] = 1.0
            model.lm_head.weight[following, k] = 10.0
    return save_checkpoint(tmp_path_factory.mktemp("bigram") / "model", model, tok)


@pytest.fixture(scope="module")
def client(bigram):
    import llmkit

    metrics = ServerMetrics()
    worker = EngineWorker(lambda: llmkit.load(bigram, device="cpu"), metrics, max_batch_size=4, max_waiting=8)
    worker.start()
    try:
        assert worker.ready.wait(120) and worker.load_error is None
        with TestClient(build_app(OpenAIService(worker, "m"), metrics)) as test_client:
            yield test_client
    finally:
        worker.stop()


def ask(client, path: str, **fields) -> dict:
    """One request, streamed or not, as the non-streamed body's text and logprobs (chunks joined)."""
    body = {"max_tokens": 8, "temperature": 0, **fields}
    body |= {"messages": [{"role": "user", "content": "Who's there?"}]} if "chat" in path else {"prompt": "Who"}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    if not fields.get("stream"):
        choice = r.json()["choices"][0]
        return {"text": choice["message"]["content"] if "chat" in path else choice["text"],
                "logprobs": choice["logprobs"], "finish_reason": choice["finish_reason"]}
    text, content, tokens, tops, reason = "", [], [], [], None
    for line in r.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:])["choices"]:
            piece = choice["delta"].get("content") if "chat" in path else choice["text"]
            text += piece or ""
            reason = choice["finish_reason"] or reason
            if choice["logprobs"] and "chat" in path:
                content += choice["logprobs"]["content"]
            elif choice["logprobs"]:
                tokens += choice["logprobs"]["tokens"]
                tops += choice["logprobs"]["top_logprobs"]
    logprobs = {"content": content} if "chat" in path else {"tokens": tokens, "top_logprobs": tops}
    return {"text": text, "logprobs": logprobs, "finish_reason": reason}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_special_tokens_are_left_out_unless_asked_for(client, path, stream):
    chat = "chat" in path
    extra = {"logprobs": True, "top_logprobs": 2} if chat else {"logprobs": 2}
    default, skipped, shown = (ask(client, path, stream=stream, **extra, **option) for option in
                               ({}, {"skip_special_tokens": True}, {"skip_special_tokens": False}))
    assert default == skipped
    assert (default["text"], default["finish_reason"]) == ("Hi", "stop")
    assert (shown["text"], shown["finish_reason"]) == ("H<|user|>i", "stop")
    for reply in (default, shown):
        if chat:
            content = reply["logprobs"]["content"]
            assert "".join(t["token"] for t in content) == reply["text"]
            assert sum((t["bytes"] for t in content), []) == list(reply["text"].encode())
            for t in content:  # greedy: the chosen token is the likeliest, listed as it is chosen
                assert {k: t["top_logprobs"][0][k] for k in ("token", "bytes")} == {k: t[k] for k in ("token", "bytes")}
        else:
            tokens, tops = reply["logprobs"]["tokens"], reply["logprobs"]["top_logprobs"]
            assert "".join(tokens) == reply["text"] and len(tokens) == 4  # H, <|user|>, i and the stop token
            for token, top in zip(tokens, tops):  # lm-evaluation-harness's is_greedy reads it so
                assert len(top) == 2 and max(top, key=top.get) == token
    if chat:
        assert [t["token"] for t in default["logprobs"]["content"]] == ["H", "", "i"]


def test_the_fields_are_checked_and_spaces_between_special_tokens_changes_nothing(client):
    for path in ("/v1/chat/completions", "/v1/completions"):
        for value in (True, False):
            assert ask(client, path, spaces_between_special_tokens=value, skip_special_tokens=False)["text"] == \
                "H<|user|>i"
        for name in ("skip_special_tokens", "spaces_between_special_tokens"):
            body = {"prompt": "Who", "messages": [{"role": "user", "content": "hi"}], name: "no"}
            r = client.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == name
            assert r.json()["error"]["message"] == f'{name}: must be true or false, not "no"'


def test_the_text_is_the_whole_reply_decoded_without_its_special_tokens(shakespeare_tokenizer):
    """Token by token, with special tokens anywhere (inside a character's bytes too), the text equals
    `tokenizers`' own decode(skip_special_tokens=True) of all the ids, and each token adds its part."""
    tok = shakespeare_tokenizer
    skip = tok.special_ids(keep_tool_tags=False)
    assert {tok.backend.id_to_token(i) for i in skip} >= {"<|user|>", "<|bos|>", "<|pad|>", END}
    words = tok.encode("héllo wörld ✓ 日本語 To be, or not")
    rng = random.Random(0)
    for _ in range(200):
        ids = list(words)
        for _ in range(rng.randrange(1, 5)):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(sorted(skip)))
        stream = TextStream(tok, skip_ids=skip)
        shown = "".join(stream.add([t]) for t in ids) + stream.finish()
        assert shown == stream.text == tok.decode(ids, skip_special_tokens=True)
        assert "".join(p.text for p in stream.pieces) == shown and len(stream.pieces) == len(ids)
        assert all(p.text == "" for p in stream.pieces if p.token_id in skip)


def test_a_special_token_after_half_a_character_gives_the_character_to_the_token_that_held_it(shakespeare_tokenizer):
    tok = shakespeare_tokenizer
    half = tok.encode("日")[:-1]  # the character's first bytes, never completed
    user = tok.backend.token_to_id("<|user|>")
    choice = ChoiceState(0, tok, [], [], skip_special_tokens=True)
    choice.feed(Update(0, half + [user], [TokenLogprob(t, -0.5) for t in half + [user]], finish_reason="length"))
    pieces = choice.new_pieces()
    assert choice.text == tok.decode(half) and "".join(p.text for p, _ in pieces) == choice.text
    assert pieces[-1][0].text == "" and pieces[-2][0].text == choice.text


def test_tool_call_tags_that_are_special_tokens_are_still_read(shakespeare_tokenizer):
    """A Hermes-style tokenizer may have <tool_call> and </tool_call> as special tokens: skipping them would
    turn every call into plain content. Other special tokens are still left out."""
    backend = type(shakespeare_tokenizer.backend).from_str(shakespeare_tokenizer.backend.to_str())
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    tok = Tokenizer(backend, bos_token="<|bos|>", eos_token="<|eos|>", extra_stop_tokens=[END])
    reply = '<|user|>Sure.<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    ids = tok.encode(reply)
    assert backend.token_to_id("<tool_call>") in ids  # one special token, as the template's markup is
    for tools, skip, text in ((None, True, 'Sure.{"name": "add", "arguments": {"a": 1}}'),
                              ({"add"}, True, "Sure."), ({"add"}, False, "<|user|>Sure.")):
        choice = ChoiceState(0, tok, tok.stop_token_ids, [], tools, skip_special_tokens=skip)
        choice.feed(Update(0, ids, None, finish_reason="stop"))
        assert choice.content == text
        assert [c["function"] for c in choice.tool_calls] == ([{"name": "add", "arguments": '{"a": 1}'}] if tools else [])


def test_completions_list_the_chosen_token_among_its_alternatives_once_under_its_text(shakespeare_tokenizer):
    """Half of a character adds "" and decodes alone as U+FFFD: the alternatives named it by the latter and
    then added "" too, so the token was listed twice and the likeliest key was not the token."""
    tok = shakespeare_tokenizer
    [first, *rest] = tok.encode("é")
    assert rest  # a rare character: its two bytes are two tokens
    other = tok.encode("e")[0]
    choice = ChoiceState(0, tok, [], [])
    lps = [TokenLogprob(first, -0.1, [(first, -0.1), (other, -3.0)])] + [TokenLogprob(t, -0.2) for t in rest]
    choice.feed(Update(0, [first, *rest], lps, finish_reason="length"))
    pieces = choice.new_pieces(stop_token=True)
    body = completion_logprobs(tok, [p.text for p, _ in pieces], [lp for _, lp in pieces])
    assert body["tokens"][0] == "" and body["top_logprobs"][0] == {"": -0.1, "e": -3.0}


def test_the_python_api_leaves_special_tokens_out_as_the_server_does(bigram):
    """`llm.generate` / `llm.stream` showed "H<|user|>i" where the server's default reply is "Hi"."""
    import llmkit

    llm = llmkit.load(bigram, device="cpu")
    assert llm.generate("Who", max_new_tokens=8, temperature=0) == "Hi"
    assert "".join(llm.stream("Who", max_new_tokens=8, temperature=0)) == "Hi"
