"""Tools: the calculator evaluates arithmetic and refuses everything else; calls are checked and run;
the tool loop answers malformed calls, unknown tools and failing tools with messages, and stops at its
round bound — with scripted replies, and with a real model's replies through the engine."""

import json

import pytest
import torch

from llmkit.rag.calculator import CalculatorError, calculate
from llmkit.rag.tool_loop import MALFORMED_CALL, run_tool_loop
from llmkit.rag.tools import CALCULATOR, Tool, ToolError, resolve_tools, run_call


@pytest.mark.parametrize("expression, value", [
    ("327 * 48 + 5", "15701"), ("10 / 4", "2.5"), ("10 / 2", "5"), ("2 ** 10", "1024"), ("-(3 + 4) * 2", "-14"),
    ("17 // 5", "3"), ("17 % 5", "2"), ("1.5 * 4", "6"), ("+7 - -3", "10"), ("((2))", "2"), ("2 ** -1", "0.5"),
    ("1234567 * 7654321", str(1234567 * 7654321)),
])
def test_calculator_computes_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "function call, not arithmetic"),
    ("__import__('os').system('ls')", "function call"),
    ("os.path", "an attribute"),
    ("x + 1", "a name"),
    ("9**9**9", "exponent 387420489 is larger"),
    ("10 ** 2000", "more than 1000 digits"),
    ("(10 ** 900) * (10 ** 900)", "more than 1000 digits"),
    ("1e308 * 10", "too large"),
    ("2.0 ** 5000", "too large"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("2 ^ 8", "write \\*\\* for powers"),
    ("1,234 + 1", "no commas inside numbers"),
    ("'a' * 3", "not a number"),
    ("True + 1", "not a number"),
    ("[1][0]", "subscript"),
    ("1 < 2", "comparison"),
    ("", "empty"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 501, "at most 500"),
    ("-" * 200 + "1", "nests more than"),
])
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression, message):
    with pytest.raises(CalculatorError, match=message):
        calculate(expression)


def test_calls_are_checked_against_the_schema_and_never_raise():
    def explode(city: str):
        raise RuntimeError("the weather service is down")

    weather = Tool("weather", "today's weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                                  "required": ["city"]}, explode)
    tools = {t.name: t for t in resolve_tools(["calculator", weather])}
    assert run_call(tools, "calculator", {"expression": "6 * 7"}) == (True, "42")
    assert run_call(tools, "calculator", {"expression": "__import__('os')"})[1].startswith("error: calculator: ")
    assert "missing argument(s): expression" in run_call(tools, "calculator", {})[1]
    assert "unknown argument(s): expr" in run_call(tools, "calculator", {"expression": "1", "expr": "1"})[1]
    assert "must be string" in run_call(tools, "calculator", {"expression": 12})[1]
    assert run_call(tools, "weather", {"city": "Oslo"}) == (False, "error: weather: RuntimeError: the weather service is down")
    assert "there is no tool 'search'" in run_call(tools, "search", {})[1]
    with pytest.raises(ToolError, match="unknown tool 'abacus'"):
        resolve_tools(["abacus"])
    with pytest.raises(ToolError, match="unique"):
        resolve_tools(["calculator", CALCULATOR])
    definition = CALCULATOR.definition()
    assert definition["type"] == "function" and Tool.from_definition(definition, calculate).spec() == CALCULATOR.spec()


def scripted(replies: list[str], seen: list):
    """A generate function that replies from a script and records what it was shown."""
    queue = list(replies)

    def generate(rendered, template_tools):
        seen.append(rendered)
        return queue.pop(0)
    return generate


def test_loop_answers_broken_json_unknown_tools_and_runs_calls():
    seen = []
    replies = ['<tool_call>{"name": "calculator", "arguments": {"expression": "1+</tool_call>',
               'Let me check. <tool_call>{"name": "abacus", "arguments": {}}</tool_call>',
               '<tool_call>{"name": "calculator", "arguments": {"expression": "327 * 48"}}</tool_call>',
               "327 times 48 is 15696."]
    chat = run_tool_loop(scripted(replies, seen), [{"role": "user", "content": "What is 327 * 48?"}],
                         ["calculator"], template=None, max_tool_rounds=5)
    assert chat.finish == "answer" and chat.reply == "327 times 48 is 15696." and chat.rounds == 3
    assert chat.calls == 2 and chat.errors == 2
    tool_messages = [m for m in chat.messages if m["role"] == "tool"]
    assert tool_messages[0]["content"] == MALFORMED_CALL
    assert "there is no tool 'abacus'" in tool_messages[1]["content"] and tool_messages[2]["content"] == "15696"
    assert chat.messages[3]["content"] == "Let me check. " and chat.messages[3]["tool_calls"][0]["function"]["name"] == "abacus"
    # The model saw the tools (the fallback system turn) and, on its last turn, the result as a tool response.
    assert '"name": "calculator"' in seen[0][0]["content"] and seen[0][0]["role"] == "system"
    assert seen[-1][-1] == {"role": "user", "content": "<tool_response>15696</tool_response>"}
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "327 * 48"}}</tool_call>' in seen[-1][-2]["content"]


def test_loop_stops_at_the_round_bound():
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 1"}}</tool_call>'
    seen = []
    chat = run_tool_loop(scripted(["Thinking." + call] * 10, seen), [{"role": "user", "content": "Add."}],
                         ["calculator"], template=None, max_tool_rounds=3)
    assert chat.finish == "max_tool_rounds" and chat.rounds == 3 and chat.calls == 3 and len(seen) == 4
    assert chat.reply == "Thinking."
    assert run_tool_loop(scripted([call], []), [{"role": "user", "content": "Add."}], ["calculator"], None,
                         max_tool_rounds=0).finish == "max_tool_rounds"


@pytest.fixture(scope="module")
def tiny_llm(shakespeare_tokenizer):
    from llmkit.api import LLM
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size, max_seq_len=2048))
    return LLM(model.eval(), shakespeare_tokenizer)


def forced(llm, lark: str):
    from llmkit.infer.grammar import GrammarCompiler

    compiler = GrammarCompiler(llm.tokenizer, llm.model.config.vocab_size, llm.engine.stop_token_ids)
    return compiler.lark(lark)


def test_engine_replies_with_calls_every_round_stop_at_the_bound(tiny_llm, one_thread):
    from llmkit.serve.tools import forced_call_lark

    grammar = forced(tiny_llm, forced_call_lark([CALCULATOR.spec()], "required", '"<tool_call>"', '"</tool_call>"'))
    chat = tiny_llm.chat_with_tools([{"role": "user", "content": "What is 2 + 2?"}], ["calculator"],
                                    max_tool_rounds=2, grammar=grammar, max_new_tokens=24, temperature=0)
    assert chat.finish == "max_tool_rounds" and chat.rounds == 2
    assert [m["role"] for m in chat.messages[1:]] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert all(m["content"] for m in chat.messages if m["role"] == "tool")  # each call got an answer


def test_engine_reply_with_broken_json_is_answered_not_raised(tiny_llm, one_thread):
    broken = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+</tool_call>'
    grammar = forced(tiny_llm, f"start: {json.dumps(broken)}\n")
    reply = tiny_llm.chat([{"role": "user", "content": "Add."}], tools=["calculator"], max_tool_rounds=1,
                          grammar=grammar, max_new_tokens=64, temperature=0)
    assert reply == ""  # the bound: the second broken call is not run, and there is no text before it
    chat = tiny_llm.chat_with_tools([{"role": "user", "content": "Add."}], ["calculator"], max_tool_rounds=1,
                                    grammar=grammar, max_new_tokens=64, temperature=0)
    assert chat.messages[1]["content"] == broken and chat.messages[2]["content"] == MALFORMED_CALL
