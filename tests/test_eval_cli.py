"""`llmkit eval --tasks` as a user runs it: the run directory it writes, --compare, errors, and SmolLM2."""

import json

import pytest
import torch

import llmkit

from conftest import TEST_DATA, cli_in_process, run_cli
from llmkit.checkpoint import save_checkpoint
from llmkit.config import ModelConfig
from llmkit.eval.stats import paired_comparison, wilson_interval
from llmkit.model import Transformer

FIXTURES = TEST_DATA / "eval"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, shakespeare_tokenizer):
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        directory = tmp_path_factory.mktemp(f"tiny{seed}")
        save_checkpoint(directory, Transformer(ModelConfig.preset("tiny", max_seq_len=256)), shakespeare_tokenizer)
        out.append(directory)
    return out


def read_records(run, task):
    return [json.loads(line) for line in (run / "examples" / f"{task}.jsonl").read_text().splitlines()]


def test_eval_tasks_writes_results_and_examples_then_compares(two_checkpoints, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for checkpoint, run in zip(two_checkpoints, runs):
        result = run_cli("eval", "--model", checkpoint, "--tasks", "arc_easy,winogrande,lambada_openai",
                         "--task-dir", FIXTURES, "--shots", 1, "--limit", 12, "--out", run, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "| arc_easy | multiple_choice | 1 | 12 |" in result.stdout
    summary = json.loads((runs[0] / "results.json").read_text())
    assert set(summary["tasks"]) == {"arc_easy", "winogrande", "lambada_openai"} and "core" not in summary
    assert summary["settings"]["limit"] == 12 and summary["settings"]["add_bos"] is True
    assert "acc_norm" in (runs[0] / "results.md").read_text()
    for task, metrics in summary["tasks"].items():
        records = read_records(runs[0], task)
        assert [r["index"] for r in records] == list(range(12))
        k = sum(r["correct"]["acc"] for r in records)
        assert metrics["metrics"]["acc"]["value"] == pytest.approx(k / 12)
        assert metrics["metrics"]["acc"]["ci95"] == pytest.approx(list(wilson_interval(k, 12)))
        assert all({"prompt", "choices", "scores", "prediction", "gold"} <= set(r) for r in records)
    arc = read_records(runs[0], "arc_easy")[0]
    assert arc["prompt"].endswith("\nAnswer: ") and "\n\n" in arc["prompt"] and len(arc["scores"]) == 4
    assert arc["prediction"] == max(range(4), key=lambda i: arc["scores"][i])

    result = run_cli("eval", "--compare", *runs, "--metric", "acc_norm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| arc_easy"))
    a, b = read_records(runs[0], "arc_easy"), read_records(runs[1], "arc_easy")
    expected = paired_comparison([r["correct"]["acc_norm"] for r in a], [r["correct"]["acc_norm"] for r in b])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "acc_norm" and cells[2] == "12"
    assert (int(cells[6]), int(cells[7])) == (expected.only_a, expected.only_b)
    assert float(cells[8]) == pytest.approx(expected.p_value, rel=1e-2)
    assert "| lambada_openai | acc |" in result.stdout  # LM tasks have acc only


@pytest.mark.parametrize("args,message", [
    (["--tasks", "nosuchtask"], "task 'nosuchtask': no nosuchtask.jsonl in"),
    (["--tasks", "/no/such/file.jsonl"], "/no/such/file.jsonl: no such task file"),
    (["--tasks", "copa", "--shots", "-1"], "--shots -1"),
    (["--tasks", "copa", "--limit", "0"], "--limit 0"),
    (["--tasks", "copa", "--sample", "0"], "--sample 0"),
    (["--tasks", "copa", "--limit", "3", "--sample", "3"], "give one"),
    ([], "give --model with either --tasks"),
])
def test_eval_user_errors_are_one_line_exit_2(two_checkpoints, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli_in_process("eval", "--model", two_checkpoints[0], "--task-dir", FIXTURES, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_random_sample_scores_the_same_examples_as_the_whole_run(two_checkpoints, tmp_path):
    # --sample draws the same examples for every model and rerun, and an example's few-shot prompt and
    # scores do not depend on which others were drawn: the sampled run's records are the whole run's.
    whole, sampled, again = tmp_path / "whole", tmp_path / "sampled", tmp_path / "again"
    common = ("eval", "--model", two_checkpoints[0], "--tasks", "arc_easy,lambada_openai", "--task-dir", FIXTURES,
              "--shots", 2)
    assert cli_in_process(*common, "--out", whole).returncode == 0
    for out in (sampled, again):
        result = cli_in_process(*common, "--sample", 7, "--sample-seed", 5, "--out", out)
        assert result.returncode == 0, result.stderr
    summary = json.loads((sampled / "results.json").read_text())
    assert summary["settings"]["sample"] == 7 and summary["settings"]["sample_seed"] == 5
    full = {task: {r["index"]: r for r in read_records(whole, task)} for task in ("arc_easy", "lambada_openai")}
    drawn = {}
    for task in full:
        records = read_records(sampled, task)
        drawn[task] = [r["index"] for r in records]
        assert len(records) == 7 and drawn[task] == sorted(set(drawn[task])) and drawn[task] != list(range(7))
        assert [r["index"] for r in read_records(again, task)] == drawn[task]
        for r in records:
            assert r["prompt"] == full[task][r["index"]]["prompt"]
            assert r["scores"] == pytest.approx(full[task][r["index"]]["scores"], abs=1e-4)
    assert drawn["arc_easy"] != drawn["lambada_openai"]  # each task draws its own


def test_compare_rejects_a_directory_that_is_not_a_run(tmp_path):
    result = cli_in_process("eval", "--compare", tmp_path, tmp_path)
    assert result.returncode == 2 and "not an evaluation run" in result.stderr


def test_smollm2_on_ten_copa_examples(smollm2_dir, tmp_path):
    out = tmp_path / "run"
    result = run_cli("eval", "--model", "smollm2", "--tasks", FIXTURES / "copa.jsonl", "--limit", 10, "--out", out,
                     "--device", "cpu", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "results.json").read_text())["tasks"]["copa"]["metrics"]
    records = read_records(out, "copa")
    assert len(records) == 10 and metrics["acc"]["n"] == 10
    assert metrics["acc"]["value"] == sum(r["correct"]["acc"] for r in records) / 10
    assert all(len(r["scores"]) == 2 and all(-80 < s < 0 for s in r["scores"]) for r in records)
    assert metrics["acc"]["value"] >= 0.5  # SmolLM2-135M reads COPA better than chance (about 0.6-0.7 in full)


def test_text_still_gives_bits_per_byte_and_excludes_tasks(two_checkpoints, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    result = run_cli("eval", "--model", two_checkpoints[0], "--text", text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 file(s)" in result.stdout and float(result.stdout.split("bits per byte ")[1].split(",")[0]) > 0
    result = cli_in_process("eval", "--model", two_checkpoints[0], "--text", text, "--tasks", "copa")
    assert result.returncode == 2 and "either --tasks" in result.stderr


def test_special_token_text_in_a_scored_file_is_text(two_checkpoints, tmp_path):
    """A document that spells a control token (`<|end|>`) is scored as the characters it has, as its
    shards would hold it: not as the one control token, which would skip its bytes' cost."""
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.eval.bpb import evaluate_texts

    model, tokenizer = load_model(two_checkpoints[0]), load_tokenizer(two_checkpoints[0])
    special = next(t for t in ("<|end|>", "<|bos|>", "<|eos|>") if len(tokenizer.encode(t)) == 1)
    path = tmp_path / "quoting.txt"
    path.write_text(f"a page that quotes {special} as text")
    result = evaluate_texts(model, tokenizer, [path], "cpu")
    assert result.tokens == len(tokenizer.encode(path.read_text(), literal=True)) > len(tokenizer.encode(path.read_text()))


def test_an_interrupted_run_keeps_its_finished_tasks_and_the_same_command_resumes_it(two_checkpoints, tmp_path,
                                                                                       monkeypatch):
    """Every finished task is written at once (atomically); Ctrl-C loses the task it was in, no more, and
    the same command takes the finished tasks from the folder and runs the rest: the results equal an
    uninterrupted run's."""
    import llmkit.eval.runner as runner

    model, tasks = two_checkpoints[0], "arc_easy,winogrande,lambada_openai"
    common = ["eval", "--model", model, "--tasks", tasks, "--task-dir", FIXTURES, "--limit", 6]
    assert cli_in_process(*common, "--out", tmp_path / "whole").returncode == 0
    real, ran = runner._evaluate_task, []

    def interrupted_at_the_third(backend, spec, *args):
        if len(ran) == 2:
            raise KeyboardInterrupt
        ran.append(spec.name)
        return real(backend, spec, *args)

    monkeypatch.setattr(runner, "_evaluate_task", interrupted_at_the_third)
    out = tmp_path / "run"
    result = cli_in_process(*common, "--out", out)
    assert result.returncode == 130 and result.stderr.count("interrupted:") == 1  # one line, not two
    assert result.stderr.strip().splitlines()[-1] == (
        f"interrupted: 2 of 3 tasks finished and are in {out}; run the same command with --out {out} to resume")
    partial = json.loads((out / "results.json").read_text())
    assert partial["complete"] is False and list(partial["tasks"]) == ["arc_easy", "winogrande"]
    assert "interrupted" in (out / "results.md").read_text()
    # another model or other settings into the same folder: refused, not mixed
    other = cli_in_process(*common[:2], two_checkpoints[1], *common[3:], "--out", out)
    assert other.returncode == 2 and "holds an interrupted evaluation of" in other.stderr
    loads = []  # settings known before the model loads are compared before it loads
    monkeypatch.setattr(llmkit, "load", lambda *a, **k: loads.append(a) or pytest.fail("loaded the model"))
    for flags, says in (([5], "limit: 6 then, 5 now"), ([6, "--no-bos"], "add_bos: True then, False now")):
        changed = cli_in_process(*common[:-1], *flags, "--out", out)
        assert changed.returncode == 2 and says in changed.stderr and not loads, changed.stderr
    monkeypatch.undo()

    ran.clear()
    monkeypatch.setattr(runner, "_evaluate_task", lambda backend, spec, *args: (ran.append(spec.name),
                                                                                 real(backend, spec, *args))[1])
    result = cli_in_process(*common, "--out", out)
    assert result.returncode == 0 and "resuming" in result.stderr and ran == ["lambada_openai"]
    resumed, whole = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "whole"))
    assert resumed["complete"] is True and "interrupted" not in (out / "results.md").read_text()
    for task in whole["tasks"]:
        assert resumed["tasks"][task]["metrics"] == whole["tasks"][task]["metrics"]
        assert read_records(out, task) == read_records(tmp_path / "whole", task)
    # a complete run is evaluated again, not taken as it is (its model may have changed since)
    ran.clear()
    assert cli_in_process(*common, "--out", out).returncode == 0 and len(ran) == 3


def test_flags_that_fail_at_load_time_fail_before_anything_is_made_or_generated(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    for flag, value in (("--dtype", "float33"), ("--device", "tpu")):
        result = cli_in_process("eval", "--model", two_checkpoints[0], "--tasks", "arc_easy", "--task-dir", FIXTURES,
                                "--limit", 2, "--out", out, flag, value)
        assert result.returncode == 2 and value in result.stderr and not out.exists(), result.stderr
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["Hello?"]}\n')
    for extra, says in ((["--max-new-tokens", 0, "--out", tmp_path / "a.jsonl"], "--max-new-tokens"),
                        (["--out", tmp_path / "missing" / "a.jsonl"], "does not exist")):
        result = cli_in_process("answer", "--model", two_checkpoints[0], "--questions", questions, *extra)
        assert result.returncode == 2 and says in result.stderr, result.stderr
