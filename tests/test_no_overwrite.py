"""No verb replaces a user's files unasked: an --out that holds files the verb did not create is refused
with one line (and --overwrite says so explicitly); outputs appear whole, and a killed run's leftovers go."""

import hashlib
import os

import pytest

from conftest import SHAKESPEARE
from llmkit import cli


def fingerprint(directory) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def user_model(saved_tiny_model):
    """A folder holding someone's model: what the probe lost to `convert --out` and friends."""
    return saved_tiny_model


def run(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_every_writing_verb_refuses_a_folder_of_other_files(tmp_path, user_model, capsys):
    before = fingerprint(user_model)
    source = tmp_path / "source"
    assert run(capsys, "convert", user_model, "--to", "hf", "--out", source)[0] == 0
    attempts = [
        ("convert", source, "--out", user_model),
        ("convert", user_model, "--to", "hf", "--out", user_model),
        ("tokenizer", "train", "--input", SHAKESPEARE / "val", "--vocab-size", 400, "--out", user_model),
        ("data", "prepare", "--input", SHAKESPEARE / "val", "--tokenizer", user_model, "--out", user_model),
        ("quantize", "--model", user_model, "--bits", 8, "--out", user_model),
    ]
    for args in attempts:
        code, err = run(capsys, *args)
        assert code == 2, args
        assert "holds files" in err or "is the model being quantized" in err, (args, err)
        assert "--overwrite" in err or "another --out" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert fingerprint(user_model) == before, args  # nothing of the user's was touched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staged folder left


def test_overwrite_replaces_whole_and_a_rerun_may_replace_its_own_output(tmp_path, user_model, capsys):
    source = tmp_path / "source"
    assert run(capsys, "convert", user_model, "--to", "hf", "--out", source)[0] == 0
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("someone's notes")
    assert run(capsys, "convert", source, "--out", target)[0] == 2
    assert run(capsys, "convert", source, "--out", target, "--overwrite")[0] == 0
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").exists()
    # token shards: a second run over its own earlier output needs no flag
    shards = tmp_path / "shards"
    for _ in range(2):
        assert run(capsys, "data", "prepare", "--input", SHAKESPEARE / "val", "--tokenizer", user_model,
                   "--out", shards)[0] == 0
    assert (shards / "manifest.json").exists()


def test_quantize_refuses_to_write_over_its_own_input(user_model, capsys):
    before = fingerprint(user_model)
    code, err = run(capsys, "quantize", "--model", user_model, "--bits", 8, "--out", user_model, "--overwrite")
    assert code == 2 and "is the model being quantized" in err
    assert fingerprint(user_model) == before


def test_a_killed_runs_staged_folder_is_removed_by_the_next_run(tmp_path, user_model, capsys):
    out = tmp_path / "tok"
    stale = tmp_path / ".tok.partial-999999999"  # no such process: a run that was killed
    stale.mkdir()
    (stale / "tokenizer.json").write_text("{half")
    assert run(capsys, "tokenizer", "train", "--input", SHAKESPEARE / "val", "--vocab-size", 400, "--out", out)[0] == 0
    assert not stale.exists() and (out / "tokenizer.json").exists()


def test_pretrain_and_label_never_replace_a_users_model_or_input(tmp_path, user_model, capsys):
    before = fingerprint(user_model)
    code, err = run(capsys, "pretrain", "--preset", "shakespeare-cpu", "--out", user_model, "model=tiny", "seq_len=64", "max_steps=1")
    assert code == 2 and "holds a model (config.json, model.safetensors) that no training run wrote" in err, err
    assert fingerprint(user_model) == before
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c", "answer": "b"}\n')
    code, err = run(capsys, "label", "--policy", user_model, "--judge", "answers", "--input", pairs, "--out", pairs)
    assert code == 2 and "is the --input file" in err, err
    assert pairs.read_text() == '{"prompt": "a", "chosen": "b", "rejected": "c", "answer": "b"}\n'


def test_a_killed_single_file_write_leaves_nothing_behind_after_the_next_one(tmp_path):
    """atomic_open writes `.NAME.tmp-PID` beside the file; a run killed mid-write (dead PID) left it for good."""
    from llmkit.atomic import atomic_write_text

    target = tmp_path / "answers.jsonl"
    dead = tmp_path / ".answers.jsonl.tmp-999999999"
    dead.write_text('{"half')
    running = tmp_path / f".answers.jsonl.tmp-{os.getppid()}"  # another live writer's: kept
    running.write_text("")
    atomic_write_text(target, "whole\n")
    assert target.read_text() == "whole\n" and not dead.exists() and running.exists()


def test_a_run_killed_between_its_two_renames_gets_the_old_output_back(tmp_path):
    """staged_directory moves the old output aside, then the new one in: killed in between, `out` was gone and
    the old output sat in `.out.old-PID`. The next run puts it back before deciding anything."""
    from llmkit.atomic import staged_directory
    from llmkit.errors import OutputError

    out = tmp_path / "index"
    old = tmp_path / ".index.old-999999999"
    old.mkdir()
    (old / "mine.txt").write_text("the user's earlier output")
    (tmp_path / ".index.partial-999999999").mkdir()
    with pytest.raises(OutputError, match="holds files"):
        with staged_directory(out):
            pass
    assert (out / "mine.txt").read_text() == "the user's earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
