"""GSM8K answer extraction and prompts, HumanEval programs and pass@k, on hand-made examples."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TEST_DATA
from llmkit.errors import DataError
from llmkit.eval import gsm8k, humaneval
from llmkit.eval.extract import (cut_at_stops, extract_code, extract_flexible, extract_strict, gsm8k_gold,
                                 normalize_number, strip_calculator)

GSM8K = TEST_DATA / "eval" / "gsm8k"


@pytest.mark.parametrize("written,canonical", [
    ("72", "72"), ("1,200", "1200"), ("$1,200.00", "1200"), ("18.", "18"), ("18.0", "18"), ("0.50", "0.5"),
    ("-3", "-3"), ("-0.0", "0"), ("007", "7"), (".5", "0.5"), ("$ 5", "5"), ("+4", "4"),
    ("abc", None), ("", None), ("1.2.3", None),
])
def test_numbers_are_normalised(written, canonical):
    assert normalize_number(written) == canonical


@pytest.mark.parametrize("text,strict,flexible", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", "18"),
    ("#### 1,234\nQuestion: and then 7", "1234", "7"),             # strict: the first marked answer
    ("The total is 5 + 3 = 8 apples.", None, "8"),                  # no marker: only flexible finds it
    ("#### $42.00.", "42", "42"),
    ("It costs -$5 and so #### -5", "-5", "-5"),
    ("no numbers here", None, None),
    ("Each box has 12 eggs, so 3 boxes have 36 eggs. ####", None, "36"),
])
def test_strict_and_flexible_extraction(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_chain_of_thought_marker_and_grading():
    text = "There are 15 trees and 21 after, so 21 - 15 = 6. The answer is 6."
    assert extract_strict(text, "the answer is") == "6" and extract_strict(text) is None
    answer = "15 + 6 = <<15+6=21>>21\n#### 6"
    assert gsm8k.grade(text, answer, "cot") == (
        {"strict": "6", "flexible": "6.", "numeric": "6"},
        {"exact_match_strict": True, "exact_match_flexible": True, "exact_match_numeric": True})
    extracted, correct = gsm8k.grade("#### 7 and then 6", answer, "full")
    assert extracted == {"strict": "7", "flexible": "6", "numeric": "6"}
    assert correct == {"exact_match_strict": False, "exact_match_flexible": True, "exact_match_numeric": True}


@pytest.mark.parametrize("generated,strict,flexible,numeric", [
    (" 9*2 = 18\n#### 18", True, True, True),
    (" 9*2 = 18\n####18", False, True, True),           # lm-eval's strict wants "#### " with its space
    (" 9*2 = 18\n#### $18", False, True, True),
    (" 9*2 = 18\n#### 18.00", False, False, True),      # "18.00" is not "18" as a string
    (" The total is $18.00.", False, False, True),
    (" She pays 1,8 dollars.", False, True, True),      # "1,8" loses its comma: "18" (both ways)
])
def test_strict_and_flexible_are_lm_evals_and_numeric_is_lenient(generated, strict, flexible, numeric):
    _, correct = gsm8k.grade(generated, "She pays 9*2=<<9*2=18>>18 dollars.\n#### 18", "full")
    assert correct == {"exact_match_strict": strict, "exact_match_flexible": flexible, "exact_match_numeric": numeric}


PIECES = ["####", "#### ", "The answer is ", "the answer is ", "$", ",", ".", "-", " ", "\n", "18", "1,018", "0",
          "7.50", "abc", "Q:", "<<2*9=18>>"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12), st.sampled_from(["18", "1,018", "-7.5", "0"]),
       st.sampled_from(["full", "cot"]), st.sampled_from(["", "\n", " "]))
def test_grading_equals_lm_evaluation_harness(pieces, gold, style, after):
    """lm_eval's own RegexFilter and exact_match_hf_evaluate, configured as its gsm8k / gsm8k-cot yamls."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm_eval is a test dependency (pip install -e .[test])")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    assert lm_eval.__version__
    generated, answer = "".join(pieces), f"Some steps <<1+1=2>>.\n#### {gold}{after}"
    # gsm8k.yaml's target is the answer field; gsm8k-cot.yaml's the text after "####", stripped
    target = answer.split("####")[-1].strip() if style == "cot" else answer
    strict_pattern = r"The answer is (\-?[0-9\.\,]+)." if style == "cot" else r"#### (\-?[0-9\.\,]+)"
    filters = {"exact_match_strict": RegexFilter(regex_pattern=strict_pattern, group_select=0),
               "exact_match_flexible": RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    _, ours = gsm8k.grade(generated, answer, style)
    for metric, regex_filter in filters.items():
        extracted = list(regex_filter.apply([[generated]], [{}]))[0][0]
        theirs = exact_match_hf_evaluate([extracted], [target], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                         ignore_case=True)["exact_match"]
        assert ours[metric] == bool(theirs), (metric, generated, answer)


def test_gold_numbers_and_calculator_annotations():
    answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert gsm8k_gold(answer) == "1018"
    assert strip_calculator(answer).startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18.")
    with pytest.raises(ValueError):
        gsm8k_gold("no final line")


def test_exemplar_styles_and_prompts():
    train = gsm8k.read_gsm8k(GSM8K / "train.jsonl")
    shots = gsm8k.exemplars(train, 3, seed=1234)
    assert shots == gsm8k.exemplars(train, 3, seed=1234) != gsm8k.exemplars(train, 3, seed=1)  # seeded
    assert len({s["question"] for s in shots}) == 3 and all(s in train for s in shots)
    answer = shots[0]["answer"]
    full, direct, cot = (gsm8k.answer_text(answer, style) for style in gsm8k.STYLES)
    gold = gsm8k_gold(answer)
    assert "<<" not in full and full.endswith(f"#### {gold}") and full.count("\n") == answer.count("\n")
    assert direct == f"#### {gold}"
    assert "\n" not in cot and "####" not in cot and cot.endswith(f"The answer is {gold}.")

    prompt = gsm8k.build_prompt("How many?", shots, "full", "\n\n", chat=False)
    assert prompt.startswith(f"Question: {shots[0]['question']}\nAnswer: {full}\n\nQuestion: {shots[1]['question']}")
    assert prompt.endswith(f"#### {gsm8k_gold(shots[2]['answer'])}\n\nQuestion: How many?\nAnswer:")
    assert gsm8k.build_prompt("How many?", [], "cot", "\n\n", chat=False) == "Q: How many?\nA:"
    messages = gsm8k.build_prompt("How many?", shots, "cot", "\n\n", chat=True)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"] == gsm8k.answer_text(shots[0]["answer"], "cot")
    assert messages[-1]["content"] == "Q: How many?\nA:"


def test_gsm8k_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a\n#### 1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:2: expected"):
        gsm8k.read_gsm8k(bad)
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: the answer does not end with '#### N'"):
        gsm8k.read_gsm8k(bad)


def test_stop_strings_cut_the_reply():
    assert cut_at_stops("x = 1\n    return x\ndef other():\n", ["\ndef ", "\nclass "]) == "x = 1\n    return x"
    assert cut_at_stops("#### 5\n\nQuestion: next", ["Question:", "\n\n\n"]) == "#### 5\n\n"
    assert cut_at_stops("no stop", ["Q:"]) == "no stop"


def test_humaneval_programs_plain_and_chat():
    problem = {"task_id": "t/0", "prompt": "import math\n\ndef area(r):\n    \"\"\"Area of a circle.\"\"\"\n",
               "entry_point": "area", "test": "def check(f):\n    assert f(1) == math.pi\n"}
    body = "    return math.pi * r * r\n"
    plain = humaneval.program(problem, body, chat=False)
    assert plain.startswith(problem["prompt"] + body) and plain.rstrip().endswith("check(area)")
    reply = "Sure!\n```python\ndef area(r):\n    return math.pi * r ** 2\n```\nThis works."
    assert extract_code(reply) == "def area(r):\n    return math.pi * r ** 2\n"
    chat = humaneval.program(problem, reply, chat=True)
    assert chat.startswith(problem["prompt"] + "\ndef area(r):")  # the prompt's imports, then the reply's function
    assert humaneval.program(problem, "```python\n" + body + "```", chat=True).startswith(problem["prompt"] + body)
    messages = humaneval.build_prompt(problem, chat=True)
    assert messages[0]["role"] == "user" and problem["prompt"] in messages[0]["content"]


@pytest.mark.parametrize("n,c,k,expected", [(1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 3, 1, 0.3), (5, 0, 3, 0.0),
                                            (5, 3, 3, 1.0), (4, 1, 2, 0.5), (10, 5, 5, 1 - 1 / 252)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    from math import comb

    assert humaneval.pass_at_k(n, c, k) == pytest.approx(expected)
    assert humaneval.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_humaneval_file_errors(tmp_path):
    bad = tmp_path / "HumanEval.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(DataError, match="missing or not a string: entry_point, test"):
        humaneval.read_problems(bad)
    with pytest.raises(DataError, match="no such HumanEval file"):
        humaneval.read_problems(tmp_path / "none.jsonl")
