"""A model file is data from anywhere: sizes in its config that disagree with its tensors, or that would
exhaust the machine, stop with one clear line before anything large is allocated."""

import json
import time

import pytest

from llmkit import cli


@pytest.fixture
def tiny_checkpoint(saved_tiny_model):
    return saved_tiny_model


def edit_config(directory, **fields):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("fields, message", [
    ({"n_layers": 1_000_000_000}, "says n_layers 1,000,000,000 but"),
    ({"n_encoder_layers": 1_000_000_000, "pos_embedding": "relative"}, "says n_encoder_layers 1,000,000,000 but"),
    ({"vocab_size": 1_000_000_000}, "says vocab_size 1,000,000,000 and d_model"),
    ({"max_seq_len": 100_000_000}, "max_seq_len 100,000,000 needs"),
])
def test_a_config_that_lies_about_sizes_is_refused_at_once(tiny_checkpoint, capsys, fields, message):
    edit_config(tiny_checkpoint, **fields)
    start = time.monotonic()
    code = cli.main(["generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "2", "hello"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - start < 20  # nothing of the claimed size was built


def test_an_honest_checkpoint_still_loads(tiny_checkpoint, capsys):
    assert cli.main(["generate", "--model", str(tiny_checkpoint), "--max-new-tokens", "2", "--temperature", "0",
                     "hello"]) == 0
