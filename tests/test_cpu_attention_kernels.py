"""The int8-activation models' KV caches and the CPU attention and greedy kernels (llmkit/kernels/attention.cpp,
greedy.cpp): float16 and int8 caches, softmax attention whose bits do not depend on what is beside a query,
whole == chunked == prefix-cached logits, and the greedy choice equal to torch's argmax, on every instruction set
path (tests/test_cpu_kernels.py holds the linear kernels)."""

import pytest
import torch

import llmkit.cpu_kernels as cpu_kernels
from llmkit.infer import Engine, SamplingParams, quantize_model
from test_cpu_kernels import VARIANTS, ops, recompute_through_cache, tiny_model


def test_float16_and_int8_caches_are_only_for_models_whose_attention_reads_them():
    from llmkit.errors import GenerationError
    from llmkit.infer.kv_cache import KVCache

    model = tiny_model()  # float32, SDPA: its cache stays float32
    assert Engine(model, prefix_cache_mib=0).scheduler.dtype == torch.float32
    for dtype in ("float16", "int8"):
        with pytest.raises(GenerationError, match=f"kv_cache_dtype='{dtype}' needs a model whose attention reads"):
            Engine(model, kv_cache_dtype=dtype)
    cache = KVCache(model.config, 1, 8, torch.device("cpu"), torch.int8)  # made by hand: refused at the forward
    cache.bind(0, 1)
    with pytest.raises(GenerationError, match="an int8 KV cache is read by llmkit's CPU attention kernel only"):
        model(torch.tensor([[1, 2, 3]]), positions=torch.arange(3)[None], kv_cache=cache)
    with pytest.raises(GenerationError, match="kv_cache_dtype='fp8' is invalid: it must be one of auto, float32"):
        Engine(model, kv_cache_dtype="fp8")
    quantize_model(model, 8, lm_head_bits=8)
    engine = Engine(model, kv_cache_dtype="float16", prefix_cache_mib=1)
    assert engine.scheduler.dtype == engine.prefix_cache.keys[0].dtype == torch.float16
    engine = Engine(model, kv_cache_dtype="int8", prefix_cache_mib=1)
    assert engine.scheduler.dtype == engine.prefix_cache.keys[0].dtype == torch.int8
    assert engine.prefix_cache.key_scales[0].dtype == torch.float32
    # an int8 position: head_dim values + a float32 scale per kv head and layer, for keys and for values
    c = model.config
    assert engine.scheduler.bytes_per_position == 2 * c.n_layers * c.n_kv_heads * (c.head_dim + 4)


def test_int8_cache_rows_round_to_within_half_a_step_of_their_scale():
    from llmkit.infer.kv_cache import quantize_rows

    x = torch.randn(2, 3, 5, 64, generator=torch.Generator().manual_seed(1)) * torch.tensor([1e-3, 1.0, 50.0])[None, :, None, None]
    x[0, 0, 0] = 0.0  # an all-zero row: zeros, scale 0 (not NaN)
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (2, 3, 5, 1) and scale.dtype == torch.float32
    assert torch.equal(scale.half().float(), scale)  # rounded to float16's precision (quantize_rows says why)
    assert int(q.abs().max()) == 127 and torch.equal(q[0, 0, 0], torch.zeros(64, dtype=torch.int8))
    assert float(scale[0, 0, 0]) == 0.0
    # half a step of the (float16-rounded) scale, plus what that rounding moves the row's largest value by
    assert bool(((q.float() * scale - x).abs() <= scale / 2 + 127 * scale * 2.0 ** -11).all())


def reference_attention(q, k, v, mask):
    groups = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1), attn_mask=mask)


# d = 40: the code for any head size, and a dot product's tail past its 16-lane steps (AVX2's dot keeps its
# 16 lanes as two 8-lane halves, so its tail is checked too)
@pytest.mark.parametrize("march,d", [(march, 64) for march in VARIANTS] + [(march, 40) for march in VARIANTS])
def test_attention_is_softmax_attention_and_a_querys_bits_do_not_depend_on_what_is_beside_it(march, d):
    lib = ops(march)
    gen = torch.Generator().manual_seed(0)
    # 8 queries x 3 heads a kv head: scored 16 keys at a time from transposed keys; one query alone: key by key
    batch, heads, kv_heads, queries, keys = 3, 6, 2, 8, 40
    q = torch.randn(batch, heads, queries, d, generator=gen)
    cache_k, cache_v = (torch.randn(batch, kv_heads, 64, d, generator=gen) for _ in range(2))
    cache_v[:, :, 45:] = float("nan")  # slots past every row's end: never read
    k, v = cache_k[:, :, :keys], cache_v[:, :, :keys]  # a slice of a longer cache, as the engine passes
    positions = torch.arange(queries) + torch.tensor([[30], [3], [32]])
    mask = torch.arange(keys)[None, None, None, :] <= positions[:, None, :, None]
    mask[1, :, 0] = False  # a query that sees nothing (a padding row): zeros, not NaN
    out = lib.attention(q, k, v, mask, d ** -0.5)
    want = reference_attention(q, k, v, mask)
    # the mask's width is the number of keys: the cache's whole rows give the slice's bits (the engine's way)
    assert torch.equal(lib.attention(q, cache_k, cache_v, mask, d ** -0.5), out)
    with pytest.raises(RuntimeError, match="the mask covers 40 keys; k and v hold 39"):
        lib.attention(q, k[:, :, :39], v[:, :, :39], mask, d ** -0.5)
    with pytest.raises(RuntimeError, match=r"a mask of shape \[3, 2, 8, 40\] does not broadcast to \(3, 6, 8, 40\)"):
        lib.attention(q, k, v, mask.expand(3, 2, 8, 40), d ** -0.5)
    # strided queries are read as their contiguous copy; a mask broadcast over the heads is read in place
    assert torch.equal(lib.attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, mask, d ** -0.5), out)
    assert torch.equal(lib.attention(q, k, v, mask.expand(batch, heads, queries, keys).contiguous(), d ** -0.5), out)
    assert torch.equal(out[1, :, 0], torch.zeros(heads, d))
    assert float((out.double() - want).nan_to_num().abs().max()) < 1e-5
    # every row's last query together, one query a row (a batched decode step: keys scored four at a time)
    step = lib.attention(q[:, :, -1:], k, v, mask[:, :, -1:], d ** -0.5)
    assert torch.equal(step[:, :, 0], out[:, :, -1])
    # float16 keys and values (the engine's cache) read as they are: the bits of float32 ones of equal value
    k16, v16 = cache_k.half()[:, :, :keys], cache_v.half()[:, :, :keys]
    for rows in (slice(None), slice(-1, None)):  # many queries (keys transposed) and a decode step
        half = lib.attention(q[:, :, rows], k16, v16, mask[:, :, rows], d ** -0.5)
        assert torch.equal(half, lib.attention(q[:, :, rows], k16.float(), v16.float(), mask[:, :, rows], d ** -0.5))
    # int8 keys and values with a float32 scale a row (the engine's int8 cache; the scales read through their
    # strides, a cache's whole rows): a row's scale multiplies its score and its softmax weight on every path,
    # so many queries (keys transposed), a decode step and a query alone give the same bits, within float
    # roundings of float32 keys and values holding value * scale
    from llmkit.infer.kv_cache import quantize_rows

    (k8, k_scale), (v8, v_scale) = quantize_rows(cache_k.nan_to_num()), quantize_rows(cache_v.nan_to_num())
    int8 = lib.attention(q, k8, v8, mask, d ** -0.5, k_scale, v_scale)
    equal_value = lib.attention(q, k8.float() * k_scale, v8.float() * v_scale, mask, d ** -0.5)
    assert float((int8 - equal_value).abs().max()) < 1e-5
    assert torch.equal(lib.attention(q[:, :, -1:], k8, v8, mask[:, :, -1:], d ** -0.5, k_scale, v_scale)[:, :, 0],
                       int8[:, :, -1])
    assert torch.equal(lib.attention(q[2:, :, 3:4], k8[2:], v8[2:], mask[2:, :, 3:4], d ** -0.5, k_scale[2:],
                                     v_scale[2:])[0, :, 0], int8[2, :, 3])
    with pytest.raises(RuntimeError, match="int8 keys and values need k_scale and v_scale"):
        lib.attention(q, k8, v8, mask, d ** -0.5)
    with pytest.raises(RuntimeError, match="k_scale and v_scale are for int8 keys and values; these are Float"):
        lib.attention(q, k, v, mask, d ** -0.5, k_scale, v_scale)
    with pytest.raises(RuntimeError, match=r"v_scale must be a float32 CPU tensor \(3, 2, >= 40, 1\); it is Float \[3, 2, 39, 1\]"):
        lib.attention(q, k8, v8, mask, d ** -0.5, k_scale, v_scale[:, :, :39])
    for b in range(batch):  # one query alone, over the cache's full 64 keys (the rest hidden): the same bits
        for i in range(queries):
            alone = lib.attention(q[b:b + 1, :, i:i + 1], cache_k[b:b + 1], cache_v[b:b + 1],
                                  (torch.arange(64) <= positions[b, i])[None, None, None] & mask[b, 0, i].any(), d ** -0.5)
            assert torch.equal(alone[0, :, 0], out[b, :, i])


# Decoding, the query heads of a kv head are scored and summed together where the CPU has AVX-512 (runs of
# up to 4 heads: a group of 8 is two runs); elsewhere, and where the mask differs by head, one by one. Both
# must give every query its own bits.
@pytest.mark.parametrize("march", list(VARIANTS))
@pytest.mark.parametrize("group,d", [(2, 64), (3, 64), (4, 128), (8, 64), (6, 128)])
def test_decoding_query_heads_together_gives_each_query_the_bits_it_has_alone(march, group, d):
    from llmkit.infer.kv_cache import quantize_rows

    lib = ops(march)
    gen = torch.Generator().manual_seed(group * d)
    batch, kv_heads, capacity = 4, 2, 48
    heads = group * kv_heads
    q = torch.randn(batch, heads, 1, d, generator=gen)
    cache_k, cache_v = (torch.randn(batch, kv_heads, capacity, d, generator=gen) for _ in range(2))
    lengths = torch.tensor([37, 0, 5, 46])  # row 1 sees nothing (a padding row); row 2 ends within 4 keys
    for b, n in enumerate(lengths):
        cache_v[b, :, n:] = float("nan")  # slots past a row's end: never read
    mask = (torch.arange(capacity)[None, :] < lengths[:, None])[:, None, None, :]  # broadcast over heads
    mask[3, 0, 0, 20] = False  # a hole: the key-by-key path between runs of 4
    per_head = mask.expand(batch, heads, 1, capacity).contiguous()  # a mask by head: one query at a time
    (k8, k_scale), (v8, v_scale) = quantize_rows(cache_k), quantize_rows(cache_v.nan_to_num())
    for k, v, scales in ((cache_k, cache_v, ()), (cache_k.half(), cache_v.half(), ()), (k8, v8, (k_scale, v_scale))):
        out = lib.attention(q, k, v, mask, d ** -0.5, *scales)
        assert torch.equal(out, lib.attention(q, k, v, per_head, d ** -0.5, *scales))
        for h in (0, group - 1, group, heads - 1):  # a head alone, with its kv head alone
            kv = slice(h // group, h // group + 1)
            alone = lib.attention(q[:, h:h + 1], k[:, kv], v[:, kv], mask, d ** -0.5, *(s[:, kv] for s in scales))
            assert torch.equal(alone[:, 0], out[:, h])
        assert torch.equal(out[1], torch.zeros(heads, 1, d))
        if not scales:
            want = reference_attention(q, k.float(), v.float().nan_to_num(), mask)
            assert float((out.double() - want).nan_to_num().abs().max()) < 1e-5


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activation_models_give_the_same_logits_whole_chunked_or_prefix_cached(bits):
    from llmkit.infer.kv_cache import KVCache

    model = tiny_model()
    quantize_model(model, bits, lm_head_bits=bits)
    ids = torch.randint(0, 512, (1, 48), generator=torch.Generator().manual_seed(3))
    for dtype in (torch.float32, torch.float16, torch.int8):  # a float16 / int8 cache: its rounding, then the same bits
        whole = recompute_through_cache(model, ids, dtype)[0]
        for split in (40, 47, 20):  # the first tokens into the cache, the rest after them
            cache = KVCache(model.config, 2, 64, torch.device("cpu"), dtype)
            with torch.no_grad():
                cache.bind(0, 1)
                model(ids[:, :split], positions=torch.arange(split)[None], kv_cache=cache)
                cache.bind(0, 1)
                rest = model(ids[:, split:], positions=torch.arange(split, 48)[None], kv_cache=cache)[0]
            assert torch.equal(rest, whole[split:])
    prompt = ids[0, :30].tolist()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5, logprobs=0)
    for kv_cache_dtype in ("auto", "int8"):  # an int8 cache's prefix blocks keep their scales
        cold = Engine(model, prefix_cache_mib=0, kv_cache_dtype=kv_cache_dtype).complete(prompt, params)
        engine = Engine(model, kv_cache_dtype=kv_cache_dtype)
        engine.complete(prompt[:20] + [1, 2, 3], params)  # leaves the first 20 tokens in the prefix cache
        hit = engine.complete(prompt, params)
        assert hit.cached_tokens == 20
        assert hit.token_ids == cold.token_ids
        assert [e.logprob for e in hit.logprobs] == [e.logprob for e in cold.logprobs]


@pytest.mark.parametrize("march", list(VARIANTS))
def test_the_greedy_kernel_is_torchs_argmax_and_marks_rows_holding_nan_or_inf(march):
    lib = ops(march)
    generator = torch.Generator().manual_seed(4)
    for rows in (1, 3, 32):
        for vocab in (1, 7, 31, 32, 33, 100, 1000):  # below, at and past the kernel's 32-value steps
            logits = torch.randn(rows, vocab, generator=generator)
            assert torch.equal(lib.greedy_tokens(logits), logits.argmax(-1))
            logits[:, vocab // 3] = logits[:, -1] = 9.0  # a tie: the first index, as torch's
            assert torch.equal(lib.greedy_tokens(logits), logits.argmax(-1))
    logits = torch.randn(5, 70, generator=generator)
    logits[1, 40] = float("nan")
    logits[2, 69] = float("inf")
    logits[3] = float("-inf")  # every token masked: index 0, as torch's argmax (a grammar reports it)
    logits[4, 66] = float("-inf")
    expected = logits.argmax(-1)
    expected[1:3] = -1
    assert torch.equal(lib.greedy_tokens(logits), expected)


def test_choose_tokens_is_the_same_with_the_greedy_kernel_or_torch(monkeypatch):
    from llmkit.infer.sampling import RequestSampler, choose_tokens

    assert cpu_kernels.isa() is not None  # built and loaded: choose_tokens uses them from then on
    assert cpu_kernels.loaded()
    logits = torch.randn(6, 49152, generator=torch.Generator().manual_seed(5))
    logits[2, 7] = float("nan")
    logits[4, 100] = float("inf")
    samplers = [RequestSampler(SamplingParams(temperature=0), []) for _ in range(6)]
    with_kernel = choose_tokens(logits, samplers)
    monkeypatch.setattr(cpu_kernels, "loaded", lambda: False)
    with_torch = choose_tokens(logits, samplers)
    assert [c if isinstance(c, int) else type(c) for c in with_kernel] == \
        [c if isinstance(c, int) else type(c) for c in with_torch]
    assert with_torch[0] == int(logits[0].argmax()) and isinstance(with_torch[2], Exception)
