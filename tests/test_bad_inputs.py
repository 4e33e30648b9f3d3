"""Ordinary mistakes end in one clear line and exit status 2, never a traceback: huge seeds, arguments that
are not UTF-8, model folders whose JSON files hold the wrong types, GGUF metadata of the wrong type, integer
tensors, a truncated checkpoint on --resume, outputs that cannot be written, `eval` on empty or JSONL
files, NaN weights, `--preset` given a path. (tools/probe_bad_inputs.py tries ~250 such cases end to end.)"""

import errno
import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import SHAKESPEARE, cli_in_process, run_cli

TEXT = sorted((SHAKESPEARE / "val").glob("*.txt"))[0]


def one_line_error(result, *expected: str) -> str:
    """The result's single `error: ...` line (asserting exit 2, no traceback), containing each expected text."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def generate(model, *extra):
    return cli_in_process("generate", "--model", model, "--max-new-tokens", 2, *extra, "ROMEO:")


# --- command-line values ---------------------------------------------------------------------------------
def test_huge_and_negative_seeds(saved_tiny_model, tmp_path):
    one_line_error(generate(saved_tiny_model, "--seed", 10**30), "seed must be between -2^63 and 2^64 - 1")
    assert generate(saved_tiny_model, "--seed", 2**63 - 1).returncode == 0
    assert generate(saved_tiny_model, "--seed", -1).returncode == 0  # torch takes it; so do we
    one_line_error(cli_in_process("pretrain", "--out", tmp_path / "r", "model=tiny", f"seed={10**30}"),
                   "field 'seed': 100000...(31 digits) is out of range")


@pytest.mark.parametrize("args", [
    ["generate", "--model", "m", "caf\udce9"],  # how Python hands over the bytes b"caf\xe9"
    ["pretrain", "--out", "run", "lr=\udcff\udcfe"],
    ["tokenize", "--tokenizer", "/tmp/\udcff", "hi"],
])
def test_arguments_that_are_not_utf8(args):
    one_line_error(cli_in_process(*args), "is not valid UTF-8; give text and paths in UTF-8")


def test_overrides_after_an_option_are_overrides(tmp_path):
    one_line_error(cli_in_process("pretrain", "model=tiny", "--out", tmp_path / "r", "grad_clip=-1"),
                   "field 'grad_clip': -1 is out of range")
    result = cli_in_process("pretrain", "--out", tmp_path / "r", "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


def test_preset_takes_a_path_to_a_yaml_file(tmp_path):
    from llmkit.errors import ConfigError
    from llmkit.train.config import TrainConfig

    mine = tmp_path / "mine.yaml"
    mine.write_text("model: tiny\nmax_steps: 3\n")
    config = TrainConfig.preset(str(mine))
    assert config.model == "tiny" and config.max_steps == 3
    mine.write_text("model: tiny\nmax_steps: -3\n")
    with pytest.raises(ConfigError, match=f"{mine}: line 2: field 'max_steps': -3 is out of range"):
        TrainConfig.preset(str(mine))
    one_line_error(cli_in_process("pretrain", "--preset", tmp_path / "nope.yaml", "--out", tmp_path / "r"),
                   "nope.yaml': no such file; give a path to a YAML file of fields, or the name of a shipped one")
    one_line_error(cli_in_process("pretrain", "--preset", "shakespeare-gpu", "--out", tmp_path / "r"),
                   "unknown training preset 'shakespeare-gpu'; available:", "or a path to your own YAML file")


# --- model folders: JSON files of the wrong type, integer tensors, NaN weights -----------------------------
@pytest.mark.parametrize("name, content, message", [
    ("config.json", b"[1, 2, 3]", "config.json: expected a JSON object, found list"),
    ("config.json", bytes(range(256)), "config.json: not a text file (invalid UTF-8)"),
    ("tokenizer_config.json", b"\xff\xfe\x00garbage", "tokenizer_config.json: not a text file"),
    ("tokenizer_config.json", b'{"bos_token": 5}', "tokenizer_config.json: bos_token must be a token's text, not 5"),
    ("tokenizer_config.json", b'{"chat_template": 17}', "tokenizer_config.json: chat_template must be a template"),
    ("tokenizer_config.json", b'{"llmkit_stop_tokens": "<|end|>"}', "llmkit_stop_tokens must be a list"),
    ("generation_config.json", b"[1]", "generation_config.json: expected a JSON object, found list"),
    ("generation_config.json", b'{"eos_token_id": "two"}', "generation_config.json: eos_token_id must be a token id"),
    ("generation_config.json", b'{"eos_token_id": [1, "x"]}', "eos_token_id must be a token id or a list of them"),
    ("generation_config.json", b"\x00\xff", "generation_config.json: not a text file"),
])
def test_a_model_folder_s_json_files_of_the_wrong_type(saved_tiny_model, name, content, message):
    (saved_tiny_model / name).write_bytes(content)
    one_line_error(generate(saved_tiny_model), str(saved_tiny_model / name), message)


@pytest.mark.parametrize("rope_scaling, message", [
    ("linear", "field 'rope_scaling': must be dict | None"),
    ({"type": "llama3"}, "rope_scaling llama3: factor must be a positive number, not None"),
    ({"type": "yarn", "factor": 4.0}, "rope_scaling type 'yarn' is not supported"),
    ({"type": "linear", "factor": "2"}, "rope_scaling linear: factor must be a positive number, not '2'"),
])
def test_rope_scaling_of_an_unsupported_kind_or_type(saved_tiny_model, rope_scaling, message):
    path = saved_tiny_model / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "rope_scaling": rope_scaling}))
    one_line_error(generate(saved_tiny_model), message)


def test_integer_tensors_where_weights_are_floats(saved_tiny_model):
    path = saved_tiny_model / "model.safetensors"
    save_file({k: (v * 100).to(torch.int32) for k, v in load_file(path).items()}, path)
    one_line_error(generate(saved_tiny_model), "model.safetensors: tensor", "holds int32 values where weights are "
                   "floating-point")


@pytest.fixture
def nan_model(saved_tiny_model):
    path = saved_tiny_model / "model.safetensors"
    state = load_file(path)
    state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
    save_file(state, path)
    return saved_tiny_model


def test_nan_weights_are_a_clear_error_in_score_generate_and_eval(nan_model):
    one_line_error(cli_in_process("score", "--model", nan_model, "to be or not"), "log-probabilities are not finite")
    one_line_error(generate(nan_model, "--temperature", "0.7"), "NaN (or infinite) logits")
    one_line_error(generate(nan_model, "--temperature", "0"), "NaN (or infinite) logits")
    one_line_error(cli_in_process("eval", "--model", nan_model, "--text", TEXT, "--seq-len", 64), "loss is not finite")


def test_a_scripted_chat_whose_turns_fail_exits_2(nan_model):
    """Piped into `llmkit chat`, a failed turn is shown and the session goes on, but the exit status says so
    (before: exit 0, so a script could not tell)."""
    result = run_cli("chat", "--model", nan_model, "--max-new-tokens", "3", input="hi\nhello again\n")
    line = one_line_error(result, "2 chat turns failed; the first: generation failed", "NaN (or infinite) logits")
    assert result.stdout.count("generation failed") == 2, result.stdout
    assert line.count("\n") == 0
    # in a real process the engine's warning for a server's operator is not printed beside the error line
    one_line_error(run_cli("generate", "--model", nan_model, "--max-new-tokens", "3", "hi"), "NaN (or infinite) logits")


# --- foreign files: a Hugging Face config, GGUF metadata -----------------------------------------------------
@pytest.fixture
def hf_dir(saved_tiny_model, tmp_path):
    assert cli_in_process("convert", saved_tiny_model, "--to", "hf", "--out", tmp_path / "hf").returncode == 0
    return tmp_path / "hf"


@pytest.mark.parametrize("fields, message", [
    ({"num_attention_heads": "4"}, "num_attention_heads must be a positive integer, not '4'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, not 0"),
    ({"num_hidden_layers": None}, "num_hidden_layers is missing"),
    ({"rope_scaling": "yarn"}, "rope_scaling must be an object, not 'yarn'"),
    ({"rms_norm_eps": "small"}, "rms_norm_eps must be a number"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
])
def test_a_hugging_face_config_of_the_wrong_types(hf_dir, tmp_path, fields, message):
    path = hf_dir / "config.json"
    config = {**json.loads(path.read_text()), **fields}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    one_line_error(cli_in_process("convert", hf_dir, "--out", tmp_path / "out"), str(path), message)
    assert not (tmp_path / "out").exists()


def write_gguf(path, **metadata):
    """A GGUF file holding only metadata (and one tensor): the config is read, and refused, before any tensor."""
    import gguf
    import numpy as np

    fields = {"llama.block_count": 2, "llama.embedding_length": 64, "llama.attention.head_count": 4,
              "llama.feed_forward_length": 128, "llama.vocab_size": 300, "llama.context_length": 128, **metadata}
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((300, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("metadata, message", [
    ({"llama.attention.head_count": None}, "metadata llama.attention.head_count is missing"),
    ({"llama.attention.head_count": 0}, "metadata llama.attention.head_count must be a positive integer, not 0"),
    ({"llama.attention.head_count": "four"}, "metadata llama.attention.head_count must be a positive integer, not 'four'"),
    ({"llama.block_count": "2"}, "metadata llama.block_count must be a positive integer, not '2'"),
    ({"llama.context_length": 256.5}, "metadata llama.context_length must be a positive integer, not 256.5"),
    ({"llama.rope.freq_base": "big"}, "metadata llama.rope.freq_base must be a number"),
])
def test_gguf_metadata_of_the_wrong_type(tmp_path, metadata, message):
    path = write_gguf(tmp_path / "model.gguf", **metadata)
    one_line_error(cli_in_process("convert", path, "--out", tmp_path / "out"), f"{path}: {message}")


# --- training runs: --resume of a damaged checkpoint ------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shakespeare_tokenizer):
    from llmkit.data.prepare import prepare

    root = tmp_path_factory.mktemp("run")
    shakespeare_tokenizer.save(root / "tok")
    prepare([TEXT], root / "tok", root / "shards")
    result = cli_in_process("pretrain", "--out", root / "run", "model=tiny", f"data={root / 'shards'}", "max_steps=1",
                            "ckpt_every=1", "seq_len=32", "micro_batch=2", "eval_every=0", "plot=false", "threads=1",
                            "warmup_steps=0")
    assert result.returncode == 0, result.stderr
    return root


def test_a_run_whose_loss_is_not_finite_stops_with_one_line(finished_run, tmp_path):
    # weights of std 1e37: the logits overflow at the first step (found by test_fuzz_inputs' hypothesis)
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny", "model.init_std=1e37",
                            f"data={finished_run / 'shards'}", "max_steps=2", "seq_len=32", "micro_batch=2",
                            "eval_every=0", "plot=false", "threads=1", "warmup_steps=0")
    one_line_error(result, "loss is nan at step", "; lower lr (or model.init_std), or check the data")


@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:4000]),
     "model.safetensors: not a readable safetensors file"),
    (lambda c: (c / "training_state.pt").write_bytes((c / "training_state.pt").read_bytes()[:2000]),
     "training_state.pt: unreadable"),
    (lambda c: (c / "training_state.pt").write_bytes(b"\x00" * 3000), "training_state.pt: unreadable"),
    (lambda c: (c / "training_state.pt").unlink(), "training_state.pt: missing; the checkpoint is incomplete"),
    (lambda c: (c.parent / "latest").write_text("../../tok\n"), "names '../../tok', which is not a checkpoint folder"),
    (lambda c: (c.parent / "latest").write_text("step_9999999\n"), "names 'step_9999999', which is not a checkpoint"),
])
def test_resume_from_a_damaged_checkpoint(finished_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    damage(run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip())
    result = cli_in_process("pretrain", "--out", run, "--resume", "model=tiny", f"data={finished_run / 'shards'}",
                            "max_steps=2", "seq_len=32", "micro_batch=2", "eval_every=0", "plot=false", "threads=1",
                            "warmup_steps=0")
    one_line_error(result, message)


# --- outputs that cannot be written ------------------------------------------------------------------------------
def test_outputs_that_cannot_be_written(saved_tiny_model, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way\n")
    for args in [("pretrain", "model=tiny", "--out", a_file / "run"),
                 ("pretrain", "model=tiny", "--out", a_file),
                 ("pretrain", "model=tiny", "--out", "/proc/llmkit-test-run"),
                 ("convert", saved_tiny_model, "--to", "hf", "--out", a_file / "hf"),
                 ("quantize", "--model", saved_tiny_model, "--bits", 8, "--out", "/proc/llmkit-test-q"),
                 ("tokenizer", "train", "--input", TEXT, "--vocab-size", 300, "--out", a_file / "tok"),
                 ("data", "prepare", "--input", TEXT, "--tokenizer", saved_tiny_model, "--out", a_file / "shards"),
                 ("speedrun", "--out", a_file / "speedrun")]:
        line = one_line_error(cli_in_process(*args))
        assert "cannot write there" in line or "exists and is a file" in line, (args, line)
    assert a_file.read_text() == "in the way\n"


def test_a_file_output_never_replaces_a_device_pipe_or_symlink(saved_tiny_model, tmp_path):
    """Atomic writes rename a complete copy into place: renamed over /dev/full (as root) the device was gone."""
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"ROMEO. {i}", "chosen": "yes", "rejected": "no",
                                           "answer": "yes"}) + "\n" for i in range(2)))
    label = ("label", "--judge", "answers", "--policy", saved_tiny_model, "--input", prompts, "--max-new-tokens", 2)
    one_line_error(cli_in_process(*label, "--out", pipe), "is a device, pipe or socket, not a regular file")
    assert pipe.is_fifo()
    link, target = tmp_path / "pairs.jsonl", tmp_path / "elsewhere.jsonl"
    link.symlink_to(target)
    assert cli_in_process(*label, "--out", link).returncode == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) >= 2  # written through the link


def test_an_os_error_mid_run_is_one_line(saved_tiny_model, tmp_path, monkeypatch):
    """A disk that fills up while a verb writes: the last-resort net in cli.main, still one line and 2."""
    import llmkit.convert

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(llmkit.convert, "save_checkpoint", disk_full)
    hf = tmp_path / "hf"
    assert cli_in_process("convert", saved_tiny_model, "--to", "hf", "--out", hf).returncode == 0
    one_line_error(cli_in_process("convert", hf, "--out", tmp_path / "out"), "model.safetensors: No space left on device")
    # a write to an open file names no path: the line says what to do instead
    monkeypatch.setattr(llmkit.convert, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    one_line_error(cli_in_process("convert", hf, "--out", tmp_path / "out2"), "No space left on device; free disk space")


# --- eval, tokenizer training and data preparation on empty or structured inputs ---------------------------------
def test_eval_refuses_empty_and_jsonl_text(saved_tiny_model, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": "To be or not to be"}) + "\n")
    evaluate = ("eval", "--model", saved_tiny_model, "--text")
    one_line_error(cli_in_process(*evaluate, tmp_path / "empty_dir"), "no .txt files there")
    one_line_error(cli_in_process(*evaluate, tmp_path / "empty.txt"), "no text to score (empty files)")
    one_line_error(cli_in_process(*evaluate, tmp_path / "records.jsonl"), "a .jsonl file; --text scores plain text")
    one_line_error(cli_in_process(*evaluate, TEXT, "--seq-len", 0), "pass --seq-len between 1 and")


def test_empty_inputs_are_refused_by_tokenizer_train_and_data_prepare(saved_tiny_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(cli_in_process("tokenizer", "train", "--input", empty, "--vocab-size", 300, "--out", tmp_path / "t"),
                   "no text to train the tokenizer on")
    one_line_error(cli_in_process("tokenizer", "train", "--input", TEXT, "--vocab-size", 300, "--min-frequency", -1,
                                  "--out", tmp_path / "t"), "min frequency -1 must be between 0")
    prepare = ("data", "prepare", "--tokenizer", saved_tiny_model)
    one_line_error(cli_in_process(*prepare, "--input", empty, "--out", tmp_path / "s"), "no documents found")
    one_line_error(cli_in_process(*prepare, "--input", TEXT, "--out", tmp_path / "s", "--shard-tokens", 0),
                   "shard_tokens 0: give the tokens per shard file as a whole number >= 1")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(saved_tiny_model):
    import llmkit
    from llmkit.serve.terminal_chat import run_chat

    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\xff\nhello\n"), encoding="utf-8")
    stdout = io.StringIO()
    messages = run_chat(llmkit.load(saved_tiny_model), sampling={"max_new_tokens": 2, "temperature": 0},
                        stdin=stdin, stdout=stdout)
    assert "(that line was not valid UTF-8 text; type it again)" in stdout.getvalue()
    assert [m["content"] for m in messages if m["role"] == "user"] == ["hello"]
