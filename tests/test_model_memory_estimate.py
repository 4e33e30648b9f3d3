"""A new model's shape is priced before it is built: `model.n_layers=1000000000` or `model.d_model=1000000`
on the command line stops at once with one line giving the parameter count, the memory training needs and
what the machine has, instead of a build that runs for hours or an out-of-memory kill."""

import re
import time

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import ConfigError
from llmkit.model import Transformer
from llmkit.yaml_config import list_presets

from conftest import cli_in_process

VARIANTS = [
    {},
    dict(norm="layernorm", qkv_bias=True, out_bias=True, mlp_bias=True, qk_norm=True, tie_embeddings=False,
         pos_embedding="learned", mlp="gelu"),
    dict(n_experts=4, top_k=2, n_shared_experts=1, n_kv_heads=1),
    dict(causal=False, norm_position="post", norm="layernorm", pos_embedding="learned", mlp="gelu", qkv_bias=True,
         out_bias=True, mlp_bias=True, type_vocab_size=2, embedding_norm=True, head_transform=True, head_bias=True,
         cls_pooler=True),
    dict(causal=False, norm_position="post", type_vocab_size=3, embedding_norm=True, lm_head=False, cls_pooler=True,
         head_transform=False, head_bias=False,
         tie_embeddings=False),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["preset", "biases-layernorm-untied", "moe-mqa", "bert-mlm",
                                                   "bert-encoder-no-head"])
@pytest.mark.parametrize("name", list_presets("models"))
def test_the_arithmetic_count_equals_the_built_model_s(name, variant):
    if ModelConfig.preset(name).n_encoder_layers and {"pos_embedding", "causal", "type_vocab_size"} & set(variant):
        # learned positions, an encoder-only layout or token types are not options of an encoder-decoder
        # (its config refuses them); the variant then describes the preset's shape as one stack
        variant = {**variant, "n_encoder_layers": 0}
    config = ModelConfig.preset(name, **variant)
    with torch.device("meta"):
        built = Transformer(config).num_params()
    assert config.num_params() == built


@pytest.mark.parametrize("override, shape", [
    ("model.n_layers=1000000000", "n_layers 1,000,000,000"),
    ("model.d_model=1000000", "d_model 1,000,000"),
    ("model.d_ff=2000000000", "d_ff 2,000,000,000"),
    ("model.vocab_size=2000000000", "vocab_size 2,000,000,000"),
])
def test_a_shape_too_large_for_the_machine_is_one_line_at_once(tmp_path, override, shape):
    start = time.monotonic()
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny", override, "max_steps=1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert shape in lines[0] and "parameters: training it needs" in lines[0] and "GiB available" in lines[0]
    assert time.monotonic() - start < 10  # nothing was built, no data was tokenized
    assert not (tmp_path / "run").exists()


def test_the_estimate_is_compared_with_the_memory_available(monkeypatch):
    import llmkit.device
    from llmkit.train.pretrain import TRAINING_BYTES_PER_PARAM, check_model_fits

    config = ModelConfig.preset("tiny")
    need = config.num_params() * TRAINING_BYTES_PER_PARAM
    monkeypatch.setattr(llmkit.device, "available_memory_bytes", lambda device: need)
    check_model_fits(config, torch.device("cpu"))  # exactly enough
    monkeypatch.setattr(llmkit.device, "available_memory_bytes", lambda device: need - 1)
    with pytest.raises(ConfigError, match=re.escape(f"has {config.num_params():.3g} parameters: training it needs "
                                                    f"{need / 2**20:.1f} MiB or more") + f".* but cpu has {(need - 1) / 2**20:.1f} MiB available"):
        check_model_fits(config, torch.device("cpu"))


def test_the_available_memory_is_a_real_figure():
    from llmkit.device import available_memory_bytes
    from llmkit.device import physical_memory_bytes

    assert 0 < available_memory_bytes(torch.device("cpu")) <= physical_memory_bytes()


def test_a_distillation_student_is_priced_too():
    from llmkit.train.distill import build_student
    from llmkit.train.post_config import DistillConfig

    teacher = Transformer(ModelConfig.preset("tiny", vocab_size=300))
    config = DistillConfig.preset("distill-smollm2", ["model=tiny", "model.n_layers=1000000000", "seq_len=32"])
    start = time.monotonic()
    with pytest.raises(ConfigError, match="the student tiny .* parameters: training it needs"):
        build_student(config, teacher)
    assert time.monotonic() - start < 10
