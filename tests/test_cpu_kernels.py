"""The int8-activation CPU linear kernels (llmkit/kernels/int8_dot.cpp): the arithmetic they state, for every
instruction set path (this machine's own, AVX2, plain C++), batch and chunk invariance, the layers and models built
on them, checkpoints, torch.compile and the ahead-of-time decode step. The KV caches, attention and greedy kernels:
tests/test_cpu_attention_kernels.py."""

import zipfile

import pytest
import torch

from llmkit.checkpoint import load_model, save_checkpoint
from llmkit.config import ModelConfig
import llmkit.cpu_kernels as cpu_kernels
from llmkit.infer import Engine, SamplingParams, quantize_model
from llmkit.infer.quantize import Int4Linear, Int8Linear, dequantized_linear, fused_swiglu
from llmkit.model import Transformer

# every path, whatever this machine has: "native" is its own (avx512-vnni, avx-vnni or avx2)
VARIANTS = {"native": "llmkit_cpu", "haswell": "llmkit_cpu_avx2", "x86-64": "llmkit_cpu_scalar"}


def ops(march):
    if march == "native":
        assert cpu_kernels.isa() is not None, "the kernels did not build: see the message above (compiler, ninja)"
    else:
        cpu_kernels.build(march, VARIANTS[march])
    return getattr(torch.ops, VARIANTS[march])


def int4_weights(n, k, group=32, seed=0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    g = w.view(n, -1, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scales = ((hi - lo) / 15).clamp(min=1e-10)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).view(n, k).to(torch.uint8)
    return q, scales, lo


def reference_int4(x, q, scales, mins):
    """sum over blocks of d_w d_x <q_w, q_x> + m_w s_x, in float64 (the kernel's stated arithmetic)."""
    qx, dx, sx = (t.double() for t in cpu_kernels.quantize_activations(x))
    n = q.shape[0]
    dots = torch.einsum("rbj,nbj->rnb", qx, q.view(n, -1, 32).double())
    return (dots * dx[:, None] * scales.double()[None]).sum(-1) + (sx[:, None] * mins.double()[None]).sum(-1)


def reference_int8(x, w, scales):
    qx, dx, _ = (t.double() for t in cpu_kernels.quantize_activations(x))
    dots = torch.einsum("rbj,nbj->rnb", qx, w.view(w.shape[0], -1, 32).double())
    return (dots * dx[:, None]).sum(-1) * scales.double()


@pytest.mark.parametrize("march", list(VARIANTS))
def test_kernels_compute_what_they_state_on_every_path(march):
    lib = ops(march)
    assert lib.isa() in (("avx512-vnni", "avx-vnni", "avx2") if march == "native" else
                         ("avx2",) if march == "haswell" else ("scalar",))
    # with AVX-512: five panels of 16 outputs and one of 8; without: 11 of 8. 11 blocks of 32 inputs: a
    # chunk of 9 and one of 2 where a panel's row tiles take k in chunks (int8_dot.cpp's each_row_tile)
    n, k = 88, 352
    panel = lib.panel_rows()  # each build's own layout
    assert panel == (16 if lib.isa() == "avx512-vnni" else 8)
    q, scales, mins = int4_weights(n, k)
    packed = cpu_kernels.pack_int4(q, scales, mins, panel)
    _, d16, m16 = cpu_kernels.unpack_int4(packed, k, panel)  # the fp16-rounded scales the kernel reads
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    s8 = torch.rand(n, generator=torch.Generator().manual_seed(2))
    p8 = cpu_kernels.pack_int8(w8, panel)
    # 70 rows: groups of 32, 32 and 6, quantized into one shared buffer (more than 64 rows)
    x = torch.randn(70, k, generator=torch.Generator().manual_seed(3)) * 3
    x[2, :32] = 0  # an all-zero block
    for got, want in ((lib.int4_linear(x, packed, k), reference_int4(x, q, d16, m16)),
                      (lib.int8_linear(x, p8, s8), reference_int8(x, w8, s8))):
        assert got.dtype == torch.float32 and got.shape == (70, n)
        assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-5
    # a row's result does not depend on the rows beside it (one pass over k for 1 or 4 rows, else chunks;
    # tiles of 4 and the rest; each thread quantizing every row, or rows shared): bit for bit
    for rows in (1, 2, 4, 5, 8, 33, 64):
        assert torch.equal(lib.int4_linear(x[:rows], packed, k), lib.int4_linear(x, packed, k)[:rows])
        assert torch.equal(lib.int8_linear(x[:rows], p8, s8), lib.int8_linear(x, p8, s8)[:rows])
        assert torch.equal(lib.int8_linear(x[rows - 1:rows], p8, s8), lib.int8_linear(x, p8, s8)[rows - 1:rows])
    # any leading shape; bf16 in, bf16 out
    y = lib.int4_linear(x[:9].view(3, 3, k).bfloat16(), packed, k)
    assert y.shape == (3, 3, n) and y.dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="the activations have 100 features, the weights 352"):
        lib.int4_linear(torch.randn(2, 100), packed, k)
    with pytest.raises(RuntimeError, match="the activations have 0 features"):
        lib.int8_linear(torch.tensor(1.0), p8, s8)
    # strided activations are read as their contiguous copy; the quantized activations live in a buffer each
    # thread keeps between calls: a small call after a large one gives the bits it gave before
    strided = (torch.randn(k, 9, generator=torch.Generator().manual_seed(4)) * 3).t()
    assert not strided.is_contiguous()
    assert torch.equal(lib.int4_linear(strided, packed, k), lib.int4_linear(strided.contiguous(), packed, k))
    assert torch.equal(lib.int8_linear(strided, p8, s8), lib.int8_linear(strided.contiguous(), p8, s8))
    one4, one8 = lib.int4_linear(x[:1], packed, k), lib.int8_linear(x[:1], p8, s8)
    lib.int4_linear(torch.randn(300, k), packed, k), lib.int8_linear(torch.randn(300, k), p8, s8)
    assert torch.equal(lib.int4_linear(x[:1], packed, k), one4) and torch.equal(lib.int8_linear(x[:1], p8, s8), one8)


@pytest.mark.parametrize("march", list(VARIANTS))
def test_the_swiglu_epilogue_is_silu_of_the_gate_times_up_and_does_not_depend_on_the_batch(march):
    """int4/int8_linear_swiglu: the gate/up layer's outputs (gate first) never written, silu(gate) * up
    instead, within a few ulp of PyTorch's silu on the plain kernel's outputs; a row's bits whatever the rows
    beside it (own and shared quantization, row tiles and chunks), as the plain kernels'."""
    lib = ops(march)
    panel = lib.panel_rows()
    n, k = 6 * panel, 352  # gate and up: 3 panels each
    q, scales, mins = int4_weights(n, k)
    packed = cpu_kernels.pack_int4(q, scales, mins, panel)
    gen = torch.Generator().manual_seed(5)
    p8 = cpu_kernels.pack_int8(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen), panel)
    s8 = torch.rand(n, generator=gen) * 0.05
    x = torch.randn(70, k, generator=gen) * 3
    for fused, plain in ((lambda x: lib.int4_linear_swiglu(x, packed, k), lambda x: lib.int4_linear(x, packed, k)),
                         (lambda x: lib.int8_linear_swiglu(x, p8, s8), lambda x: lib.int8_linear(x, p8, s8))):
        gate, up = plain(x).chunk(2, dim=-1)
        want, got = torch.nn.functional.silu(gate) * up, fused(x)
        assert got.shape == (70, n // 2) and got.dtype == torch.float32
        # a few ulp; where silu underflows (gate < -88: PyTorch's 0, the kernel's ~g * u / e^88) far below 1e-30
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-30)
        assert fused(x[:6].view(2, 3, k).bfloat16()).shape == (2, 3, n // 2)
        for rows in (1, 4, 5, 33, 64):
            assert torch.equal(fused(x[:rows]), got[:rows])
    odd = cpu_kernels.pack_int8(torch.zeros(2 * panel + 8, k, dtype=torch.int8), panel)
    with pytest.raises(RuntimeError, match="gate and up halves"):
        lib.int8_linear_swiglu(x, odd, torch.ones(2 * panel + 8))


@pytest.mark.parametrize("march", list(VARIANTS))
def test_kernels_run_on_every_thread_and_give_the_same_bits_on_any_number(march):
    """Built without OpenMP, at::parallel_for ran every kernel on one thread whatever torch's setting
    (2026-12-04: the kernels were half as fast as they could be on 2 cores). The split of the work between
    threads must change no bit."""
    lib = ops(march)
    before = torch.get_num_threads()
    n, k = 512, 192
    q, scales, mins = int4_weights(n, k)
    packed = cpu_kernels.pack_int4(q, scales, mins, lib.panel_rows())
    p8 = cpu_kernels.pack_int8(torch.randint(-127, 128, (n, k), dtype=torch.int8,
                                             generator=torch.Generator().manual_seed(1)), lib.panel_rows())
    s8 = torch.rand(n, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    x, x70 = torch.randn(37, k, generator=gen), torch.randn(70, k, generator=gen)  # own / shared quantization
    qa, ka, va = torch.randn(4, 6, 5, 64, generator=gen), torch.randn(4, 2, 30, 64, generator=gen), torch.randn(4, 2, 30, 64, generator=gen)
    mask = torch.ones(4, 1, 5, 30, dtype=torch.bool).tril(25)
    results = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert lib.parallel_threads() == threads
            results[threads] = (lib.int4_linear(x, packed, k), lib.int8_linear(x, p8, s8),
                                lib.int4_linear(x70, packed, k), lib.int8_linear(x70, p8, s8),
                                lib.attention(qa, ka, va, mask, 0.125))
    finally:
        torch.set_num_threads(before)
    for threads in (2, 3):
        for one, many in zip(results[1], results[threads]):
            assert torch.equal(one, many)


@pytest.mark.parametrize("panel", [16, 8])
def test_pack_int8_round_trips_and_puts_four_inputs_of_a_row_in_a_lane(panel):
    q = torch.randint(-127, 128, (24, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(4))
    packed = cpu_kernels.pack_int8(q, panel)
    assert packed.shape == q.shape and packed.dtype == torch.uint8
    assert torch.equal(cpu_kernels.unpack_int8(packed, panel), q)
    lanes = packed.view(-1)[:4 * panel].view(panel, 4).int() - 128  # first block, inputs 0..3 of rows 0..panel-1
    assert torch.equal(lanes, q[:panel, :4].int())
    lanes = packed.view(-1)[4 * panel:8 * panel].view(panel, 4).int() - 128  # inputs 4..7
    assert torch.equal(lanes, q[:panel, 4:8].int())
    tail = packed[16:].reshape(-1)[:32].view(8, 4).int() - 128  # the last panel has 8 rows: 16..23
    assert torch.equal(tail, q[16:, :4].int())
    with pytest.raises(ValueError, match="multiple of 8 outputs, got 20"):
        cpu_kernels.pack_int8(q[:20], panel)


@pytest.mark.parametrize("panel", [16, 8])
def test_pack_int4_round_trips_groups_larger_than_a_block(panel):
    q, scales, mins = int4_weights(56, 256, group=64)  # 16-row panels: three and one of 8
    packed = cpu_kernels.pack_int4(q, scales, mins, panel)
    assert packed.shape == (56, 256 // 32 * 20) and packed.dtype == torch.uint8
    first = packed.view(-1)[:4 * panel].view(panel, 4)  # first block: low nibbles inputs 0..3, high 16..19
    assert torch.equal(first & 0x0F, q[:panel, :4]) and torch.equal(first >> 4, q[:panel, 16:20])
    q2, d, m = cpu_kernels.unpack_int4(packed, 256, panel)
    assert torch.equal(q2, q)
    assert torch.equal(d[:, ::2], d[:, 1::2]) and torch.allclose(d[:, ::2], scales, rtol=1e-3)
    assert torch.allclose(m[:, 1::2], mins, rtol=1e-3, atol=1e-4)


# Stated tolerance of the int8 activations on one layer: max |y - y_dequantized| <= 3% of max |y|
# (random Gaussian inputs; measured ~1% for int4 and ~0.5% for int8 weights).
@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_layers_with_int8_activations_are_close_to_their_dequantized_weights(cls):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96, bias=True)
    layer = cls.from_linear(linear, int8_activations=True)
    assert layer.int8_activations and "int8 activations" in repr(layer)
    reference = dequantized_linear(layer)
    with torch.no_grad():
        for rows in (1, 3, 40):
            x = torch.randn(rows, 2, 128)
            want = reference(x)
            assert float((layer(x) - want).abs().max() / want.abs().max()) < 0.03


def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_swiglu_mlp_runs_its_pointwise_in_the_gate_up_kernel(bits, monkeypatch):
    model = tiny_model()
    quantize_model(model, bits)
    mlp = model.blocks[0].mlp
    assert fused_swiglu(mlp.gate_up)
    x = torch.randn(5, model.config.d_model, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        gate, up = mlp.gate_up(x).chunk(2, dim=-1)
        torch.testing.assert_close(mlp.gate_up.swiglu(x), torch.nn.functional.silu(gate) * up, rtol=1e-6, atol=1e-30)
        calls = []
        monkeypatch.setattr(mlp.gate_up, "forward", lambda x: calls.append(x))
        mlp(x)  # the fused kernel alone: the layer's forward (then the pointwise) is not called
        assert calls == []
    # a bias, or halves that are not whole panels: the layer says no, and the MLP runs forward + pointwise
    mlp.gate_up.bias = torch.zeros(mlp.gate_up.out_features)
    assert not fused_swiglu(mlp.gate_up) and mlp.gate_up.swiglu(x) is None
    mlp.gate_up.bias, mlp.gate_up.kernel_panel = None, 3 * mlp.gate_up.out_features
    assert not fused_swiglu(mlp.gate_up)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_checkpoint_saved_with_int8_activations_loads_to_the_same_model(tmp_path, bits):
    model = tiny_model()
    quantize_model(model, bits, lm_head_bits=bits)
    assert all(m.int8_activations for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear)))
    save_checkpoint(tmp_path, model)
    loaded = load_model(tmp_path, dtype=torch.float32)
    tokens = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_the_kernels_run_inside_a_compiled_graph():
    layer = Int4Linear.from_linear(torch.nn.Linear(64, 48), int8_activations=True)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(compiled(x), layer(x))



@pytest.mark.parametrize("quantized", [False, True])
def test_a_whole_model_forward_compiles_as_one_graph(quantized):
    # kernel_layers' check for llmkit.inspect's plain modules was a ContextVar read, which TorchDynamo
    # cannot trace: every layer of a compiled fp32 step broke the graph there (decode 21 against 31 tok/s)
    model = tiny_model().eval()
    if quantized:
        quantize_model(model, 4)
    compiled = torch.compile(model, fullgraph=True)
    tokens = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens), model(tokens), rtol=1e-4, atol=1e-4)

def recompute_through_cache(model, ids, dtype):
    """Logits of a whole sequence in one forward whose attention reads its keys and values back from a KV
    cache of `dtype` (as the engine's prefill does): for float32 the plain forward's bits."""
    from llmkit.infer.kv_cache import KVCache

    cache = KVCache(model.config, 1, ids.shape[1], torch.device("cpu"), dtype)
    cache.bind(0, 1)
    with torch.no_grad():
        return model(ids, positions=torch.arange(ids.shape[1])[None], kv_cache=cache)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float32", "int8"])
def test_engine_on_int8_activations_batched_equals_one_by_one_and_full_recompute(kv_cache_dtype):
    model = tiny_model()
    quantize_model(model, 4, lm_head_bits=8)
    engine = Engine(model, prefix_cache_mib=0, kv_cache_dtype=kv_cache_dtype)
    # the attention kernel reads a float16 cache as it is: "auto" halves the cache's bytes; int8 with scales
    dtype = {"auto": torch.float16, "float32": torch.float32, "int8": torch.int8}[kv_cache_dtype]
    assert engine.scheduler.dtype == dtype
    prompts = [[5, 17, 99, 3], [7, 8], [100, 200, 300, 400, 11, 12, 13]]
    # seeded sampling at temperature 1: varied tokens (a random tiny model's greedy text is one token)
    params = [SamplingParams(max_new_tokens=12, temperature=1.0, seed=s, logprobs=0) for s in (1, 2, 3)]
    alone = [Engine(model, prefix_cache_mib=0, kv_cache_dtype=kv_cache_dtype).complete(p, q)
             for p, q in zip(prompts, params)]
    batched = engine.generate_batch(prompts, params)
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert len(set(alone[0].token_ids)) > 3
    for prompt, completion in zip(prompts, alone):  # KV-cached decoding ~ recomputing the whole sequence
        ids = torch.tensor([prompt + completion.token_ids])
        logits = recompute_through_cache(model, ids, dtype)
        if dtype == torch.float32:
            with torch.no_grad():
                assert torch.equal(logits, model(ids))
        full = torch.log_softmax(logits[0, len(prompt) - 1:-1].float(), dim=-1)
        expected = full.gather(1, ids[0, len(prompt):, None])[:, 0]
        got = torch.tensor([entry.logprob for entry in completion.logprobs])
        # The same bits: with int8 activations a 1e-7 difference in attention can move a rounding by a whole
        # step (measured on SmolLM2: greedy tokens changed), so every path attends in one order (attention.cpp)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_a_compiled_engine_on_int8_activations_runs_its_step_ahead_of_time_and_equals_eager(kv_cache_dtype):
    """A compiled engine on the kernels runs its decode step as one AOTInductor program (ahead.py) built by
    `warm_up`: a batch (the cache grows to more rows) and then a lone request running past the cache's
    capacity (it grows longer) reuse it (no other program, no dynamo graph), and sample what the eager
    engine samples (seeded, temperature 1: varied tokens), with the default float16 cache and an int8 one
    (rounded inside the program)."""
    from torch._dynamo.utils import counters

    from llmkit.infer.compiled import ATTEND_STEP, warm_up
    from llmkit.infer.scheduler import CAPACITY_STEP

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", max_seq_len=CAPACITY_STEP + 64)).eval()
    quantize_model(model, 4, lm_head_bits=8)
    counters.clear()
    engine = Engine(model, compile=True, max_batch_size=4, prefix_cache_mib=0, kv_cache_dtype=kv_cache_dtype)
    assert engine.ahead is not None and not engine.ahead.built  # built on demand, not by the constructor
    warm_up(engine)
    runner, warm = engine.ahead.runner, engine.scheduler.cache
    # (two rows where a lone request's tokens run in one parallel region instead: token_step.py)
    rows = 2 if engine.token_step() is not None else 1
    assert runner is not None and (warm.batch_size, warm.max_len) == (rows, CAPACITY_STEP)
    prompts = [[5, 17, 99, 3], [7, 8], [100, 200, 300, 400, 11, 12, 13]]
    params = [SamplingParams(max_new_tokens=ATTEND_STEP + 10, temperature=1.0, seed=s) for s in (1, 2, 3)]
    lone = SamplingParams(max_new_tokens=CAPACITY_STEP + 10, temperature=1.0, seed=4)

    def run(each):
        return [c.token_ids for c in each.generate_batch(prompts, params)] + [each.complete(prompts[0], lone).token_ids]

    compiled = run(engine)
    grown = engine.scheduler.cache
    assert grown.batch_size > warm.batch_size and grown.max_len > warm.max_len  # one program, other shapes
    assert engine.ahead.runner is runner and counters["stats"]["unique_graphs"] == 0
    assert compiled == run(Engine(model, max_batch_size=4, prefix_cache_mib=0, kv_cache_dtype=kv_cache_dtype))
    assert len(set(compiled[0])) > 3


def test_an_ahead_of_time_step_runs_the_first_rows_and_other_rows_run_eagerly():
    """The program takes the cache's rows from 0 (the engine's decode steps, a speculated request alone);
    `Engine.decode` of requests in later rows runs the model eagerly, with the same logits, and the
    program refuses such a binding itself with an error that says why."""
    from llmkit.errors import GenerationError

    model = tiny_model()
    quantize_model(model, 8)
    engine, eager = (Engine(model, compile=compiled, max_batch_size=2, prefix_cache_mib=0) for compiled in (True, False))
    params = SamplingParams(max_new_tokens=4, temperature=0)
    logits = []
    for each in (engine, eager):
        requests = [each.submit(prompt, params) for prompt in ([5, 17, 99, 3], [7, 8, 9])]
        each.step()
        with each.stepping():
            logits.append((each.decode(requests[1:]), each.decode(requests[:1])))
    assert engine.ahead.built
    assert torch.equal(logits[0][0], logits[1][0]) and torch.equal(logits[0][1], logits[1][1])
    cache = engine.scheduler.cache
    cache.bind(1, 2, 8)
    with pytest.raises(GenerationError, match=r"runs the cache's first rows with no padding; this one is bound to rows \(1, 2\)"):
        engine.ahead(torch.tensor([[1]]), torch.tensor([[7]]), cache)


def test_a_built_decode_program_is_cached_between_engines_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch, caplog):
    """The program is kept in inductor's cache directory under a key of what the build depends on, not of
    the weights (they are handed over at load): a second engine, here on a model of the same shape with
    other weights, loads it instead of compiling, and decodes its own model's tokens; a damaged package is
    built again."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=1)  # sampled: each model's tokens differ

    def decoded(seed):
        torch.manual_seed(0)
        model = Transformer(ModelConfig.preset("tiny")).eval()
        with torch.no_grad():  # weights of its own
            for weight in model.parameters():
                weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
        quantize_model(model, 8)
        engine = Engine(model, compile=True, max_batch_size=2, prefix_cache_mib=0)
        # two requests: a lone one's tokens run in one parallel region, not the program (token_step.py)
        prompts = [[5, 17, 99, 3], [7, 8, 9, 10]]
        tokens = [c.token_ids for c in engine.generate_batch(prompts, [params, params])]
        eager = Engine(model, max_batch_size=2, prefix_cache_mib=0).generate_batch(prompts, [params, params])
        assert engine.ahead.built and tokens == [c.token_ids for c in eager]
        return tokens, engine.ahead.build_seconds

    first, built_in = decoded(0)
    packages = list((tmp_path / "llmkit-decode").glob("*.pt2"))
    assert len(packages) == 1 and not list((tmp_path / "llmkit-decode").glob("building-*"))
    # the program calls the kernels' C functions, not the proxy executor, and inductor's kernels run serially
    with zipfile.ZipFile(packages[0]) as package:
        code = {name.rsplit(".", 2)[-2]: package.read(name).decode() for name in package.namelist()
                if name.endswith((".wrapper.cpp", ".kernel.cpp"))}
    assert all(f"aoti_torch_cpu_{name}(" in code["wrapper"]
               for name in ("llama_pre_attention", "attention", "llama_post_attention"))
    assert "call_function" not in code["wrapper"] and "#pragma omp" not in code["kernel"]
    other, loaded_in = decoded(1)
    assert other != first and loaded_in < built_in / 2 and list((tmp_path / "llmkit-decode").glob("*.pt2")) == packages
    packages[0].write_bytes(b"not a package")
    assert decoded(0)[0] == first
    assert "rebuilding the cached decode program" in caplog.text and packages[0].stat().st_size > 1000


def test_the_kernels_c_functions_for_ahead_of_time_programs_equal_the_operators_and_report_bad_input():
    """What an AOTInductor program calls (kernels/aoti_shims.h), through the C declarations `c_shims` gives
    it: the operators' results for tensor handles, and an error code, not a crash, for a bad weight."""
    import ctypes

    assert cpu_kernels.isa() and cpu_kernels.c_shims()
    declared = {str(op).split(".")[1]: text for op, (text,) in cpu_kernels.c_shims().items()}
    assert set(declared) == set(cpu_kernels.C_SHIMS)
    capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    capsule_pointer.restype, capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    kept = []

    def handle(tensor):  # an AtenTensorHandle, as a program holds one
        kept.append(torch._C._aoti.unsafe_alloc_void_ptr_from_tensor(tensor))
        return ctypes.c_void_p(capsule_pointer(kept[-1], None))

    def call(name, *arguments):
        function = getattr(ctypes.CDLL(None), f"aoti_torch_cpu_{name}")  # found by name in the global scope
        function.restype = ctypes.c_int32
        out = ctypes.c_void_p()
        code = function(*arguments, ctypes.byref(out))
        return code, (torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr(new_capsule(out.value, None, None))
                      if code == 0 else None)

    torch.manual_seed(0)
    x, int8, scales = torch.randn(3, 64), cpu_kernels.pack_int8(torch.randint(-127, 128, (48, 64), dtype=torch.int8)), torch.rand(48)
    code, out = call("int8_linear", handle(x), handle(int8), handle(scales))
    assert code == 0 and torch.equal(out, cpu_kernels.int8_linear(x, int8, scales))
    assert call("int8_linear", handle(x), handle(torch.rand(48, 64)), handle(scales)) == (1, None)
    q, k, v = torch.randn(1, 4, 2, 16), torch.randn(1, 2, 9, 16).half(), torch.randn(1, 2, 9, 16).half()
    mask = torch.ones(1, 1, 2, 7, dtype=torch.bool)
    code, out = call("attention", handle(q), handle(k), handle(v), handle(mask), ctypes.c_double(0.25), None, None)
    assert code == 0 and torch.equal(out, cpu_kernels.attention(q, k, v, mask, 0.25))


def test_a_step_that_cannot_be_built_ahead_of_time_runs_under_torch_compile(monkeypatch, caplog):
    """A model export cannot trace (a mixture of experts routes by data: not even tried) or a build that fails
    for any other reason: the engine says so once in its log and decodes through torch.compile's step,
    with the eager engine's tokens."""
    from llmkit.infer.ahead import AheadOfTimeStep, ahead_of_time

    torch.manual_seed(0)
    experts = Transformer(ModelConfig.preset("tiny", n_experts=4, top_k=2)).eval()
    quantize_model(experts, 8)
    assert not ahead_of_time(experts) and Engine(experts, compile=True).ahead is None
    model = tiny_model()
    quantize_model(model, 8)

    def fails(self, cache):
        raise RuntimeError("no compiler today\nsecond line")

    monkeypatch.setattr(AheadOfTimeStep, "build", fails)
    engine = Engine(model, compile=True, max_batch_size=2, prefix_cache_mib=0)
    params = SamplingParams(max_new_tokens=12, temperature=0)
    prompts = [[5, 17, 99, 3], [7, 8]]
    got = [c.token_ids for c in engine.generate_batch(prompts, params)] + [engine.generate(prompts[0], params)]
    assert not engine.ahead.built and engine.ahead.compiled_instead is not None
    assert caplog.text.count("could not be compiled ahead of time (RuntimeError: no compiler today); using torch.compile") == 1
    eager = Engine(model, max_batch_size=2, prefix_cache_mib=0)
    assert got == [c.token_ids for c in eager.generate_batch(prompts, params)] + [eager.generate(prompts[0], params)]
