"""The command line as a user runs it: real processes, real files, exit codes, no tracebacks."""

import pytest
import torch

import llmkit
from llmkit.checkpoint import save_checkpoint
from llmkit.config import ModelConfig
from llmkit.model import Transformer

from conftest import SHAKESPEARE, cli_in_process, run_cli


def test_tokenizer_train_and_tokenize(tmp_path):
    out = tmp_path / "tok"
    result = run_cli("tokenizer", "train", "--input", SHAKESPEARE / "val", "--vocab-size", 600, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "tokenizer.json").exists()
    result = run_cli("tokenize", "--tokenizer", out, "In 1603, 327 players")
    assert result.returncode == 0, result.stderr
    pieces = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith(" ")]
    assert "'3'" in pieces and "'2'" in pieces and "'7'" in pieces  # digits one by one
    assert "'327'" not in pieces and "'32'" not in pieces


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, shakespeare_tokenizer):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny")
    save_checkpoint(directory, Transformer(ModelConfig.preset("tiny")), shakespeare_tokenizer)
    return directory


def test_generate_and_score_a_checkpoint(tiny_checkpoint):
    result = run_cli("generate", "--model", tiny_checkpoint, "--temperature", 0, "--max-new-tokens", 12, "To be")
    assert result.returncode == 0, result.stderr
    llm = llmkit.load(tiny_checkpoint)
    assert result.stdout.strip() == ("To be" + llm.generate("To be", temperature=0, max_new_tokens=12)).strip()
    result = run_cli("score", "--model", tiny_checkpoint, "To be or not")
    assert result.returncode == 0 and "perplexity" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["generate", "--model", "/no/such/dir", "hi"], "/no/such/dir: no such checkpoint directory"),
    (["convert", "/no/such/model.gguf", "--out", "x"], "model.gguf: no such file"),
    (["tokenize", "--tokenizer", "/no/such", "hi"], "/no/such: no such file"),
    (["tokenizer", "train", "--input", "/no/such.txt", "--vocab-size", "500", "--out", "x"], "no such file"),
    (["generate", "--model", "TINY", "--top-p", "0", "hi"], "top_p must be in (0, 1]"),
    (["generate", "--model", "TINY", "--dtype", "float8", "hi"], "unknown dtype 'float8'"),
])
def test_user_errors_are_one_line_exit_2(tiny_checkpoint, args, message):
    args = [str(tiny_checkpoint) if a == "TINY" else a for a in args]
    result = cli_in_process(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_scores_and_chats(smollm2_dir, cache_dir):
    env = {"LLMKIT_CACHE": str(cache_dir)}
    result = run_cli("score", "--model", "smollm2", "The mouse ate the cheese", "The cheese ate the mouse",
                     env_extra=env)
    assert result.returncode == 0, result.stderr
    totals = [float(line.split()[0]) for line in result.stdout.splitlines() if "log p(" in line]
    assert totals[0] > totals[1]
    # two turns on standard input: the second question only makes sense with the first in the history
    result = run_cli("chat", "--model", "smollm2", "--temperature", 0, "--max-new-tokens", 40,
                     input="What is the capital of France?\nAnd of Germany?\n", env_extra=env)
    assert result.returncode == 0, result.stderr
    first, second = [line for line in result.stdout.splitlines() if line.strip()][:2]
    assert "Paris" in first and "Berlin" in second
