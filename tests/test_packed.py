"""Linears packed for oneDNN (llmkit/infer/packed.py): the same outputs, one copy of the weights, a clear
error for training, and a compiled engine that packs them."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.infer.packed import PackedLinear, PackedWeightError, is_packed, pack_linears, unpack_linears
from llmkit.model import Transformer


def make_model(**overrides):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", max_seq_len=128, **overrides)).eval()


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": True, "out_bias": True, "mlp_bias": True},
                                       {"tie_embeddings": False}])
def test_packed_model_computes_what_the_linear_one_does(overrides):
    model = make_model(**overrides)
    ids = torch.randint(0, model.config.vocab_size, (3, 21))
    with torch.inference_mode():
        expected = model(ids)
        assert pack_linears(model) == 4 * model.config.n_layers + 1
        assert is_packed(model) and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        torch.testing.assert_close(model(ids), expected, rtol=1e-5, atol=1e-5)
        # any number of rows, including the one of a batch-1 decode step
        torch.testing.assert_close(model(ids[:1, :1]), expected[:1, :1], rtol=1e-5, atol=1e-5)
    assert pack_linears(model) == 0  # already packed: nothing to do


def test_unpacking_gives_back_the_weights_and_training_a_packed_model_is_refused():
    model = make_model()
    weights = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    pack_linears(model)
    with pytest.raises(PackedWeightError, match="unpack_linears"):
        model.lm_head.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with pytest.raises(PackedWeightError):
        model(ids, targets=ids)  # the training path reads the head's weight
    assert unpack_linears(model) == len(weights)
    for name, weight in weights.items():
        torch.testing.assert_close(model.get_submodule(name).weight, weight, rtol=0, atol=1e-6)
    model(ids, targets=ids).backward()  # trainable again (the head now untied from the embedding)


def test_models_that_cannot_be_packed_are_left_alone():
    model = make_model().to(torch.bfloat16)
    assert pack_linears(model) == 0 and not is_packed(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
