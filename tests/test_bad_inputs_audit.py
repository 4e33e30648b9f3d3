"""Inputs an audit of every verb found still answered by a traceback or by silently wrong output (2026-12-07):
each is now one `error:` line with exit status 2, or (a damaged cache) recomputed."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import cli_in_process
from test_bad_inputs import one_line_error

TASK = {"query": "Is it?", "choices": ["yes", "no"], "gold": 0}


def test_exporting_a_quantized_checkpoint_says_to_export_the_floating_point_one(tmp_path, saved_tiny_model):
    """Was KeyError: 'blocks.0.attn.qkv.weight' from the Hugging Face writer."""
    assert cli_in_process("quantize", "--model", saved_tiny_model, "--bits", 8, "--out", tmp_path / "q8").returncode == 0
    one_line_error(cli_in_process("convert", tmp_path / "q8", "--to", "hf", "--out", tmp_path / "hf"),
                   "is quantized", "export the floating-point checkpoint")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("args, says", [
    (["--neighbours", ""], "--neighbours is empty"),  # was a TypeError: "" fell through to --map
    (["--analogy", " "], "--analogy is empty"),
    (["--map", "king", "--png", "PNG"], "two or more different words"),  # was an IndexError in the PCA plot
    (["--map", "king", "king", "--png", "PNG"], "two or more different words"),
])
def test_inspect_embeddings_refuses_empty_words_and_one_word_maps(tmp_path, saved_tiny_model, args, says):
    args = [str(tmp_path / "map.png") if a == "PNG" else a for a in args]
    one_line_error(cli_in_process("inspect", "embeddings", "--model", saved_tiny_model, *args), says)


def test_a_numeric_answer_is_refused_with_its_file_and_line(tmp_path, saved_tiny_model):
    """Was AttributeError: 'int' object has no attribute 'strip' (label --judge answers, rlhf reward_model=answers)."""
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "chosen": "2", "rejected": "3", "answer": "2"}) + "\n"
                    + json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5", "answer": 4}) + "\n")
    one_line_error(cli_in_process("label", "--judge", "answers", "--policy", saved_tiny_model, "--input", data,
                                  "--out", tmp_path / "pairs.jsonl"),
                   f"{data}:2", 'field "answer" must be a string', "write it in quotes")


def test_a_model_with_nan_weights_gets_no_benchmark_score(tmp_path, saved_tiny_model):
    """Was a silent 50% accuracy from NaN log-probabilities (score and generate already refused)."""
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(TASK) + "\n" for _ in range(3)))
    weights = saved_tiny_model / "model.safetensors"
    state = load_file(weights)
    state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
    save_file(state, weights)
    one_line_error(cli_in_process("eval", "--model", saved_tiny_model, "--tasks", task, "--out", tmp_path / "run"),
                   "log-probabilities are not finite")


def test_eval_compare_on_a_damaged_run_names_the_file_and_line(tmp_path, saved_tiny_model):
    """Were JSONDecodeError and KeyError tracebacks."""
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps(TASK) + "\n")
    for run in ("a", "b"):
        assert cli_in_process("eval", "--model", saved_tiny_model, "--tasks", task, "--out", tmp_path / run).returncode == 0
    assert cli_in_process("eval", "--compare", tmp_path / "a", tmp_path / "b").returncode == 0
    examples = tmp_path / "b" / "examples" / "task.jsonl"
    good = examples.read_text()
    examples.write_text(good + '{"index": 1, "gold"\n')  # a torn last line
    one_line_error(cli_in_process("eval", "--compare", tmp_path / "a", tmp_path / "b"), f"{examples}:2", "not valid JSON")
    record = json.loads(good.splitlines()[0])
    del record["correct"]
    examples.write_text(json.dumps(record) + "\n")
    one_line_error(cli_in_process("eval", "--compare", tmp_path / "a", tmp_path / "b"), f"{examples}:1", "'correct'")
    (tmp_path / "b" / "results.json").write_text("{bad")
    one_line_error(cli_in_process("eval", "--compare", tmp_path / "a", tmp_path / "b"), "results.json: not valid JSON")
    (tmp_path / "b" / "results.json").write_text("{}")
    one_line_error(cli_in_process("eval", "--compare", tmp_path / "a", tmp_path / "b"), 'has no "tasks"')


def test_a_prompt_tuned_directory_without_its_soft_prompt_is_one_line(saved_tiny_model):
    """A prompt-tuned directory runs with its soft prompt (tests/test_prompt_tuned_inference.py); one whose
    soft prompt is missing is refused by name, never run as the base model without a word."""
    (saved_tiny_model / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING",
                                                                      "num_virtual_tokens": 4}))
    one_line_error(cli_in_process("generate", "--model", saved_tiny_model, "--max-new-tokens", 2, "ROMEO:"),
                   "adapter_model.safetensors: missing")
    # any other adapter record (LoRA, merged into the weights; another PEFT type; a damaged file) loads as before
    for record in ('{"peft_type": "LORA", "r": 8}', '{"peft_type": "IA3"}', "\xff{not json"):
        (saved_tiny_model / "adapter_config.json").write_text(record)
        result = cli_in_process("generate", "--model", saved_tiny_model, "--max-new-tokens", 2, "ROMEO:")
        assert result.returncode == 0, result.stderr


def test_a_damaged_reward_head_is_one_line(tmp_path, saved_tiny_model):
    """Was safetensors' 'header too large' traceback."""
    from llmkit.errors import CheckpointError
    from llmkit.train.reward import HEAD_FILE, load_reward_model

    (saved_tiny_model / HEAD_FILE).write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="cannot be read .* train it again with `llmkit reward`"):
        load_reward_model(saved_tiny_model)


@pytest.mark.parametrize("edit, says", [
    (lambda meta: meta["bm25"].update(k1="x"), "'bm25': 'k1' is missing or of the wrong type"),
    (lambda meta: meta.pop("chunking"), "'chunking': must be an object"),
    (lambda meta: meta.update(files=[1]), "'files'"),
])
def test_a_hand_edited_rag_index_json_is_one_line(tmp_path, edit, says):
    """Were a TypeError inside bm25s and a KeyError in `rag add`."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert cli_in_process("rag", "index", "--input", docs, "--out", tmp_path / "idx", "--chunk-chars", 200).returncode == 0
    path = tmp_path / "idx" / "index.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    one_line_error(cli_in_process("rag", "search", tmp_path / "idx", "fox"), "index.json", says)


def test_hand_edited_scaling_files_are_one_line(tmp_path):
    """Were a TypeError (a word for a fitted constant) and an AttributeError (sweep.json a list)."""
    fit = {"approach2": {"a": 0.5, "b": 0.5, "n_coef": 1.0, "d_coef": 1.0},
           "approach3": {"E": 1.0, "A": 1.0, "B": 1.0, "alpha": "x", "beta": 0.3, "a": 0.5}}
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    one_line_error(cli_in_process("scaling", "predict", tmp_path, "--budget", "1e15"), "approach3.alpha must be a number")
    fit["approach3"]["alpha"] = 0.3
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    (tmp_path / "sweep.json").write_text("[1]")
    one_line_error(cli_in_process("scaling", "predict", tmp_path, "--budget", "1e15"), "sweep.json", "the whole file")
    one_line_error(cli_in_process("scaling", "right-size", tmp_path, "--seconds", 60), "sweep.json")


def test_a_file_in_a_missing_folder_names_the_users_path_not_the_temporary_file(tmp_path, saved_tiny_model):
    """Was 'nodir/.x.png.tmp-1535: No such file or directory'."""
    png = tmp_path / "nodir" / "x.png"
    line = one_line_error(cli_in_process("inspect", "attention", "--model", saved_tiny_model, "--png", png, "the king"),
                          f"{png}: the directory {png.parent} does not exist")
    assert ".tmp-" not in line


def test_score_png_with_one_text_is_refused_before_the_model_loads(tmp_path):
    """Was: the model loaded and the text was scored and printed, then the run ended with this error."""
    one_line_error(cli_in_process("score", "--model", tmp_path / "missing", "--png", tmp_path / "a.png", "one text"),
                   "--png compares sentences")
