"""A batch-1 decode token in one parallel region (llmkit/infer/token_step.py, kernels/llama_layer.cpp): the logits
and the cache rows of the model's own forward, bit for bit, and the layer operators the forward now runs
(llmkit/kernel_layers.py) close to the plain modules."""

import pytest
import torch

import llmkit.cpu_kernels as cpu_kernels
import llmkit.kernel_layers as kernel_layers
from llmkit.config import ModelConfig
from llmkit.infer import Engine, SamplingParams
from llmkit.infer.kv_cache import KVCache
from llmkit.infer.quantize import quantize_model
from llmkit.infer.token_step import token_step_for
from llmkit.model import Transformer

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="llmkit's CPU kernels do not build here")


def model_of(bits, head_bits, **overrides):
    torch.manual_seed(0)
    # head size 64: attention.cpp's compiled-size path, as SmolLM2's; 3 query heads a kv head
    config = ModelConfig.preset("tiny", n_heads=6, n_kv_heads=2, d_model=384, d_ff=256, **overrides)
    model = Transformer(config).eval()
    quantize_model(model, bits, lm_head_bits=head_bits)
    return model


@pytest.mark.parametrize("bits,head_bits", [(8, 8), (4, 8), (4, 4)])
def test_a_token_in_one_region_gives_the_forwards_logits_and_cache_rows_bit_for_bit(bits, head_bits):
    model = model_of(bits, head_bits)
    step = token_step_for(model, torch.float16)
    assert step is not None
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    graph, one_region = (KVCache(model.config, 3, 64, torch.device("cpu"), torch.float16) for _ in range(2))
    row, prompt = 1, 5
    with torch.no_grad():
        for cache in (graph, one_region):  # the prompt through the graph into row 1 of both
            cache.bind(row, row + 1)
            model(ids[:, :prompt], positions=torch.arange(prompt)[None], kv_cache=cache)
        for threads in (2, 1):  # the bits do not depend on the threads
            torch.set_num_threads(threads)
            try:
                for pos in range(prompt, 40 if threads == 2 else prompt + 3):
                    graph.bind(row, row + 1, pos + 1)
                    want = model(ids[:, pos:pos + 1], positions=torch.tensor([[pos]]), kv_cache=graph)[:, -1]
                    got = step.step(int(ids[0, pos]), pos, one_region.key_store, one_region.value_store, row)
                    assert torch.equal(got, want), f"position {pos}, {threads} thread(s)"
                    assert torch.equal(one_region.key_store, graph.key_store)
                    assert torch.equal(one_region.value_store, graph.value_store)
            finally:
                torch.set_num_threads(2)


def test_the_layer_operators_are_close_to_the_plain_modules(monkeypatch):
    """The operators round as the kernels do (int8 activations) and norm and rotate in C++: their logits are the
    plain modules' (the same quantized weights) up to that rounding, not bit for bit."""
    model = model_of(8, 8)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fused = model(ids)
        assert all(kernel_layers.block_runs_fused(b) for b in model.blocks) and kernel_layers.head_runs_fused(model)
        monkeypatch.setattr(kernel_layers, "runs_fused", lambda *args: False)
        monkeypatch.setattr(kernel_layers, "final_forward", lambda *args: None)
        plain = model(ids)
    kl = torch.nn.functional.kl_div(fused.log_softmax(-1), plain.log_softmax(-1), log_target=True, reduction="none")
    assert float(kl.sum(-1).mean()) < 1e-3
    assert float((fused - plain).abs().max()) < 0.05 * float(plain.abs().max())


def test_an_engine_runs_a_lone_request_in_one_region_and_gives_the_graphs_tokens(monkeypatch):
    model = model_of(4, 8)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3, logprobs=0)
    engine = Engine(model, prefix_cache_mib=0)
    calls = []
    step = engine.token_step()
    assert step is not None

    class Counting:
        def step(self, *args):
            calls.append(args[1])
            return step.step(*args)

    engine._token_step = Counting()
    one_region = engine.complete([5, 17, 99, 3], params)
    assert calls == list(range(4, 4 + 19))  # every decode token but the prompt's own
    monkeypatch.setenv("LLMKIT_TOKEN_STEP", "0")
    graph_engine = Engine(model, prefix_cache_mib=0)
    assert graph_engine.token_step() is None
    graph = graph_engine.complete([5, 17, 99, 3], params)
    assert one_region.token_ids == graph.token_ids and len(set(graph.token_ids)) > 3
    assert [e.logprob for e in one_region.logprobs] == [e.logprob for e in graph.logprobs]


def test_only_llama_type_kernel_models_with_a_float16_cache_get_a_token_step():
    assert token_step_for(model_of(8, 8), torch.float16) is not None
    assert token_step_for(model_of(8, 8), torch.int8) is None  # an int8 cache: the graph's step
    torch.manual_seed(0)
    assert token_step_for(Transformer(ModelConfig.preset("tiny")).eval(), torch.float16) is None  # float32 weights
    assert token_step_for(model_of(8, 8, norm="layernorm"), torch.float16) is None
    assert token_step_for(model_of(8, 8, qk_norm=True), torch.float16) is None
    gelu = model_of(8, 8, mlp="gelu")
    assert not kernel_layers.block_runs_fused(gelu.blocks[0]) and token_step_for(gelu, torch.float16) is None


def test_a_token_step_refuses_a_position_row_or_token_outside_what_it_was_given():
    model = model_of(8, 8)
    step = token_step_for(model, torch.float16)
    cache = KVCache(model.config, 2, 16, torch.device("cpu"), torch.float16)
    with pytest.raises(RuntimeError, match="position 16 outside the cache"):
        step.step(1, 16, cache.key_store, cache.value_store, 0)
    with pytest.raises(RuntimeError, match="row 2"):
        step.step(1, 0, cache.key_store, cache.value_store, 2)
    with pytest.raises(RuntimeError, match="token 512 outside the vocabulary"):
        step.step(512, 0, cache.key_store, cache.value_store, 0)
    with pytest.raises(RuntimeError, match="contiguous float16"):
        step.step(1, 0, cache.key_store.float(), cache.value_store.float(), 0)


def test_inspecting_a_kernel_model_runs_its_plain_modules():
    """llmkit.inspect's hooks on a layer's modules fire: its forward runs them, in every layer."""
    from llmkit.inspect.internals import trace

    model = model_of(8, 8)
    ids = list(range(1, 20))
    traced = trace(model, ids, attention=True)
    assert traced.hidden.shape[0] == model.config.n_layers + 1 and traced.attention.shape[0] == model.config.n_layers
    with kernel_layers.plain_modules(), torch.no_grad():
        plain = model(torch.tensor([ids]))
    with torch.no_grad():
        assert not torch.equal(model(torch.tensor([ids])), plain)  # the operators' own rounding
    assert torch.equal(traced.logits, plain[0])
