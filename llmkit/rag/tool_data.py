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

Questions about the plays (the built-in assistant task's training questions) are solved with the `search`
tool instead: the model searches for the quoted line (or, for "which play", the character's name), reads
the passages the index returns and answers. Only questions whose answer the passages contain are kept, so
the data teaches reading what was found, never answering past it.
"""

from __future__ import annotations

import random
import re
from typing import Callable

from llmkit.rag.calculator import calculate
from llmkit.rag.tools import CALCULATOR, Tool

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


QUOTED = re.compile(r'"([^"]+)"')


def search_query(question) -> str | None:
    """What to search for to answer a built-in task question (llmkit.data.assistant_task.Question): the quoted
    line ("who says", "continue": its beginning), the character's name ("which play"); None for "passage"
    questions, which carry their passage."""
    if question.kind == "play":
        return question.subject
    found = QUOTED.search(question.prompt) if question.kind in ("speaker", "continue") else None
    return found.group(1) if found else None


def _plain(text: str) -> str:
    """Lower-case words only, file names' underscores as spaces: `comedy_of_errors_gut.txt` reads "comedy of
    errors gut txt", so a play's title can be found in a passage's citation."""
    return " ".join(re.sub(r"[^\w\s']|_", " ", text.lower()).split())


def search_example(question, search: Tool, index: int) -> dict | None:
    """A conversation that answers `question` by calling `search` (llmkit.rag.chat.search_tool), or None when
    the question needs no search or the passages found do not contain the answer."""
    query = search_query(question)
    if query is None:
        return None
    passages = search.function(query=query)
    answer = _plain(question.answer)
    if answer.startswith("the "):
        answer = answer[4:]  # "The Comedy of Errors" is comedy_of_errors_gut.txt
    if f" {answer} " not in f" {_plain(passages)} ":
        return None
    call_id = f"call_s{index}"
    return {"messages": [
        {"role": "user", "content": question.prompt},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": search.name, "arguments": {"query": query}}}]},
        {"role": "tool", "tool_call_id": call_id, "name": search.name, "content": passages},
        {"role": "assistant", "content": question.answer}],
        "tools": [search.definition()]}


def search_examples(questions: list, search: Tool, n: int,
                    progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], int]:
    """Up to n search conversations from `questions` in order; (examples, questions skipped: no search
    needed or the answer not in the passages)."""
    examples, skipped = [], 0
    for i, question in enumerate(questions):
        if len(examples) == n:
            break
        example = search_example(question, search, i)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
        if progress:
            progress(len(examples), n)
    return examples, skipped


def builtin_search_examples(search: Tool, n: int,
                            progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], int]:
    """search_examples over the built-in assistant task's training questions (as `builtin_task` makes them:
    seed 0, 2 x 1,000 per kind, from the built-in corpus's training plays). Its held-out questions are split
    off by character and by block of speeches, so none of them is asked here."""
    from llmkit.data.assistant_task import make_questions, read_plays
    from llmkit.data.corpus import cache_root, fetch_shakespeare

    plays = read_plays(fetch_shakespeare(cache_root() / "data" / "shakespeare") / "train")
    questions, _ = make_questions(plays, 0, 2000, 100)
    return search_examples(questions, search, n, progress)
