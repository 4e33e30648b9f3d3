"""Tools, retrieval and forced calls, audited as a user meets them (no server here: the server-level checks
are in test_serve_structured.py and test_serve_rag.py, beside their fixtures):

- a forced call's arguments follow the function's own schema, its references ($defs, a recursive "#")
  resolved inside that schema, not against the call object around it;
- a reply of thousands of brackets is text, not a crash of the call parser;
- the tool loop checks arguments against any JSON schema a tool may carry (boolean property schemas);
- retrieval in a tool round-trip answers the last user turn and keeps the calls and results after it;
- `chat --rag` / `serve --rag` say when a cited file changed since it was indexed, as `rag ask` does."""

import io
import json

import pytest
import torch

from llmkit.rag.chat import Retriever, cited_sources, retrieval_messages, source_lines
from llmkit.rag.index import RagIndex
from llmkit.rag.tools import Tool, run_call
from llmkit.serve.tools import forced_call_lark
from llmkit.tool_calls import ToolCallStream, parse_tool_calls

from test_rag_chat import PLANTED, index  # noqa: F401 (the fixture: a small index with one planted fact)
CITY = {"$defs": {"city": {"enum": ["Paris", "Oslo"]}}, "type": "object",
        "properties": {"city": {"$ref": "#/$defs/city"}}, "required": ["city"], "additionalProperties": False}
TREE = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3},
                                         "child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["name", "child"], "additionalProperties": False}


@pytest.fixture(scope="module")
def compiler(shakespeare_tokenizer):
    from llmkit.infer.grammar import GrammarCompiler

    return GrammarCompiler(shakespeare_tokenizer, shakespeare_tokenizer.vocab_size, [0])


def accepts(grammar, tokenizer, text: str) -> bool:
    matcher = grammar.constraint().matcher
    ids = tokenizer.encode(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def test_forced_call_arguments_resolve_refs_inside_their_own_schema(compiler, shakespeare_tokenizer):
    tools = [{"name": "weather", "parameters": CITY}, {"name": "tree", "parameters": TREE}]
    grammar = compiler.lark(forced_call_lark(tools, "required", '"<tool_call>"', '"</tool_call>"'))

    def call(name, arguments):
        return f'<tool_call>{{"name":"{name}","arguments":{json.dumps(arguments, separators=(",", ":"))}}}</tool_call>'

    assert accepts(grammar, shakespeare_tokenizer, call("weather", {"city": "Oslo"}))  # "#/$defs/city" found
    assert not accepts(grammar, shakespeare_tokenizer, call("weather", {"city": "Rome"}))
    assert accepts(grammar, shakespeare_tokenizer, call("tree", {"name": "a", "child": {"name": "b", "child": None}}))
    # "#" is the arguments' schema: a child is a tree, not a whole call nested inside the arguments
    assert not accepts(grammar, shakespeare_tokenizer, call("tree", {"name": "a", "child": {"name": "tree",
                                                                                           "arguments": {}}}))
    assert not accepts(grammar, shakespeare_tokenizer, call("tree", {"city": "Oslo"}))  # each name its own schema


@pytest.mark.parametrize("text", ["[" * 50_000, "<tool_call>" + "[" * 50_000,
                                  '<tool_call>{"name": "f", "arguments": "' + "[" * 50_000 + '"}</tool_call>'],
                         ids=["bare", "in-a-block", "in-string-arguments"])
def test_deeply_nested_reply_is_content_not_a_crash(text):
    assert parse_tool_calls(text, {"f"}) == (text, [])
    stream = ToolCallStream({"f"})
    shown = stream.feed(text)
    rest, calls = stream.finish()
    assert shown + rest == text and calls == []


def test_tool_loop_checks_arguments_under_any_json_schema():
    tool = Tool("t", "", {"type": "object", "properties": {"any": True, "n": {"type": ["integer", 5]}},
                          "required": "any"}, lambda **kw: "ran")
    assert run_call({"t": tool}, "t", {"any": [1], "n": 3}) == (True, "ran")
    assert run_call({"t": tool}, "t", {"any": 1, "n": "three"}) == (False, "error: t: argument 'n' must be integer, "
                                                                           'not "three"')




def test_retrieval_in_a_tool_round_trip_answers_the_last_user_turn(index):
    hits = Retriever(RagIndex.load(index), k=1, mode="bm25").search("lighthouse Vortenmark")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
    messages = [{"role": "user", "content": "Who guards the lighthouse?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    shown = retrieval_messages(messages, hits)
    assert [m["role"] for m in shown] == ["system", "user", "assistant", "tool"]
    assert PLANTED in shown[1]["content"] and shown[1]["content"].endswith("Question: Who guards the lighthouse?")
    assert shown[2:] == messages[1:]


def test_sources_warn_when_a_cited_file_changed_since_indexing(index, shakespeare_tokenizer, one_thread):
    from llmkit.api import LLM
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer
    from llmkit.serve.terminal_chat import run_chat

    retriever = Retriever(RagIndex.load(index), k=2, mode="bm25")
    hits = retriever.search("lighthouse Vortenmark")
    assert all("warning" not in s for s in cited_sources("[1]", hits)) and not any(
        line.startswith("warning") for line in source_lines("[1]", hits))
    planted = index.parent / "docs" / "planted.txt"
    planted.write_text("A new first line.\n" + planted.read_text())  # every line number moved by one
    hits = retriever.search("lighthouse Vortenmark")
    [source] = cited_sources("Quillon [1].", hits)
    assert "planted.txt: changed since it was indexed" in source["warning"]
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size, max_seq_len=1024))

    class Lines(io.StringIO):
        def isatty(self):
            return False

    out = io.StringIO()
    run_chat(LLM(model.eval(), shakespeare_tokenizer), sampling={"max_new_tokens": 2, "temperature": 0.0},
             stdin=Lines("Who guards the lighthouse of Vortenmark?\n"), stdout=out, retriever=retriever)
    assert "warning: " in out.getvalue() and "planted.txt: changed since it was indexed" in out.getvalue()
