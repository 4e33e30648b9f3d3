"""`llmkit serve --rag INDEX`: chat completions answer from retrieved passages and return the sources
(`"sources"` on the message, and in the final stream chunk's delta), through the official openai client
(`extra_body` carries the `rag` extension field)."""

import openai
import pytest
import torch

from llmkit.checkpoint import save_checkpoint
from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.rag.chunking import ChunkingConfig
from llmkit.rag.index import RagIndex
from serve_fixtures import running_server

PLANTED = "The zebra Quillon guards the lighthouse of Vortenmark every winter night."
QUESTION = [{"role": "user", "content": "Who guards the lighthouse of Vortenmark?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, shakespeare_tokenizer):
    out = tmp_path_factory.mktemp("serve-rag")
    (out / "docs").mkdir()
    filler = "".join(f"filler line {i}: the quality of mercy is not strained\n" for i in range(40))
    (out / "docs" / "planted.txt").write_text(filler + PLANTED + "\n" + filler)
    RagIndex.build([out / "docs"], ChunkingConfig(size=300, overlap=50)).save(out / "index")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size, max_seq_len=1024))
    save_checkpoint(out / "model", model.eval(), shakespeare_tokenizer)
    args = ["--model", out / "model", "--served-model-name", "tiny", "--rag", out / "index", "--k", 2,
            "--mode", "bm25"]
    with running_server(args, out / "server.log") as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), out


def test_reply_carries_the_retrieved_sources_with_offsets(served):
    client, out = served
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0)
    sources = reply.choices[0].message.model_extra["sources"]
    assert 1 <= len(sources) <= 2 and {s["n"] for s in sources} <= {1, 2}
    planted = next(s for s in sources if PLANTED in s["text"])
    text = (out / "docs" / "planted.txt").read_text()
    assert planted["file"] == "planted.txt" and text[planted["start"]:planted["end"]] == planted["text"]
    assert text[:planted["start"]].count("\n") + 1 == planted["line"]
    closed = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0,
                                            extra_body={"rag": False})
    assert "sources" not in (closed.choices[0].message.model_extra or {})
    assert reply.usage.prompt_tokens > closed.usage.prompt_tokens + 40  # the passages were in the prompt
    one = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4, temperature=0,
                                         extra_body={"rag": {"k": 1}})
    assert len(one.choices[0].message.model_extra["sources"]) == 1
    assert one.usage.prompt_tokens < reply.usage.prompt_tokens


def test_stream_sends_the_sources_in_its_final_chunk(served):
    client, _ = served
    whole = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6, temperature=0,
                                                 stream=True))
    with_sources = [c for c in chunks if c.choices and (c.choices[0].delta.model_extra or {}).get("sources")]
    assert len(with_sources) == 1 and with_sources[0].choices[0].finish_reason is not None
    assert with_sources[0].choices[0].delta.model_extra["sources"] == whole.choices[0].message.model_extra["sources"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


@pytest.mark.parametrize("option", [{"k": 0}, {"k": "two"}, {"depth": 3}, "yes"])
def test_a_bad_rag_field_is_a_400_naming_it(served, option):
    client, _ = served
    with pytest.raises(openai.BadRequestError, match="rag"):
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, extra_body={"rag": option})


def test_a_tool_round_trip_on_a_rag_server_answers_from_the_last_user_turn(served):
    """An OpenAI client's second request of a tool call ends in a `tool` message, not a user turn: retrieval
    answers the last user turn, and the call and its result stay after it."""
    client, _ = served
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    messages = QUESTION + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "nothing found"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, tools=[tool], max_tokens=4, temperature=0)
    assert any(PLANTED in s["text"] for s in reply.choices[0].message.model_extra["sources"])
    closed = client.chat.completions.create(model="tiny", messages=messages, tools=[tool], max_tokens=4,
                                            temperature=0, extra_body={"rag": False})
    assert reply.usage.prompt_tokens > closed.usage.prompt_tokens + 40  # the passages, and the call and result too


def test_sources_say_when_their_file_changed_since_indexing(served):
    """As `rag search` and `rag ask` warn: a cited file edited after indexing may put the passage elsewhere.
    (Last in the module: it edits the indexed file, then puts it back.)"""
    client, out = served
    planted = out / "docs" / "planted.txt"
    before = planted.read_text()
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, temperature=0)
    assert all("warning" not in s for s in reply.choices[0].message.model_extra["sources"])
    planted.write_text("A new first line moves every other one.\n" + before)
    try:
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, temperature=0)
        chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, temperature=0,
                                                     stream=True))
    finally:
        planted.write_text(before)
    sources = reply.choices[0].message.model_extra["sources"]
    assert all("planted.txt: changed since it was indexed" in s["warning"] for s in sources
               if s["file"] == "planted.txt") and any(s["file"] == "planted.txt" for s in sources)
    [last] = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert last.choices[0].delta.model_extra["sources"] == sources
