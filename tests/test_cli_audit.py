"""How the command line ends, as a user meets it: output piped into `head`, Ctrl-C, LLMKIT_* variables with
values llmkit does not read, and options that were checked only after the model loaded (or never)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli_in_process
from test_bad_inputs import one_line_error
from test_bad_inputs_verbs import usage_error
import test_fuzz_inputs
from llmkit.yaml_config import parse_overrides

shards = test_fuzz_inputs.shards  # a fixture: token shards of one Shakespeare play


def llmkit_process(*args, **popen) -> subprocess.Popen:
    """`llmkit ARGS` as a user's shell starts it: without PYTHONUNBUFFERED (which the test harness sets, and
    which hid the closed-pipe failure: each write failed at once, inside the verb, where it is caught)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "llmkit.cli", *map(str, args)], env=env, text=True, **popen)


@pytest.mark.parametrize("verb", [["--help"], ["tokenize", "--tokenizer", "TOKENIZER", "To be, or not to be"]])
def test_output_to_a_closed_pipe_ends_quietly(tmp_path, shakespeare_tokenizer, verb):
    """`llmkit ... | head -1`: the reader is gone before the output is flushed. Was: 'Exception ignored in:
    <_io.TextIOWrapper name='<stdout>'> BrokenPipeError' on stderr and exit status 120."""
    shakespeare_tokenizer.save(tmp_path / "tok")
    read, write = os.pipe()
    os.close(read)  # what `head -1` has done by the time the output is written
    try:
        process = llmkit_process(*[str(tmp_path / "tok") if a == "TOKENIZER" else a for a in verb],
                                 stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (0, "")


def test_ctrl_c_during_training_is_one_line_naming_the_checkpoint_to_resume(tmp_path, shards):
    """A real SIGINT once a checkpoint is saved: exit 130 and one line saying what --resume continues from.
    Was: an empty line."""
    out = tmp_path / "run"
    process = llmkit_process("pretrain", "--out", out, "model=tiny", f"data={shards}", "max_steps=100000",
                             "seq_len=16", "micro_batch=1", "ckpt_every=5", "keep_checkpoints=1", "eval_every=0",
                             "plot=false", "threads=1", "device=cpu", "log_every=1000",
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             # as a terminal's Ctrl-C finds it: a test run started in the background (nohup, a
                             # CI runner's `&`) hands its children SIGINT ignored, and Python then keeps it so
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "latest").is_file():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:  # a failure must not leave a 100,000-step run behind
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = err.strip().splitlines()
    assert process.returncode == 130 and len(lines) == 1, err
    assert lines[0].startswith(f"interrupted (Ctrl-C); the same command with --resume continues from {out}/checkpoints/step_")
    assert not (out / "model.safetensors").exists()  # the final model is written at the end only


def test_ctrl_c_while_a_checkpoint_is_written_stops_after_it_is_whole(tmp_path, shards, one_thread, monkeypatch):
    """Was (seen in CI): Ctrl-C inside torch.save of the training state became torch's RuntimeError from its
    half-written zip file, a traceback and exit 1, and the save was lost."""
    import torch

    real_save, saves = torch.save, []

    def save_hit_by_ctrl_c(obj, f, *args, **kwargs):
        saves.append(f)
        os.kill(os.getpid(), signal.SIGINT)  # delivered now: Python acts on it at the next instruction
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_hit_by_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (xdist may ignore it)
    try:
        out = tmp_path / "run"
        result = cli_in_process("pretrain", "--out", out, "model=tiny", f"data={shards}", "max_steps=1000",
                                "seq_len=16", "micro_batch=1", "ckpt_every=3", "eval_every=0", "plot=false",
                                "threads=1", "device=cpu", "log_every=1000")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(saves) == 1 and result.returncode == 130, result.stderr
    assert result.stderr.strip() == ("interrupted (Ctrl-C); the same command with --resume continues from "
                                     f"{out}/checkpoints/step_0000003")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert torch.load(out / "checkpoints" / "step_0000003" / "training_state.pt", weights_only=True)["step"] == 3


def test_ctrl_c_says_what_a_verb_kept(tmp_path, monkeypatch):
    import llmkit.convert
    import llmkit.train.pretrain

    def interrupt_tokenize(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(llmkit.convert, "read_tokenizer", interrupt_tokenize)
    result = cli_in_process("tokenize", "--tokenizer", tmp_path, "hello")
    assert (result.returncode, result.stderr) == (130, "interrupted (Ctrl-C)\n")

    def interrupt_with_a_message(config, out, resume=False):
        raise KeyboardInterrupt(f"interrupted: 2 of 3 tasks finished and are in {out}")

    monkeypatch.setattr(llmkit.train.pretrain, "pretrain", interrupt_with_a_message)
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny")
    assert (result.returncode, result.stderr) == (130, f"interrupted: 2 of 3 tasks finished and are in {tmp_path / 'run'}\n")

    def interrupt_before_a_checkpoint(config, out, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(llmkit.train.pretrain, "pretrain", interrupt_before_a_checkpoint)
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny")
    assert result.returncode == 130 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"interrupted (Ctrl-C) before a checkpoint was saved in {tmp_path / 'run'}")


@pytest.mark.parametrize("name, value, says", [
    ("LLMKIT_HUGE_PAGES", "off", "LLMKIT_HUGE_PAGES='off' is not a value llmkit reads: set it to 0 or 1"),
    ("LLMKIT_TOKEN_STEP", "false", "LLMKIT_TOKEN_STEP='false' is not a value llmkit reads: set it to 0 or 1"),
    ("LLMKIT_CPU_KERNELS", " 0", "LLMKIT_CPU_KERNELS=' 0' is not a value llmkit reads: set it to 0 or 1 or auto"),
    ("LLMKIT_CACHE", "  ", "LLMKIT_CACHE='  ' is only spaces, which would make a folder named so llmkit's cache"),
    ("LLMKIT_CACHE", "FILE", "is a file, not a folder"),
])
def test_llmkit_variables_with_values_llmkit_does_not_read(tmp_path, monkeypatch, saved_tiny_model, name, value, says):
    """Were silently the default: LLMKIT_HUGE_PAGES=off left huge pages on (only "0" turns them off), an
    empty LLMKIT_CACHE made the current folder the cache, a file as LLMKIT_CACHE failed later, unnamed."""
    monkeypatch.setenv(name, str(saved_tiny_model / "config.json") if value == "FILE" else value)
    one_line_error(cli_in_process("tokenize", "--tokenizer", saved_tiny_model, "hello"), says)


def test_llmkit_variables_with_values_llmkit_reads_are_accepted(monkeypatch, saved_tiny_model, tmp_path):
    for name, value in [("LLMKIT_HUGE_PAGES", "0"), ("LLMKIT_TOKEN_STEP", "1"), ("LLMKIT_CPU_KERNELS", "auto"),
                        ("LLMKIT_CACHE", str(tmp_path / "cache"))]:
        monkeypatch.setenv(name, value)
    assert cli_in_process("tokenize", "--tokenizer", saved_tiny_model, "hello").returncode == 0


def test_an_empty_cache_variable_is_the_default_on_the_command_line_too(monkeypatch, saved_tiny_model):
    """cache.py reads an empty LLMKIT_CACHE as unset (~/.cache/llmkit), as an empty switch reads; the CLI refused
    it, saying it 'would make the current folder llmkit's cache', which it no longer did."""
    monkeypatch.setenv("LLMKIT_CACHE", "")
    result = cli_in_process("tokenize", "--tokenizer", saved_tiny_model, "hello")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_a_closed_stdout_is_no_traceback(tmp_path, shakespeare_tokenizer):
    """`llmkit ... >&-`: Python's sys.stdout is None and print() writes nothing. Was: the final flush raised
    AttributeError ('NoneType' object has no attribute 'flush'), a traceback and status 1 for a run that worked."""
    shakespeare_tokenizer.save(tmp_path / "tok")
    process = llmkit_process("tokenize", "--tokenizer", tmp_path / "tok", "To be", stderr=subprocess.PIPE,
                             preexec_fn=lambda: os.close(1))  # the child starts with no file descriptor 1
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (0, "")


@pytest.mark.parametrize("args, shown", [
    (["generate", "--model", "MODEL", "--show-probs", "25", "hi"], "--show-probs: 25 is out of range: must be in [0, 20]"),
    (["fill", "--model", "MODEL", "--top", "0", "The [MASK] ate"], "--top: 0 is out of range"),
])
def test_options_beyond_their_range_are_refused_before_any_output(saved_tiny_model, args, shown):
    """Were refused only after the model loaded: `generate --show-probs 25` had printed the prompt and then
    'logprobs must be between 0 and 20' (the engine's name for it)."""
    result = cli_in_process(*[str(saved_tiny_model) if a == "MODEL" else a for a in args])
    usage_error(result, shown)
    assert result.stdout == ""


def test_draft_tokens_without_speculative_decoding_is_refused(saved_tiny_model):
    """Was silently ignored: without --speculative nothing is drafted."""
    result = cli_in_process("generate", "--model", saved_tiny_model, "--draft-tokens", "2", "--max-new-tokens", "2", "hi")
    one_line_error(result, "--draft-tokens", "give --speculative too")
    result = cli_in_process("generate", "--model", saved_tiny_model, "--speculative", "prompt-lookup", "--draft-tokens",
                            "2", "--max-new-tokens", "2", "--temperature", "0", "hi")
    assert result.returncode == 0, result.stderr


def test_score_refuses_a_png_path_it_cannot_write_before_scoring(saved_tiny_model, tmp_path):
    """Was: every text scored and printed, then the error."""
    for png in (tmp_path, tmp_path / "missing" / "s.png"):
        result = cli_in_process("score", "--model", saved_tiny_model, "--png", png, "To be", "or not")
        one_line_error(result, str(png))
        assert result.stdout == ""


def test_a_preset_path_that_is_a_folder_says_so(tmp_path):
    """Was: 'no such file' for a folder that exists."""
    one_line_error(cli_in_process("pretrain", "--out", tmp_path / "run", "--preset", f"{tmp_path}/"),
                   f"training preset '{tmp_path}/': a folder, not a YAML file")


def test_a_quoted_override_stays_text():
    """`data='"1e5"'` (a folder named 1e5): quoting is how a value stays text (the override error says so),
    but every string that float() reads became a number, quoted or not."""
    values = parse_overrides(['data="1e5"', "init_from='inf'", "lr=1e-3", "max_epochs=inf", "name=x"])
    assert values == {"data": "1e5", "init_from": "inf", "lr": 1e-3, "max_epochs": float("inf"), "name": "x"}


def test_pretrain_without_validation_data_reports_no_empty_field(tmp_path, shards, one_thread):
    """Was 'done: 1 steps, ... s of training; ; model in ...' when there was nothing to evaluate on."""
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny", f"data={shards}", "max_steps=1",
                            "seq_len=16", "micro_batch=1", "plot=false", "threads=1", "device=cpu")
    done = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and done.startswith("done: 1 steps"), result.stderr
    assert "; ;" not in done and f"s of training; model in {tmp_path / 'run'}" in done


def test_options_the_verb_would_ignore_are_refused(saved_tiny_model, tmp_path):
    """Were silently ignored: an int8 quantization has no groups, and a judge model compares two sampled replies
    (--samples is --judge answers' option)."""
    one_line_error(cli_in_process("quantize", "--model", saved_tiny_model, "--bits", "8", "--group-size", "64",
                                  "--out", tmp_path / "q"), "--group-size 64 is for int4 layers")
    one_line_error(cli_in_process("quantize", "--model", saved_tiny_model, "--bits", "4", "--group-size", "0",
                                  "--out", tmp_path / "q"), "group_size must be 32, 64, 128 or 256, not 0")
    assert not (tmp_path / "q").exists()
    result = cli_in_process("quantize", "--model", saved_tiny_model, "--bits", "4", "--group-size", "64",
                            "--out", tmp_path / "q")
    assert result.returncode == 0 and "int4 weights (head int8)" in result.stdout, result.stderr
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "To be"}\n')
    one_line_error(cli_in_process("label", "--judge", saved_tiny_model, "--policy", saved_tiny_model, "--input", prompts,
                                  "--out", tmp_path / "pairs.jsonl", "--samples", "2"), "--samples 2 is for --judge answers")
    assert not (tmp_path / "pairs.jsonl").exists()


def test_a_model_path_that_is_a_file_says_so_and_an_empty_cache_variable_is_the_default(tmp_path, monkeypatch):
    # `--model path/to/config.json` said "no such checkpoint directory" of a file that exists
    config = tmp_path / "config.json"
    config.write_text("{}")
    result = cli_in_process("generate", "--model", config, "hi")
    assert result.returncode == 2 and f"{config}: a file, not a checkpoint directory" in result.stderr, result.stderr
    from llmkit.cache import cache_root

    monkeypatch.setenv("LLMKIT_CACHE", "")  # for library users (the CLI refuses it): the default, not the current folder
    assert cache_root() == Path.home() / ".cache" / "llmkit"


@pytest.mark.parametrize("pair", ["seed=010", "data=007", "seed=08", "seed=-012"])
def test_an_override_with_a_leading_zero_is_refused_not_read_as_octal(pair):
    # YAML 1.1 reads 010 as octal: seed=010 silently became 8
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="a number with a leading 0 reads as octal"):
        parse_overrides([pair])
    assert parse_overrides(["seed=10", "x=0", "y=0.5", 'data="007"']) == {"seed": 10, "x": 0, "y": 0.5, "data": "007"}
