"""The engine (KV cache + sampling) against naive full recomputation."""

import pytest
import torch

from conftest import cli_in_process
from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer import Engine, KVCache, SamplingParams, next_token_distribution, sample_next_token
from llmkit.model import Transformer


def make_model(preset="tiny", **overrides):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset(preset, **overrides)).eval()


def naive_greedy(model, prompt, n):
    ids, device = list(prompt), model.tok_emb.weight.device
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids], device=device))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("preset,overrides", [
    ("tiny", {}),
    ("tiny", {"pos_embedding": "learned", "mlp": "gelu", "norm": "layernorm", "qkv_bias": True}),
    ("tiny-moe", {}),
])
def test_engine_greedy_equals_full_recompute(preset, overrides):
    model = make_model(preset, **overrides)
    prompt = [5, 17, 99, 3, 250, 7]
    engine = Engine(model)
    assert engine.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0)) == naive_greedy(model, prompt, 40)


def test_cached_logits_equal_full_forward_at_every_position():
    model = make_model()
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, batch_size=2, max_len=30)
        chunks = [model(ids[:, :12], positions=torch.arange(12)[None], kv_cache=cache)]
        for pos in range(12, 30):  # then one token at a time
            chunks.append(model(ids[:, pos:pos + 1], positions=torch.tensor([[pos]]), kv_cache=cache))
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


def test_cache_stores_kv_heads_not_query_heads():
    config = ModelConfig.preset("tiny")  # 4 query heads share 2 key/value heads
    cache = KVCache(config, batch_size=1, max_len=16)
    assert cache.keys[0].shape == (1, config.n_kv_heads, 16, config.head_dim)


def test_seed_reproducible_and_sampling_filters():
    model = make_model()
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=1234)
    first = engine.generate([1, 2, 3], params)
    assert engine.generate([1, 2, 3], params) == first
    assert engine.generate([1, 2, 3], SamplingParams(max_new_tokens=20, temperature=1.0, seed=99)) != first
    # top_k=1 is greedy whatever the temperature
    assert engine.generate([1, 2, 3], SamplingParams(max_new_tokens=15, temperature=5.0, top_k=1, seed=0)) == \
        engine.generate([1, 2, 3], SamplingParams(max_new_tokens=15, temperature=0))


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 20.0])  # peaked, as trained, nearly flat
def test_nucleus_equals_a_full_sort(top_p, temperature):
    """Top-p from growing top-k equals the rule applied to the whole sorted vocabulary, whether the
    nucleus holds a few tokens or most of them (the 20.0 rows make it grow past `first` many times)."""
    from llmkit.infer.sampling import nucleus

    torch.manual_seed(int(top_p * 1000) + int(temperature * 10))
    for _ in range(5):
        probs = torch.softmax(torch.randn(5000) * 3 / temperature, dim=-1)
        ordered, order = probs.sort(descending=True)
        drop = (ordered.cumsum(0) - ordered) >= top_p
        expected = probs.scatter(0, order, ordered.masked_fill(drop, 0.0))
        assert torch.equal(nucleus(probs, top_p), expected)
        assert torch.equal(nucleus(probs, top_p, first=1), expected)


def test_distribution_filters():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top_p = next_token_distribution(logits, SamplingParams(temperature=1.0, top_p=0.75))
    assert torch.allclose(top_p, torch.tensor([0.625, 0.375, 0.0, 0.0]))  # 0.5 + 0.3 >= 0.75: two kept
    top_k = next_token_distribution(logits, SamplingParams(temperature=1.0, top_k=3))
    assert top_k[3] == 0 and torch.isclose(top_k.sum(), torch.tensor(1.0))
    min_p = next_token_distribution(logits, SamplingParams(temperature=1.0, min_p=0.2))  # below 0.1 dropped
    assert min_p[3] == 0 and min_p[2] > 0
    cold = next_token_distribution(logits, SamplingParams(temperature=0.1))
    assert cold[0] > 0.99
    penalised = sample_next_token(torch.tensor([2.0, 1.9, 0.0]), SamplingParams(temperature=0, repetition_penalty=2.0),
                                  previous=torch.tensor([0]))
    assert penalised == 1


def test_stop_tokens_and_context_limits():
    model = make_model()
    engine = Engine(model)
    free = engine.generate([1, 2, 3], SamplingParams(max_new_tokens=10, temperature=0))
    stopped = Engine(model, stop_token_ids=[free[3]]).generate([1, 2, 3], SamplingParams(max_new_tokens=10, temperature=0))
    assert stopped == free[: free.index(free[3]) + 1]
    # generation never runs past the context: 128 - 120 = 8 tokens at most
    assert len(engine.generate(list(range(120)), SamplingParams(max_new_tokens=50, temperature=0))) == 8
    with pytest.raises(GenerationError, match="context is 128"):
        engine.generate(list(range(128)), SamplingParams(max_new_tokens=1))
    with pytest.raises(GenerationError, match="empty"):
        engine.generate([], SamplingParams())
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        engine.generate([600], SamplingParams())
    with pytest.raises(GenerationError, match="top_p"):
        SamplingParams(top_p=0)
    # fits() is submit's length rule without its error: a batch's caller skips and counts what it refuses
    assert engine.fits(list(range(127))) and not engine.fits(list(range(128)))
    assert engine.generate(list(range(127)), SamplingParams(max_new_tokens=5, temperature=0))


class CharTokenizer:
    """Decodes token i as one letter, enough for stop-string tests."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_logprobs_match_full_forward():
    model = make_model()
    prompt = [5, 17, 99, 3]
    completion = Engine(model).complete(prompt, SamplingParams(max_new_tokens=6, temperature=0, logprobs=3))
    ids = prompt + completion.token_ids
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    for i, step in enumerate(completion.logprobs):
        row = reference[len(prompt) - 1 + i]
        assert step.token_id == completion.token_ids[i]
        assert abs(step.logprob - float(row[step.token_id])) < 1e-4
        assert [t for t, _ in step.top] == row.topk(3).indices.tolist()  # greedy: the chosen one is the best
        assert step.top[0][0] == step.token_id


def test_stop_strings_end_generation():
    model = make_model()
    params = SamplingParams(max_new_tokens=20, temperature=0)
    free = Engine(model).generate([1, 2, 3], params)
    text = CharTokenizer().decode(free)
    stop = text[5:7]  # two letters that first appear at tokens 5-6 (or earlier)
    engine = Engine(model, tokenizer=CharTokenizer())
    stopped = engine.complete([1, 2, 3], SamplingParams(max_new_tokens=20, temperature=0, stop_strings=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free[: text.index(stop) + 2]
    with pytest.raises(GenerationError, match="tokenizer"):
        Engine(model).generate([1, 2], SamplingParams(stop_strings=["x"]))


def test_finish_reasons_and_max_new_tokens():
    model = make_model()
    engine = Engine(model)
    done = engine.complete([1, 2, 3], SamplingParams(max_new_tokens=7, temperature=0))
    assert done.finish_reason == "length" and len(done.token_ids) == 7
    assert engine.generate([1, 2, 3], SamplingParams(max_new_tokens=0)) == []
    with pytest.raises(GenerationError, match="logprobs"):
        SamplingParams(logprobs=100)


def test_abandoned_stream_frees_its_row():
    model = make_model()
    engine = Engine(model)
    stream = engine.stream([1, 2, 3], SamplingParams(max_new_tokens=50, temperature=0))
    next(stream), next(stream)
    stream.close()
    assert not engine.has_work and not engine.scheduler.running
    assert engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5, temperature=0)) == \
        naive_greedy(model, [1, 2, 3], 5)


def test_compiled_decode_equals_eager():
    model, reference = make_model(), make_model()
    params = SamplingParams(max_new_tokens=24, temperature=0)
    compiled = Engine(model, compile=True)
    assert compiled.generate([5, 17, 99, 3], params) == Engine(reference).generate([5, 17, 99, 3], params)


def test_compiled_engine_after_warm_up_equals_eager_and_compiles_nothing_more(caplog):
    """After `warm_up`, a batch of another size and a lone request, both running past 64 and 128
    positions, need no new graph (the rows, the cache's shape and the attention length are symbolic
    by then). Their steps run with dynamo's guards skipped (`call_warmed`), and their tokens equal the
    eager engine's (each row's keys written into the whole cache), and the CPU fp32 model's Linears
    were packed for oneDNN, once, in place (no nn.Linear is left)."""
    from torch._dynamo.utils import counters

    from llmkit.infer.compiled import ATTEND_STEP, warm_up
    from llmkit.infer.packed import PackedLinear

    model, reference = make_model(max_seq_len=320), make_model(max_seq_len=320)
    # graphs an earlier test in this process compiled for the same code are dynamo's to reuse (after
    # tests/test_cpu_kernels.py and test_engine_speculative.py, warm_up compiled 0-1 new graphs): start clean
    torch._dynamo.reset()
    counters.clear()
    engine = Engine(model, compile=True, max_batch_size=8)
    assert not engine.warmed_up
    assert warm_up(engine) > 0
    assert engine.warmed_up
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == 4 * model.config.n_layers + 1  # + the head
    prompts = [[5, 17, 99, 3], list(range(1, 40)), [7] * 20, [9, 8], [4] * 11]
    params = SamplingParams(max_new_tokens=2 * ATTEND_STEP + 10, temperature=0)
    compiled = [c.token_ids for c in engine.generate_batch(prompts, params)]
    alone = engine.generate([3, 1, 4], params)  # a lone row: a graph of its own, also warmed up
    assert counters["stats"]["unique_graphs"] == graphs, "a shape the warm-up did not cover was compiled"
    assert "did not compile" not in caplog.text  # every step ran trusted, none fell back to the guards
    assert alone == Engine(reference).generate([3, 1, 4], params)
    eager = [c.token_ids for c in Engine(reference, max_batch_size=8).generate_batch(prompts, params)]
    assert compiled == eager


def test_a_warmed_call_that_needs_a_new_graph_compiles_it_instead_of_running_a_wrong_one(caplog):
    """`call_warmed` skips dynamo's guards; an input no cached graph was made for (here another dtype,
    which no differentiating guard of two float32 graphs looks at by itself) must not run one of them:
    dynamo refuses it, and the call is made again with every guard, compiling its graph."""
    from torch._dynamo.utils import counters

    from llmkit.infer.compiled import call_warmed

    step = torch.compile(lambda x, n: x * 2 + n.shape[0], dynamic=None)
    counters.clear()
    for rows in (1, 2, 3):  # a 1-row graph and a symbolic one
        step(torch.ones(rows, 4), torch.ones(rows))
    graphs = counters["stats"]["unique_graphs"]
    assert call_warmed(step, torch.ones(5, 4), torch.ones(5)).tolist() == [[7.0] * 4] * 5
    assert call_warmed(step, torch.ones(1, 4), torch.ones(1)).tolist() == [[3.0] * 4]
    assert counters["stats"]["unique_graphs"] == graphs and "did not compile" not in caplog.text
    wide = call_warmed(step, torch.ones(2, 4, dtype=torch.float64), torch.ones(2))
    assert wide.dtype == torch.float64 and wide.tolist() == [[4.0] * 4] * 2
    assert counters["stats"]["unique_graphs"] == graphs + 1 and "did not compile" in caplog.text


def test_cli_show_probs_and_speculative(tmp_path, shakespeare_tokenizer):
    import llmkit
    from llmkit.checkpoint import save_checkpoint

    save_checkpoint(tmp_path, make_model(), shakespeare_tokenizer)

    def cli(*args):  # in-process: the options' parsing and printing are the point, not a fresh interpreter
        return cli_in_process("generate", "--model", tmp_path, *args)

    result = cli("--temperature", "0", "--max-new-tokens", "4", "--show-probs", "3", "To be")
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if "|" in line]
    assert len(steps) == 4
    chosen, alternatives = steps[0].split("|")
    assert len(alternatives.split("%,")) == 3 and chosen.strip().endswith("%")
    plain = llmkit.load(tmp_path).generate("To be", temperature=0, max_new_tokens=12)
    for draft in ("prompt-lookup", "layers:1"):
        result = cli("--temperature", "0", "--max-new-tokens", "12", "--speculative", draft, "To be")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == ("To be" + plain).strip()
    result = cli("--speculative", "layers:9", "To be")
    assert result.returncode == 2 and "layer-skip draft needs between 1 and 1 layers" in result.stderr
