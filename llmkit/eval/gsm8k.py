"""GSM8K (Cobbe et al. 2021): prompts in three styles, and grading of what the model wrote.

A question is asked as `Question: ...\\nAnswer:` (`Q: ...\\nA:` in the chain-of-thought style), after
`shots` solved exemplars from the train split joined by blank lines. The exemplars are one seeded sample
of the train split shared by every question (lm-evaluation-harness's gsm8k_cot also uses one fixed set;
a shared prefix is computed once by the engine's prefix cache). An exemplar's answer is written in the
task's style (llmkit/presets/eval/generative.yaml): the solution as published (`full`), the final answer
only (`direct`), or the reasoning as one paragraph ending `The answer is N.` (`cot`). Calculator
annotations `<<48/2=24>>` are removed: they are the data set's tool calls, not text a model should imitate.

With --chat the exemplars become earlier turns of the conversation (user: the question, assistant: its
answer) and the question the last user turn, as lm-evaluation-harness's multi-turn few-shot renders them.
"""

from __future__ import annotations

import random
from pathlib import Path

from llmkit.errors import DataError
from llmkit.eval.extract import (LM_EVAL_FLEXIBLE, LM_EVAL_STRICT, extract_flexible, gsm8k_gold, lm_eval_exact_match,
                                 lm_eval_extract, strip_calculator)
from llmkit.eval.jsonl import json_lines, read_utf8

STYLES = ("full", "direct", "cot")
METRICS = ("exact_match_strict", "exact_match_flexible", "exact_match_numeric")


def read_gsm8k(path: Path) -> list[dict]:
    """{"question", "answer"} records; the answer must end with `#### N`."""
    if not path.is_file():
        raise DataError(f"{path}: no such GSM8K file")
    records = []
    for number, record in json_lines(path, read_utf8(path)):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "answer")):
            raise DataError(f'{path}:{number}: expected {{"question": string, "answer": string}}')
        try:
            gsm8k_gold(record["answer"])
        except ValueError:
            raise DataError(f"{path}:{number}: the answer does not end with '#### N' (the GSM8K format)") from None
        records.append(record)
    if not records:
        raise DataError(f"{path}: no questions (the file is empty)")
    return records


def question_text(question: str, style: str) -> str:
    """The question as asked, up to where the answer starts (no trailing space)."""
    return f"Q: {question.strip()}\nA:" if style == "cot" else f"Question: {question.strip()}\nAnswer:"


def answer_text(answer: str, style: str) -> str:
    """An exemplar's answer in the style (without the space that follows the question)."""
    solution = strip_calculator(answer).strip()
    reasoning, _, _ = solution.rpartition("####")
    gold = gsm8k_gold(answer)
    if style == "full":
        return solution
    if style == "direct":
        return f"#### {gold}"
    lines = [line.strip() for line in reasoning.strip().splitlines() if line.strip()]
    return " ".join(lines + [f"The answer is {gold}."])


def exemplars(train: list[dict], shots: int, seed: int) -> list[dict]:
    """The shared few-shot exemplars: `shots` records of the train split, a seeded sample."""
    if shots <= 0:
        return []
    return random.Random(seed).sample(train, min(shots, len(train)))


def build_prompt(question: str, shots: list[dict], style: str, example_delimiter: str, chat: bool):
    """The prompt of one question: a string, or with chat a list of messages."""
    if chat:
        messages = []
        for shot in shots:
            messages += [{"role": "user", "content": question_text(shot["question"], style)},
                         {"role": "assistant", "content": answer_text(shot["answer"], style)}]
        return messages + [{"role": "user", "content": question_text(question, style)}]
    solved = [question_text(s["question"], style) + " " + answer_text(s["answer"], style) for s in shots]
    return "".join(s + example_delimiter for s in solved) + question_text(question, style)


def grade(generated: str, answer: str, style: str) -> tuple[dict, dict]:
    """({"strict", "flexible", "numeric"} extractions, {metric: right?}) of one generation (extract.py)."""
    marker = "the answer is" if style == "cot" else "####"
    extracted = {"strict": lm_eval_extract(generated, LM_EVAL_STRICT[marker]),
                 "flexible": lm_eval_extract(generated, LM_EVAL_FLEXIBLE, last=True),
                 "numeric": extract_flexible(generated)}
    # lm-eval's reference: gsm8k's is the answer field itself (its ignore rules cut everything up to
    # "#### "), gsm8k-cot's the text after "####", stripped
    reference = answer.split("####")[-1].strip() if style == "cot" else answer
    return extracted, {"exact_match_strict": lm_eval_exact_match(extracted["strict"], reference),
                       "exact_match_flexible": lm_eval_exact_match(extracted["flexible"], reference),
                       "exact_match_numeric": extracted["numeric"] == gsm8k_gold(answer)}
