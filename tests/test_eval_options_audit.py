"""`llmkit eval` options as a user combines them: --text honours --limit, --sample, --no-bos and --out and
refuses the task options; an option the way of running ignores is refused; task names are looked up along
the chain the help describes; a bad task file is said before any task runs."""

import json
import math
import shutil

import pytest
import torch

import llmkit
from conftest import TEST_DATA, cli_in_process
from llmkit.checkpoint import load_model, load_tokenizer
from llmkit.errors import DataError

FIXTURES = TEST_DATA / "eval"
LINES = ["To be, or not to be, that is the question:\n", "Whether 'tis nobler in the mind to suffer\n",
         "The slings and arrows of outrageous fortune,\n"]


def one_line_error(result, *parts):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


@pytest.fixture
def texts(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, line in enumerate(LINES):
        (folder / f"{i}.txt").write_text(line * (i + 2))
    return folder


def reference_bpb(model, tokenizer, path, add_bos=True) -> tuple[float, int, int]:
    """(nats, scored tokens, bytes) of one file computed here: one forward over the whole file (shorter than
    the window), log-softmax in float64; without BOS the first token and its bytes are not scored."""
    text = path.read_text()
    ids = tokenizer.encode(text, add_bos=add_bos, literal=True)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
    nats = -logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
    skipped = 0 if add_bos else len(tokenizer.decode(ids[:1]).encode())
    return nats, len(ids) - 1, len(text.encode()) - skipped


@pytest.mark.parametrize("option", [["--shots", "3"], ["--chat"], ["--task-dir", "."], ["--batch-tokens", "64"],
                                    ["--max-new-tokens", "5"], ["--compile"], ["--metric", "acc"]])
def test_text_refuses_the_options_it_has_no_use_for(saved_tiny_model, texts, option):
    """Were silently ignored: bits per byte was printed as if the option had acted."""
    one_line_error(cli_in_process("eval", "--model", saved_tiny_model, "--text", texts, *option),
                   f"{option[0]}:", "not used with --text")


def test_text_limit_sample_no_bos_and_out(saved_tiny_model, texts, tmp_path):
    """--limit scored every file and --out wrote nothing (were ignored); --no-bos changed nothing."""
    model, tokenizer = load_model(saved_tiny_model), load_tokenizer(saved_tiny_model)
    files = sorted(texts.glob("*.txt"))
    out = tmp_path / "bpb"
    result = cli_in_process("eval", "--model", saved_tiny_model, "--text", texts, "--limit", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 of 3 file(s)")
    run = json.loads((out / "results.json").read_text())
    assert run["kind"] == "bits_per_byte" and run["of"] == 3 and run["settings"]["limit"] == 2
    assert [f["path"] for f in run["files"]] == [str(p) for p in files[:2]]
    expected = [reference_bpb(model, tokenizer, p) for p in files[:2]]
    for record, (nats, tokens, size) in zip(run["files"], expected):
        assert (record["tokens"], record["bytes"]) == (tokens, size)
        assert record["bpb"] == pytest.approx(nats / size / math.log(2), rel=1e-5)
    total = run["total"]
    assert total["bpb"] == pytest.approx(sum(e[0] for e in expected) / sum(e[2] for e in expected) / math.log(2),
                                         rel=1e-5)
    assert f"{total['bpb']:.4f}" in result.stdout and f"{total['bpb']:.4f}" in (out / "results.md").read_text()

    result = cli_in_process("eval", "--model", saved_tiny_model, "--text", files[2], "--no-bos", "--out", out)
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "results.json").read_text())
    nats, tokens, size = reference_bpb(model, tokenizer, files[2], add_bos=False)
    assert run["settings"]["add_bos"] is False and (run["total"]["tokens"], run["total"]["bytes"]) == (tokens, size)
    assert run["total"]["bpb"] == pytest.approx(nats / size / math.log(2), rel=1e-5)

    drawn = []
    for again in range(2):
        result = cli_in_process("eval", "--model", saved_tiny_model, "--text", texts, "--sample", 2,
                                "--sample-seed", 3, "--out", out)
        assert result.returncode == 0, result.stderr
        drawn.append([f["path"] for f in json.loads((out / "results.json").read_text())["files"]])
    assert drawn[0] == drawn[1] and len(drawn[0]) == 2 and set(drawn[0]) <= {str(p) for p in files}


def test_text_out_keeps_out_of_a_task_run_and_compare_names_a_bpb_run(saved_tiny_model, texts, tmp_path):
    task_run, bpb_run = tmp_path / "tasks", tmp_path / "bpb"
    assert cli_in_process("eval", "--model", saved_tiny_model, "--tasks", FIXTURES / "copa.jsonl", "--limit", 2,
                          "--out", task_run).returncode == 0
    before = (task_run / "results.json").read_text()
    one_line_error(cli_in_process("eval", "--model", saved_tiny_model, "--text", texts, "--out", task_run),
                   "not an earlier bits-per-byte run")
    assert (task_run / "results.json").read_text() == before
    assert cli_in_process("eval", "--model", saved_tiny_model, "--text", texts, "--out", bpb_run).returncode == 0
    one_line_error(cli_in_process("eval", "--compare", task_run, bpb_run), "a bits-per-byte run")


@pytest.mark.parametrize("args,shown", [
    (["--tasks", "copa", "--seq-len", "16"], "--seq-len: the window --text scores in"),
    (["--tasks", "copa", "--max-new-tokens", "8"], "--max-new-tokens: the generative tasks' token budget"),
    (["--tasks", "copa", "--compile"], "--compile: compiles the engine's decode step"),
    (["--tasks", "copa", "--sample-seed", "4"], "--sample-seed 4: --sample's seed"),
    (["--tasks", "copa", "--metric", "acc_norm"], "--metric: the metric --compare pairs"),
    (["--compare", "A", "B"], "--model: the model to evaluate; not used with --compare"),
    (["--fetch", "--tasks", "copa", "--limit", "3"], "not used with --fetch"),
    (["--tasks", "copa", "--analogies", "A"], "--tasks: the benchmark tasks to run; not used with --analogies"),
    (["--tasks", "copa", "--model", "http://127.0.0.1:9/v1", "--no-bos"], "the server tokenizes the prompts"),
    (["--tasks", "copa", "--model", "http://127.0.0.1:9/v1", "--device", "cpu"], "--device with --model http"),
])
def test_an_option_the_run_would_ignore_is_refused(saved_tiny_model, tmp_path, monkeypatch, args, shown):
    """Each was ignored: a --tasks run without its --seq-len or --sample-seed, --compare or --fetch without the
    model given (--fetch then downloading only), a served model without --no-bos."""
    monkeypatch.setattr(llmkit, "load", lambda *a, **k: pytest.fail("loaded the model"))
    if "--model" not in args:
        args = args + ["--model", str(saved_tiny_model)]
    one_line_error(cli_in_process("eval", *args, "--task-dir", FIXTURES, "--out", tmp_path / "run"), shown)
    assert not (tmp_path / "run").exists()


def test_task_names_are_looked_up_along_the_chain_the_help_describes(saved_tiny_model, tmp_path, monkeypatch):
    """--task-dir and $LLMKIT_EVAL_DATA were each the only place searched: a task not in --task-dir was not
    looked for in $LLMKIT_EVAL_DATA, the shared data or the cache, and $LLMKIT_EVAL_DATA set to a folder laid
    out as ../shared/data/eval (core/, gsm8k/) found no CORE task."""
    from llmkit.eval.tasks import parse_task_list

    mine, env, cache = tmp_path / "mine", tmp_path / "env", tmp_path / "cache"
    (env / "core").mkdir(parents=True)
    (cache / "eval" / "core").mkdir(parents=True)
    mine.mkdir()
    shutil.copy(FIXTURES / "copa.jsonl", mine / "mine.jsonl")
    shutil.copy(FIXTURES / "winogrande.jsonl", env / "core" / "winogrande.jsonl")
    shutil.copytree(FIXTURES / "gsm8k", env / "gsm8k")
    shutil.copy(FIXTURES / "arc_easy.jsonl", cache / "eval" / "core" / "arc_easy.jsonl")
    monkeypatch.chdir(tmp_path)  # no ../shared/data/eval here
    monkeypatch.setenv("LLMKIT_CACHE", str(cache))
    monkeypatch.setenv("LLMKIT_EVAL_DATA", str(env))
    specs = parse_task_list("mine,winogrande,arc_easy,gsm8k_zero", mine)
    assert [s.path for s in specs] == [mine / "mine.jsonl", env / "core" / "winogrande.jsonl",
                                       cache / "eval" / "core" / "arc_easy.jsonl", env / "gsm8k" / "test.jsonl"]
    shutil.copy(FIXTURES / "arc_easy.jsonl", mine / "arc_easy.jsonl")  # an earlier place wins
    assert parse_task_list("arc_easy", mine)[0].path == mine / "arc_easy.jsonl"

    with pytest.raises(DataError) as missing:
        parse_task_list("arc-challenge", mine)
    for place in (f"{mine} (--task-dir)", f"{env} ($LLMKIT_EVAL_DATA)", f"{env / 'core'} ($LLMKIT_EVAL_DATA)",
                  str(cache / "eval" / "core"), "did you mean arc_challenge?"):
        assert place in str(missing.value)
    with pytest.raises(DataError, match="--task-dir nowhere: no such folder"):
        parse_task_list("arc_easy", "nowhere")  # a typo is not skipped on the way to the next place
    monkeypatch.setenv("LLMKIT_EVAL_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"\$LLMKIT_EVAL_DATA=.*gone: no such folder"):
        parse_task_list("arc_easy")

    monkeypatch.setenv("LLMKIT_EVAL_DATA", str(env))
    shutil.copy(FIXTURES / "lambada_openai.jsonl", cache / "eval" / "core" / "lambada_openai.jsonl")
    result = cli_in_process("eval", "--model", saved_tiny_model, "--tasks", "mine,winogrande,lambada_openai",
                            "--task-dir", mine, "--limit", 2, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    # a task found past the user's folders is said: a misplaced copy of one's own would otherwise go unseen
    assert (f"note: lambada_openai not in --task-dir {mine} or $LLMKIT_EVAL_DATA {env}: read from "
            f"{cache / 'eval' / 'core'}\n") in result.stderr and result.stderr.count("not in --task-dir") == 1


def test_a_bad_task_file_is_said_before_any_task_runs(saved_tiny_model, tmp_path, monkeypatch):
    """Only a file's first line was checked up front: a bad line further down surfaced when the task's turn
    came, after the model had loaded and the tasks before it had run."""
    from llmkit.eval.runner import evaluate_tasks
    from llmkit.eval.tasks import parse_task_list

    bad = tmp_path / "bad.jsonl"
    bad.write_text((FIXTURES / "copa.jsonl").read_text() + '{"query": "q", "choices": ["a", "b"], "gold": 2}\n')
    monkeypatch.setattr(llmkit, "load", lambda *a, **k: pytest.fail("loaded the model"))
    one_line_error(cli_in_process("eval", "--model", saved_tiny_model, "--tasks", f"copa,{bad}", "--task-dir",
                                  FIXTURES, "--out", tmp_path / "run"), f"{bad}:21:", '"gold" must be an index')
    monkeypatch.undo()

    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "gsm8k", data / "gsm8k")
    shutil.copy(FIXTURES / "copa.jsonl", data / "copa.jsonl")
    specs = parse_task_list("copa,gsm8k_zero", data)
    with (data / "gsm8k" / "test.jsonl").open("a") as f:
        f.write('{"question": "2 + 2?", "answer": "four"}\n')
    finished = []
    model, tokenizer = load_model(saved_tiny_model), load_tokenizer(saved_tiny_model)
    with pytest.raises(DataError, match=r"test.jsonl:21: the answer does not end with '#### N'"):
        evaluate_tasks(model, tokenizer, specs, limit=2, progress=False, on_task=finished.append)
    assert finished == []


@pytest.mark.parametrize("record,shown", [
    ({"query": "q", "choices": ["only"], "gold": 0}, '"choices" has 1 option'),
    ({"context_options": ["a"], "continuation": "c", "gold": 0}, '"context_options" has 1 option'),
    ({"context_options": ["a", "b"], "continuation": " ", "gold": 0}, '"continuation" is empty'),
])
def test_an_example_that_cannot_be_wrong_is_refused(tmp_path, record, shown):
    """Were scored: one option is always the pick (counted right), and an empty schema continuation scores the
    delimiter alone after each context."""
    from llmkit.eval.tasks import parse_task_list

    path = tmp_path / "t.jsonl"
    good = {"query": "q", "choices": ["a", "b"], "gold": 0} if "query" in record else \
        {"context_options": ["a", "b"], "continuation": "c", "gold": 1}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: {shown}"):
        parse_task_list(str(path))


def test_a_task_file_with_a_byte_order_mark_is_read(tmp_path):
    """Was refused as 'Unexpected UTF-8 BOM (decode using utf-8-sig)': the mark Windows editors write first."""
    from llmkit.eval.tasks import parse_task_list, read_examples

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "copa.jsonl").read_bytes())
    spec = parse_task_list(str(path))[0]
    assert read_examples(spec.path, spec.kind) == read_examples(FIXTURES / "copa.jsonl", spec.kind)


def test_the_lookup_says_an_unpinned_core_copy_and_spares_explicit_files(saved_tiny_model, tmp_path, monkeypatch):
    """From the review: a --task-dir copy of a CORE task replaced the pinned file silently (the CORE score was
    then over an excerpt); a task's own name was offered as 'did you mean'; a stale $LLMKIT_EVAL_DATA refused
    a task given by its path, where no folder is searched."""
    from llmkit.eval.tasks import parse_task_list

    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(FIXTURES / "winogrande.jsonl", mine / "winogrande.jsonl")  # an excerpt named like the CORE task
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMKIT_EVAL_DATA", raising=False)
    result = cli_in_process("eval", "--model", saved_tiny_model, "--tasks", "winogrande", "--task-dir", mine,
                            "--limit", 2, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert f"note: winogrande read from {mine / 'winogrande.jsonl'}, not the pinned CORE file" in result.stderr

    with pytest.raises(DataError) as missing:
        parse_task_list("copa", mine)
    assert "did you mean copa?" not in str(missing.value)

    monkeypatch.setenv("LLMKIT_EVAL_DATA", str(tmp_path / "gone"))
    result = cli_in_process("eval", "--model", saved_tiny_model, "--tasks", FIXTURES / "copa.jsonl", "--limit", 2,
                            "--out", tmp_path / "run2")
    assert result.returncode == 0, result.stderr
