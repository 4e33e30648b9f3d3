"""The newer verbs (rag, scaling, answer, judge, inspect, eval --tasks, serve) under the probe's hostile and
careless inputs (tools/probe_bad_inputs.py, probe_cases_verbs.py): each case here was a traceback, a hang,
silently wrong output or a user's file changed, and is now one `error:` line with exit status 2."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, cli_in_process
from test_bad_inputs import one_line_error

FIXTURES = REPO / "tests" / "data" / "eval"


def usage_error(result, *expected: str) -> str:
    """argparse's refusal of an option: exit 2 and a last line `llmkit VERB: error: argument --X: ...`."""
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr and ": error: argument " in last, result.stderr
    for text in expected:
        assert text in last, last
    return last


def fingerprint(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + (path.read_bytes() if path.is_file() else b"/"))
    return digest.hexdigest()


@pytest.fixture
def binary_file(tmp_path):
    path = tmp_path / "binary.txt"
    path.write_bytes(bytes(range(128, 256)) * 20)
    return path


@pytest.mark.parametrize("args, shown", [
    (["rag", "index", "--input", "DOCS", "--out", "OUT", "--chunk-chars", "0"], "--chunk-chars: 0 is out of range"),
    (["rag", "index", "--input", "DOCS", "--out", "OUT", "--chunk-tokens", "0"], "--chunk-tokens: 0 is out of range"),
    (["rag", "search", "OUT", "fox", "--k", "0"], "--k: 0 is out of range: must be in [1, 2^31)"),
    (["serve", "--model", "OUT", "--port", "70000"], "--port: 70000 is out of range: must be in [0, 65535]"),
    (["serve", "--model", "OUT", "--port", "-1"], "--port: -1 is out of range"),
    (["serve", "--model", "OUT", "--max-body-mib", "0"], "--max-body-mib: 0 is out of range"),
    (["serve", "--model", "OUT", "--k", "0"], "--k: 0 is out of range"),
    (["serve", "--model", "OUT", "--draft-tokens", "0"], "--draft-tokens: 0 is out of range"),
    (["generate", "--model", "OUT", "--prefill-chunk", "0", "hi"], "--prefill-chunk: 0 is out of range"),
    (["inspect", "lens", "--model", "OUT", "--top", "0", "hi"], "--top: 0 is out of range"),
    (["inspect", "attention", "--model", "OUT", "--top", "-1", "hi"], "--top: -1 is out of range"),
    (["inspect", "embeddings", "--model", "OUT", "--neighbours", "the", "--top", "0"], "--top: 0 is out of range"),
    (["eval", "--model", "OUT", "--tasks", "copa", "--batch-tokens", "0"], "--batch-tokens: 0 is out of range"),
    (["scaling", "fit", "OUT", "--max-epochs", "-1"], "--max-epochs: -1 is out of range: must be in [0, inf]"),
    (["scaling", "fit", "OUT", "--max-epochs", "nan"], "--max-epochs: nan is out of range"),
    (["answer", "--model", "OUT", "--out", "OUT/a.jsonl", "--seed", str(10**30)], "--seed: 100000...(31 digits) is out"),
    (["data", "clean", "--input", "DOCS", "--out", "OUT", "--workers", "-1"], "--workers: -1 is out of range"),
])
def test_out_of_range_options_are_refused_before_any_work(tmp_path, args, shown):
    """Were: chunk size 0 silently became 1000 (a falsy 0), --top 0 printed empty tables or a torch traceback,
    --port 70000 an OverflowError traceback, --max-body-mib 0 / --k 0 a server no request could use,
    `serve --draft-tokens 0` without --speculative a server that ignored it, and
    `scaling fit --max-epochs -1` a hang."""
    (tmp_path / "docs").mkdir()
    args = [a.replace("DOCS", str(tmp_path / "docs")).replace("OUT", str(tmp_path / "out")) for a in args]
    usage_error(cli_in_process(*args), shown)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["eval", "answer", "judge"])
def test_a_binary_task_questions_or_answers_file_is_one_line(tmp_path, binary_file, verb):
    """Were UnicodeDecodeError tracebacks (the JSONL readers of eval/ decode through one helper now)."""
    args = {"eval": ["eval", "--model", tmp_path / "m", "--tasks", binary_file],
            "answer": ["answer", "--model", tmp_path / "m", "--questions", binary_file, "--out", tmp_path / "a.jsonl"],
            "judge": ["judge", "--judge", tmp_path / "m", "--answers", binary_file, "--judge-prompts",
                      FIXTURES / "mt_bench" / "judge_prompts.jsonl", "--out", tmp_path / "j"]}[verb]
    one_line_error(cli_in_process(*args), f"{binary_file}: byte 0 is not valid UTF-8")


def test_a_damaged_rag_index_is_one_line(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert cli_in_process("rag", "index", "--input", docs, "--out", tmp_path / "idx", "--chunk-chars", 200).returncode == 0
    (tmp_path / "idx" / "chunks.jsonl").write_bytes(b"\x91\xff" + os.urandom(100))
    one_line_error(cli_in_process("rag", "search", tmp_path / "idx", "fox"), "chunks.jsonl: byte 0 is not valid UTF-8",
                   "rebuild the index")


def test_answer_judge_and_eval_never_write_over_or_among_a_users_files(tmp_path, saved_tiny_model):
    """Were: `answer --out Q --questions Q` replaced the questions with answers; `judge --out MODEL` and
    `eval --tasks ... --out MODEL` wrote their reports into the model's folder."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text((FIXTURES / "mt_bench" / "question.jsonl").read_text().splitlines()[0] + "\n")
    before = questions.read_text()
    one_line_error(cli_in_process("answer", "--model", saved_tiny_model, "--questions", questions, "--out", questions),
                   "is the --questions file")
    assert questions.read_text() == before
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({**json.loads(before), "answers": ["a", "b"], "model": "m"}) + "\n")
    model_before = fingerprint(saved_tiny_model)
    one_line_error(cli_in_process("judge", "--judge", saved_tiny_model, "--answers", answers, "--judge-prompts",
                                  FIXTURES / "mt_bench" / "judge_prompts.jsonl", "--out", saved_tiny_model),
                   "holds files that are not an earlier judge run")
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"query": "Is it?", "choices": ["yes", "no"], "gold": 0}) + "\n")
    one_line_error(cli_in_process("eval", "--model", saved_tiny_model, "--tasks", task, "--out", saved_tiny_model),
                   "holds files that are not an earlier evaluation run")
    assert fingerprint(saved_tiny_model) == model_before
    # an earlier run of the verb's own is replaced as before
    run = tmp_path / "run"
    assert cli_in_process("eval", "--model", saved_tiny_model, "--tasks", task, "--out", run).returncode == 0
    result = cli_in_process("eval", "--model", saved_tiny_model, "--tasks", task, "--out", run)
    assert result.returncode == 0, result.stderr


def test_the_logit_lens_of_nan_weights_is_an_error_not_a_table_of_nan(saved_tiny_model, one_thread):
    weights = saved_tiny_model / "model.safetensors"
    state = load_file(weights)
    state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
    save_file(state, weights)
    one_line_error(cli_in_process("inspect", "lens", "--model", saved_tiny_model, "ROMEO: hello"),
                   "the lens's probabilities are not finite")


def test_a_sweep_of_an_impossible_shape_is_priced_not_built(tmp_path):
    """Was a hang: the planner built each shape (on the meta device, a layer at a time) to count its FLOPs,
    and 10^6 layers of width 10^6 took minutes; now its memory is priced by arithmetic first."""
    from llmkit.errors import ConfigError
    from llmkit.scaling.shapes import Shape
    from llmkit.scaling.sweep import plan_sweep
    from llmkit.train.config import TrainConfig

    config = TrainConfig.preset("shakespeare-cpu", ["seq_len=32", "micro_batch=2"])
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"C1e\+?12-L1000000-d1000000 .* has 1.2e\+19 parameters"):
        plan_sweep(config, [1e12], [Shape(10**6, 10**6, 15625, 2_666_688)], vocab=512, train_tokens=10**6)
    assert time.monotonic() - start < 5


def test_budgets_with_an_empty_item_are_refused():
    from llmkit.errors import ConfigError
    from llmkit.scaling.shapes import parse_budgets

    with pytest.raises(ConfigError, match="give FLOP counts separated by commas"):
        parse_budgets("1e12,,")
    assert parse_budgets("3e12, 1e12") == [1e12, 3e12]


def test_serve_with_a_bad_port_exits_at_once_in_a_real_process(tmp_path):
    """The process, not only the parser: no server is left listening, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "serve", "--model", str(tmp_path), "--port", "99999"],
                            capture_output=True, text=True, timeout=120, env=env)
    usage_error(result, "--port: 99999 is out of range")


