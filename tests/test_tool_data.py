"""Tool-use SFT data: generated arithmetic problems are right, and the loss covers the assistant's calls
and answers but not the tool's output."""

import json

from llmkit.rag.calculator import calculate
from llmkit.rag.tool_data import tool_examples
from llmkit.train.chat_data import encode_sft, parse_record


def test_problems_chain_two_to_four_operations_with_right_answers():
    examples = tool_examples(200, seed=3)
    assert examples == tool_examples(200, seed=3) and examples != tool_examples(200, seed=4)
    for example in examples:
        user, call, tool, answer = example["messages"]
        expression = call["tool_calls"][0]["function"]["arguments"]["expression"]
        assert 2 <= sum(expression.count(op) for op in "+-*/") <= 4
        assert tool["content"] == calculate(expression) and answer["content"] == f"The answer is {tool['content']}."
        assert all(100 <= int(n) <= 9999 for n in expression.replace("(", " ").replace(")", " ").split() if n.isdigit())


def test_loss_covers_calls_and_answers_not_tool_output(shakespeare_tokenizer):
    example = json.loads(json.dumps(tool_examples(1, seed=0)[0]))  # as read back from a JSONL file
    encoded = encode_sft(shakespeare_tokenizer, parse_record("data.jsonl:1", example))
    learned = shakespeare_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if m])
    context = shakespeare_tokenizer.decode([t for t, m in zip(encoded.ids, encoded.mask) if not m])
    expression = example["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"]
    result = example["messages"][2]["content"]
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": "' + expression + '"}}</tool_call>' in learned
    assert f"The answer is {result}." in learned
    assert "<tool_response>" not in learned and f"<tool_response>{result}</tool_response>" in context
    assert '"name": "calculator"' in context  # the tool's description is in the (unlearned) system turn
    assert "<tools>" not in learned and example["messages"][0]["content"] in context
