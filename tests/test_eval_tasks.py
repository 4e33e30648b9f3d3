"""Task files: shapes and their errors, where names are found, few-shot prompts as the recipes build
them, and the CORE settings table."""

import json

import pytest

from conftest import TEST_DATA
from llmkit.errors import DataError
from llmkit.eval.prompts import build_requests, fewshot_indices
from llmkit.eval.runner import core_subset
from llmkit.eval.tasks import (LANGUAGE_MODELING, MULTIPLE_CHOICE, SCHEMA, core_settings, find_task_file,
                               parse_task_list, read_examples)

FIXTURES = TEST_DATA / "eval"


def test_three_shapes_are_recognised_and_strings_stripped():
    kinds = {s.name: s.kind for s in parse_task_list("arc_easy,copa,winogrande,lambada_openai", FIXTURES)}
    assert kinds == {"arc_easy": MULTIPLE_CHOICE, "copa": MULTIPLE_CHOICE, "winogrande": SCHEMA,
                     "lambada_openai": LANGUAGE_MODELING}
    raw = json.loads((FIXTURES / "lambada_openai.jsonl").read_text().splitlines()[0])
    example = read_examples(FIXTURES / "lambada_openai.jsonl", LANGUAGE_MODELING)[0]
    assert example["context"] == raw["context"].strip() and example["continuation"] == raw["continuation"].strip()


def test_core_tasks_run_at_their_published_settings_unless_overridden():
    arc, copa = parse_task_list("arc_easy,copa", FIXTURES)
    assert (arc.shots, arc.delimiter, arc.baseline) == (10, "\nAnswer: ", 0.25)
    assert (copa.shots, copa.delimiter, copa.baseline) == (0, " ", 0.5)
    (zero,) = parse_task_list("arc_easy", FIXTURES, shots=0)
    assert zero.shots == 0 and zero.delimiter == "\nAnswer: "
    (file_task,) = parse_task_list(str(FIXTURES / "copa.jsonl"))
    assert file_task.name == "copa" and file_task.path == FIXTURES / "copa.jsonl"


def test_fewshot_prompt_is_shots_then_question_joined_by_blank_lines():
    (spec,) = parse_task_list("arc_easy", FIXTURES, shots=2)
    examples = read_examples(spec.path, spec.kind)
    (request,) = build_requests(spec, examples, [5])
    first, second = fewshot_indices(5, len(examples), 2, spec.fewshot_seed)
    shot = lambda e: e["query"] + "\nAnswer: " + e["choices"][e["gold"]]  # noqa: E731
    expected = shot(examples[first]) + "\n\n" + shot(examples[second]) + "\n\n" + examples[5]["query"] + "\nAnswer: "
    assert request.contexts == [expected] * 4 and request.continuations == examples[5]["choices"]
    assert request.choice_chars == [len(c) for c in examples[5]["choices"]] and request.gold == examples[5]["gold"]
    assert 5 not in (first, second) and first != second
    # reproducible, and independent of which other examples run (--limit, batching)
    assert build_requests(spec, examples, [0, 5, 9])[1].contexts == request.contexts
    assert build_requests(spec, examples, list(range(20)))[5].contexts == request.contexts
    shots = {tuple(fewshot_indices(i, 20, 2, 1234)) for i in range(20)}
    assert len(shots) > 10  # each example draws its own


def test_schema_and_lm_prompts():
    (schema,) = parse_task_list("winogrande", FIXTURES, shots=1)
    examples = read_examples(schema.path, schema.kind)
    (request,) = build_requests(schema, examples, [3])
    (j,) = fewshot_indices(3, 20, 1, 1234)
    shot = examples[j]["context_options"][examples[j]["gold"]] + " " + examples[j]["continuation"] + "\n\n"
    assert request.contexts == [shot + option + " " for option in examples[3]["context_options"]]
    assert request.continuations == [examples[3]["continuation"]] * 2
    (lm,) = parse_task_list("lambada_openai", FIXTURES)
    lm_examples = read_examples(lm.path, lm.kind)
    (request,) = build_requests(lm, lm_examples, [0])
    assert request.contexts == [lm_examples[0]["context"] + " "] and request.gold is None


@pytest.mark.parametrize("line,message", [
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}', ':2: "gold" must be an index into the 2 options, got 2'),
    ('{"query": "q", "choices": [], "gold": 0}', ':2: "choices" must be a non-empty list of strings'),
    ('{"query": "q", "choices": ["a"], "gold": 0', ":2: not valid JSON"),
    ('{"question": "q"}', ":2: not a task example"),
    ('{"context": "c", "continuation": "x"}', ":2: a language_modeling example in a file of multiple_choice"),
    ('[1, 2]', ":2: expected a JSON object, got list"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "fine", "choices": ["a", "b"], "gold": 1}\n' + line + "\n")
    with pytest.raises(DataError) as error:
        read_examples(path, parse_task_list(str(path))[0].kind)
    assert f"{path}{message}" in str(error.value)


def test_line_separators_inside_strings_are_text_not_line_breaks(tmp_path):
    """JSON strings may hold U+2028, U+2029 and U+0085 unescaped (json.dumps(ensure_ascii=False) writes
    them so); str.splitlines() broke such a record in two and misnumbered the lines after it."""
    path = tmp_path / "separators.jsonl"
    first = {"query": "one\u2028two\u2029three\x85four", "choices": ["a", "b"], "gold": 1}
    path.write_text(json.dumps(first, ensure_ascii=False) + "\n" + '{"query": "q", "choices": [], "gold": 0}\n')
    with pytest.raises(DataError, match=f"{path}:2: \"choices\" must be a non-empty list"):
        read_examples(path, parse_task_list(str(path))[0].kind)
    path.write_text(json.dumps(first, ensure_ascii=False) + "\r\n")
    assert read_examples(path, parse_task_list(str(path))[0].kind)[0]["query"] == first["query"]


def test_task_names_resolve_in_order(tmp_path, monkeypatch):
    line = (FIXTURES / "copa.jsonl").read_text().splitlines()[0] + "\n"
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "cache"
    shared = tmp_path / "shared" / "data" / "eval" / "core"
    for folder in (explicit, env, shared, cache / "eval" / "core"):
        folder.mkdir(parents=True)
        (folder / "copa.jsonl").write_text(line)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # ../shared/data/eval/core is now the one made above
    monkeypatch.setenv("LLMKIT_CACHE", str(cache))
    monkeypatch.setenv("LLMKIT_EVAL_DATA", str(env))
    assert find_task_file("copa", explicit) == explicit / "copa.jsonl"
    assert find_task_file("copa") == env / "copa.jsonl"
    monkeypatch.delenv("LLMKIT_EVAL_DATA")
    assert find_task_file("copa").resolve() == (shared / "copa.jsonl").resolve()
    (shared / "copa.jsonl").unlink()
    assert find_task_file("copa") == cache / "eval" / "core" / "copa.jsonl"
    with pytest.raises(DataError, match="llmkit eval --fetch"):
        find_task_file("piqa")


def test_core_table_has_the_18_available_tasks():
    settings = core_settings()
    tasks = settings["tasks"]
    assert len(tasks) == 18 and settings["example_delimiter"] == "\n\n"
    assert {n for n, t in tasks.items() if t["kind"] == SCHEMA} == {"winogrande", "winograd_wsc"}
    assert all(len(t["sha256"]) == 64 and t["path"].endswith(f"/{n}.jsonl") for n, t in tasks.items())
    assert tasks["boolq"]["baseline"] == 62 and tasks["agi_eval_lsat_ar"]["shots"] == 3
    specs = [type("Spec", (), {"name": n, "shots": t["shots"], "delimiter": t["delimiter"]}) for n, t in tasks.items()]
    assert core_subset(specs) == list(tasks)
    assert core_subset(specs[:-1]) is None  # not the whole suite
    specs[0].shots += 1
    assert core_subset(specs) is None  # not at the published settings
