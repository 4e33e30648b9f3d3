"""Tool-use training data: arithmetic word problems whose solutions call the calculator, in TRL's
conversational format with tool calls —

    {"messages": [{"role": "user", "content": PROBLEM},
                  {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function":
                      {"name": "calculator", "arguments": {"expression": "((4127 + 385) - 918) * 12"}}}]},
                  {"role": "tool", "name": "calculator", "content": "43128"},
                  {"role": "assistant", "content": "The answer is 43128."}],
     "tools": [CALCULATOR's OpenAI definition]}

Each problem chains two to four operations (+, -, x, and exact division) on three- and four-digit numbers,
the quantities that tokenization splits unpredictably ("327" may be one token, "3271" two), so that
the model learns to hand the arithmetic to the tool instead of guessing it. `llmkit sft` trains on it
with the loss on the assistant's call and answer, not on the tool's output (llmkit/train/chat_data.py).
"""

from __future__ import annotations

import random

from llmkit.rag.calculator import calculate
from llmkit.rag.tools import CALCULATOR

SUBJECTS = [("A warehouse", "boxes"), ("A library", "books"), ("An orchard", "apples"), ("A bakery", "loaves"),
            ("A stadium", "seats"), ("A farm", "eggs"), ("A printer", "pages"), ("A shipyard", "bolts")]
STEPS = {
    "+": ["Then {n} more arrive.", "It receives another {n}.", "{n} are added."],
    "-": ["Then {n} are sold.", "{n} are taken away.", "It gives away {n}."],
    "*": ["Then the whole amount is multiplied by {n}.", "Every one of them is replaced by {n}."],
    "/": ["Then everything is shared equally among {n} groups; consider one group."],
}


def number(rng: random.Random) -> int:
    return rng.randint(100, 999) if rng.random() < 0.5 else rng.randint(1000, 9999)


def arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """(problem text, the calculator expression, the answer) with 2-4 operations applied in order."""
    subject, unit = rng.choice(SUBJECTS)
    value = number(rng)
    expression, sentences = str(value), [f"{subject} has {value} {unit}."]
    for _ in range(rng.randint(2, 4)):
        op = rng.choice("+-*/")
        if op == "/":
            divisors = [d for d in range(100, 1000) if value % d == 0] if value > 0 else []
            if not divisors:
                op = "+"
            else:
                n = rng.choice(divisors)
        if op == "-" and value < 100:
            op = "+"
        if op in "+-*":
            n = number(rng) if op != "-" else rng.randint(100, min(9999, value))
            if op == "*":
                n = rng.randint(100, 999)
        expression = f"({expression} {op} {n})"
        value = {"+": value + n, "-": value - n, "*": value * n, "/": value // max(n, 1)}[op]
        sentences.append(rng.choice(STEPS[op]).format(n=n))
    sentences.append(f"How many {unit} are there at the end?")
    expression = expression[1:-1]  # the outermost parentheses say nothing
    assert calculate(expression) == str(value), expression
    return " ".join(sentences), expression, value


def tool_example(rng: random.Random, index: int) -> dict:
    problem, expression, answer = arithmetic_problem(rng)
    call_id = f"call_{index}"
    return {"messages": [
        {"role": "user", "content": problem},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "calculator", "arguments": {"expression": expression}}}]},
        {"role": "tool", "tool_call_id": call_id, "name": "calculator", "content": str(answer)},
        {"role": "assistant", "content": f"The answer is {answer}."}],
        "tools": [CALCULATOR.definition()]}


def tool_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [tool_example(rng, i) for i in range(n)]
