"""Checkpoints: save -> load is bit-exact, and every way a checkpoint directory can be wrong gives a
CheckpointError that names the file (and tensor or field) at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.checkpoint import (CONFIG, GENERATION, TOKENIZER, WEIGHTS, load_config, load_generation_config,
                               load_model, load_tokenizer, save_checkpoint)
from llmkit.config import ModelConfig
from llmkit.errors import CheckpointError, ConfigError
from llmkit.model import Transformer
from llmkit.tokenizer import Tokenizer

GPT2_TINY = dict(vocab_size=256, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=64,
                 pos_embedding="learned", mlp="gelu", norm="layernorm", qkv_bias=True, out_bias=True,
                 mlp_bias=True, tie_embeddings=True)

CONFIGS = {
    "tiny": lambda: ModelConfig.preset("tiny"),
    "tiny-moe": lambda: ModelConfig.preset("tiny-moe"),
    "gpt2-tiny": lambda: ModelConfig(**GPT2_TINY),
    "untied-qknorm": lambda: ModelConfig.preset("tiny", tie_embeddings=False, qk_norm=True, qkv_bias=True),
}


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Every parameter random (biases and norm weights included) so a dropped or swapped tensor shows."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A saved tiny checkpoint (weights + config) to break in various ways."""
    save_checkpoint(tmp_path / "ckpt", random_model(ModelConfig.preset("tiny")))
    return tmp_path / "ckpt"


def edit_config(directory: Path, **changes) -> None:
    path = directory / CONFIG
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- round trip ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_load_is_bit_exact(tmp_path, name):
    cfg = CONFIGS[name]()
    model = random_model(cfg)
    save_checkpoint(tmp_path, model)
    loaded = load_model(tmp_path)
    assert loaded.config == cfg
    assert not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].device.type == "cpu", key
        assert torch.equal(got[key], want[key]), key
    if cfg.pos_embedding == "rope":
        assert torch.equal(loaded.rope_cos, model.rope_cos) and torch.equal(loaded.rope_sin, model.rope_sin)
    if cfg.tie_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight
        assert "lm_head.weight" not in load_file(tmp_path / WEIGHTS)  # stored once
    else:
        assert loaded.lm_head.weight.data_ptr() != loaded.tok_emb.weight.data_ptr()
    assert loaded.num_params() == model.num_params()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_tied_head_stays_tied_after_loading_and_training_step(tmp_path):
    save_checkpoint(tmp_path, random_model(ModelConfig.preset("tiny")))
    model = load_model(tmp_path).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 512, (2, 8))
    model(ids, ids).backward()
    opt.step()
    assert model.lm_head.weight is model.tok_emb.weight
    assert sum(1 for _ in model.parameters()) == len({id(p) for p in model.parameters()})


def test_bf16_checkpoint_round_trip(tmp_path):
    model = random_model(ModelConfig.preset("tiny")).to(torch.bfloat16)
    save_checkpoint(tmp_path, model)
    loaded = load_model(tmp_path)
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.bfloat16
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.rope_cos.dtype == torch.float32


def test_load_with_dtype_casts_weights_but_not_rope_tables(tmp_path):
    model = random_model(ModelConfig.preset("tiny"))
    save_checkpoint(tmp_path, model)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight.to(torch.bfloat16))
    assert loaded.rope_cos.dtype == torch.float32 and torch.equal(loaded.rope_cos, model.rope_cos)


def test_metadata_and_generation_config_and_tokenizer(tmp_path):
    tok = Tokenizer.train(["to be or not to be, that is the question " * 20], vocab_size=300)
    model = random_model(ModelConfig.preset("tiny"))
    save_checkpoint(tmp_path, model, tokenizer=tok, metadata={"step": 7})
    assert json.loads((tmp_path / CONFIG).read_text())["model_type"] == "llmkit"
    gen = load_generation_config(tmp_path)
    assert gen == {"bos_token_id": tok.bos_id, "eos_token_id": tok.stop_token_ids}
    loaded_tok = load_tokenizer(tmp_path)
    assert loaded_tok.encode("to be 42") == tok.encode("to be 42")
    from safetensors import safe_open
    with safe_open(tmp_path / WEIGHTS, "pt") as f:
        assert f.metadata()["step"] == "7"
    # Saving again over an existing checkpoint replaces it and leaves no temp files behind.
    save_checkpoint(tmp_path, random_model(ModelConfig.preset("tiny"), seed=1))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert not torch.equal(load_model(tmp_path).tok_emb.weight, model.tok_emb.weight)


def test_no_generation_config_is_empty_dict(ckpt):
    assert load_generation_config(ckpt) == {}
    (ckpt / GENERATION).write_text("{oops")
    with pytest.raises(CheckpointError, match=GENERATION):
        load_generation_config(ckpt)


# --- errors ---------------------------------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as e:
        load_model(missing)
    assert str(missing) in str(e.value)


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="model.bin: a file, not a checkpoint directory; give the folder"):
        load_model(f)


def test_missing_config(ckpt):
    (ckpt / CONFIG).unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert str(ckpt / CONFIG) in str(e.value) and "missing" in str(e.value)


def test_missing_weights(ckpt):
    (ckpt / WEIGHTS).unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert str(ckpt / WEIGHTS) in str(e.value) and "missing" in str(e.value)


def test_missing_tokenizer(ckpt):
    with pytest.raises(CheckpointError) as e:
        load_tokenizer(ckpt)
    assert str(ckpt / TOKENIZER) in str(e.value)


def test_shape_mismatch_names_tensor_and_files(ckpt):
    edit_config(ckpt, d_ff=96)
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    msg = str(e.value)
    assert str(ckpt / WEIGHTS) in msg and str(ckpt / CONFIG) in msg
    assert "mlp.gate_up.weight" in msg or "mlp.down.weight" in msg
    assert "(256, 64)" in msg or "(64, 128)" in msg  # the stored shape (d_ff 128: gate_up has 2 * d_ff rows)


def test_missing_and_unexpected_tensors_are_named(ckpt):
    edit_config(ckpt, n_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensors blocks\.2\."):
        load_model(ckpt)
    edit_config(ckpt, n_layers=1)
    with pytest.raises(CheckpointError, match=r"tensors not in this architecture blocks\.1\."):
        load_model(ckpt)
    edit_config(ckpt, n_layers=2, tie_embeddings=False)
    with pytest.raises(CheckpointError, match="missing tensors lm_head.weight"):
        load_model(ckpt)


def test_weights_from_another_model_with_an_extra_tensor(ckpt):
    state = load_file(ckpt / WEIGHTS)
    state["extra.weight"] = torch.zeros(3)
    save_file(state, ckpt / WEIGHTS)
    with pytest.raises(CheckpointError, match="extra.weight"):
        load_model(ckpt)


@pytest.mark.parametrize("corruption", ["truncate", "garbage", "empty", "garbage-header"])
def test_corrupt_safetensors(ckpt, corruption):
    path = ckpt / WEIGHTS
    data = path.read_bytes()
    if corruption == "truncate":
        data = data[: len(data) // 2]
    elif corruption == "garbage":
        data = bytes(range(256)) * 8
    elif corruption == "empty":
        data = b""
    else:  # a plausible header length followed by junk instead of JSON
        data = data[:8] + b"\xff" * (len(data) - 8)
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert str(path) in str(e.value) and "corrupt" in str(e.value)


def test_invalid_json_config(ckpt):
    (ckpt / CONFIG).write_text('{"vocab_size": 512,')
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert str(ckpt / CONFIG) in str(e.value) and "invalid JSON" in str(e.value)


def test_unknown_config_field(ckpt):
    edit_config(ckpt, foo=1)
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert "foo" in str(e.value) and str(ckpt / CONFIG) in str(e.value)


@pytest.mark.parametrize("field,value", [("d_ff", "128"), ("n_layers", 2.0), ("tie_embeddings", "yes"),
                                         ("n_heads", True), ("rope_theta", "1e4"), ("rope_scaling", [1])])
def test_wrong_type_config_field(ckpt, field, value):
    edit_config(ckpt, **{field: value})
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    assert repr(field) in str(e.value) and str(ckpt / CONFIG) in str(e.value)


def test_invalid_config_value(ckpt):
    edit_config(ckpt, mlp="tanh")
    with pytest.raises(CheckpointError, match="mlp must be"):
        load_model(ckpt)


def test_hugging_face_config_is_pointed_at_convert(ckpt):
    edit_config(ckpt, model_type="llama")
    with pytest.raises(CheckpointError, match="llmkit convert"):
        load_model(ckpt)


def test_load_config_accepts_metadata_keys(ckpt):
    assert load_config(ckpt) == ModelConfig.preset("tiny")


# --- ModelConfig ----------------------------------------------------------------------------------------------
def test_config_from_dict_unknown_field():
    with pytest.raises(ConfigError, match="field 'foo': unknown field"):
        ModelConfig.from_dict({"foo": 1})


def test_config_from_dict_wrong_type_names_field():
    with pytest.raises(ConfigError, match="'d_model'"):
        ModelConfig.from_dict({"d_model": "64"})
    assert ModelConfig.from_dict({"rope_theta": 500000}).rope_theta == 500000  # int is fine for a float


def test_config_json_round_trip():
    cfg = ModelConfig.preset("tiny-moe", rope_scaling={"type": "linear", "factor": 2.0})
    data = json.loads(cfg.to_json())
    data.pop("model_type"), data.pop("architectures")
    assert ModelConfig.from_dict(data) == cfg


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.preset("no-such-model")


# --- malformed configs (each was once a crash instead of a clear error) ---------------------------------------
def test_config_json_that_is_not_an_object(ckpt):
    (ckpt / CONFIG).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=CONFIG):
        load_model(ckpt)


def test_zero_kv_heads_in_config_json(ckpt):
    edit_config(ckpt, n_kv_heads=0)
    with pytest.raises(CheckpointError, match="n_kv_heads"):
        load_model(ckpt)


def test_zero_heads_is_a_config_error():
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig.from_dict({"n_heads": 0})


@pytest.mark.parametrize("head_dim", [0, -2])
def test_non_positive_head_dim_is_a_config_error(head_dim):
    with pytest.raises(ConfigError, match="head_dim"):
        ModelConfig.from_dict({"head_dim": head_dim, "pos_embedding": "learned"})
