"""Retrieval and tools in a conversation: `llmkit chat --rag` retrieves for each user turn, shows the model
the numbered passages, keeps only what the user typed in the history, and prints the cited sources;
`llmkit chat --tools` runs the tool loop and prints each call and its result."""

import io
import json

import pytest
import torch

from conftest import cli_in_process
from llmkit.rag.chat import Retriever, cited_sources, retrieval_messages, search_tool
from llmkit.rag.chunking import ChunkingConfig
from llmkit.rag.index import RagIndex
from llmkit.serve.terminal_chat import run_chat

PLANTED = "The zebra Quillon guards the lighthouse of Vortenmark every winter night."


class Lines(io.StringIO):
    def isatty(self):
        return False


@pytest.fixture(scope="module")
def llm(shakespeare_tokenizer):
    from llmkit.api import LLM
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size, max_seq_len=1024))
    return LLM(model.eval(), shakespeare_tokenizer)


@pytest.fixture
def index(tmp_path):
    (tmp_path / "docs").mkdir()
    filler = "".join(f"filler line {i}: the quality of mercy is not strained\n" for i in range(40))
    (tmp_path / "docs" / "planted.txt").write_text(filler + PLANTED + "\n" + filler)
    (tmp_path / "docs" / "other.txt").write_text(filler)
    built = RagIndex.build([tmp_path / "docs"], ChunkingConfig(size=300, overlap=50))
    built.save(tmp_path / "index")
    return tmp_path / "index"


def test_rag_chat_retrieves_each_turn_and_prints_sources(llm, index, one_thread):
    seen = []
    original = llm.chat_stream

    def recording(messages, **sampling):
        seen.append(messages)
        return original(messages, **sampling)

    llm.chat_stream = recording
    try:
        out = io.StringIO()
        history = run_chat(llm, system="Be brief.", sampling={"max_new_tokens": 4, "temperature": 0.0},
                           stdin=Lines("Who guards the lighthouse of Vortenmark?\nAnd in winter?\n"), stdout=out,
                           retriever=Retriever(RagIndex.load(index), k=2, mode="bm25"))
    finally:
        del llm.chat_stream
    first = seen[0]
    assert first[0]["role"] == "system" and first[0]["content"].startswith("Be brief.\n\nAnswer the question")
    assert first[-1]["role"] == "user" and PLANTED in first[-1]["content"]
    assert "Question: Who guards the lighthouse of Vortenmark?" in first[-1]["content"]
    # the history keeps what the user typed; the second turn retrieves afresh and shows no old passages
    assert [m["content"] for m in history if m["role"] == "user"] == ["Who guards the lighthouse of Vortenmark?",
                                                                      "And in winter?"]
    assert seen[1][1]["content"] == "Who guards the lighthouse of Vortenmark?"
    assert seen[1][-1]["content"].count("Passages:") == 1
    text = out.getvalue()
    assert text.count("Sources:") == 2 and "planted.txt, line 41" in text


def test_sources_carry_file_line_and_offsets(index):
    hits = RagIndex.load(index).search("lighthouse Vortenmark", 2, "bm25")
    sources = cited_sources("It is Quillon [1].", hits)
    assert len(sources) == 1 and sources[0]["n"] == 1 and sources[0]["file"] == "planted.txt"
    text = (index.parent / "docs" / "planted.txt").read_text()
    assert text[sources[0]["start"]:sources[0]["end"]] == sources[0]["text"] and PLANTED in sources[0]["text"]
    assert len(cited_sources("No citation.", hits)) == 2  # none cited: every passage shown is a source
    with pytest.raises(Exception, match="user turn"):
        retrieval_messages([{"role": "assistant", "content": "hi"}], hits)


def test_search_tool_returns_numbered_cited_passages(index):
    tool = search_tool(Retriever(RagIndex.load(index), k=1, mode="bm25"))
    assert tool.function(query="lighthouse Vortenmark").startswith("[1] (planted.txt, line 41)")


def test_tool_chat_prints_calls_and_results(llm, one_thread):
    from llmkit.infer.grammar import GrammarCompiler

    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "327 * 48"}}</tool_call>'
    compiler = GrammarCompiler(llm.tokenizer, llm.model.config.vocab_size, llm.engine.stop_token_ids)
    grammar = compiler.lark(f"start: {json.dumps(call)}\n")
    out = io.StringIO()
    # two turns: the second is rendered (and fitted to the context) with the first turn's call and result in it
    history = run_chat(llm, sampling={"max_new_tokens": 64, "temperature": 0.0, "grammar": grammar},
                       stdin=Lines("What is 327 times 48?\nAnd that again?\n"), stdout=out, tools=["calculator"],
                       max_tool_rounds=1)
    text = out.getvalue()
    assert '[calls calculator({"expression": "327 * 48"})]' in text and "[calculator -> 15696]" in text
    assert text.count("(stopped after 1 rounds of tool calls)") == 2
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"] * 2
    assert history[3]["content"] == history[-1]["content"] == ""  # the bound's reply was only a call: not kept


def test_chat_cli_refuses_search_without_an_index(tmp_path):
    result = cli_in_process("chat", "--model", tmp_path / "missing", "--tools", "search")
    assert result.returncode == 2


def test_server_without_an_index_refuses_a_rag_request():
    from llmkit.serve.protocol import APIError
    from llmkit.serve.retrieval import requested_k

    assert requested_k({}, None) is None and requested_k({"rag": False}, None) is None
    with pytest.raises(APIError, match="no retrieval index"):
        requested_k({"rag": {"k": 2}}, None)
