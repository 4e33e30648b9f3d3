"""Transformer behaviour on tiny configs: causality, GQA == repeated-KV MHA, RoPE relativity, MoE routing
and its auxiliary loss, parameter/FLOP accounting, the loss, and dtype handling of the RoPE tables."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig
from llmkit.model import CausalAttentionCPU, MoE, Transformer, gelu_tanh
from llmkit.rope import apply_rope

V = 97  # small vocab keeps every forward cheap

# Small architectures covering both families and MoE.
LLAMA = dict(vocab_size=V, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=64,
             pos_embedding="rope", mlp="swiglu", norm="rmsnorm")
GPT2 = dict(vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=64,
            pos_embedding="learned", mlp="gelu", norm="layernorm",
            qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True)
MOE = dict(LLAMA, n_kv_heads=4, n_experts=4, top_k=2, n_shared_experts=1)


def make_model(seed: int = 0, randomize: bool = True, **fields) -> Transformer:
    """A model whose every parameter (biases and norm weights too) is random, so no path is trivially
    zero or one; std 0.2 keeps activations well scaled at these widths."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**fields))
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.2)
    return model.eval()


def random_ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, seq), generator=g)


# --- causality ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [LLAMA, GPT2, MOE], ids=["rope-swiglu-rmsnorm", "learned-gelu-layernorm", "moe"])
def test_future_tokens_never_change_earlier_logits(fields):
    model = make_model(**fields)
    ids = random_ids(2, 24)
    with torch.no_grad():
        base = model(ids)
        for t in (0, 5, 23):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % V
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            # Not vacuous: the changed position itself (and everything after) does move.
            assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-4)


def test_logits_shape_and_dtype():
    model = make_model(**LLAMA)
    with torch.no_grad():
        logits = model(random_ids(3, 11))
    assert logits.shape == (3, 11, V)
    assert logits.dtype == torch.float32
    with torch.no_grad():
        last = model(random_ids(3, 11), last_token_only=True)
    torch.testing.assert_close(last, logits[:, -1:], rtol=1e-5, atol=1e-6)


def test_sequence_longer_than_max_seq_len_is_rejected():
    model = make_model(**LLAMA)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(random_ids(1, LLAMA["max_seq_len"] + 1))


# --- grouped-query attention ------------------------------------------------------------------------------
def mha_from_gqa(gqa: Transformer) -> Transformer:
    """An MHA model (n_kv_heads == n_heads) whose k/v heads are the GQA ones repeated per group: query
    head h reads kv head h // (n_heads // n_kv_heads), as SDPA's enable_gqa does."""
    cfg = gqa.config
    mha = Transformer(ModelConfig(**{**cfg.to_dict(), "n_kv_heads": cfg.n_heads})).eval()
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group = H // KV
    state = dict(gqa.state_dict())
    for i in range(cfg.n_layers):
        for kind in ("weight", "bias"):
            name = f"blocks.{i}.attn.qkv.{kind}"
            if name not in state:
                continue
            t = state[name]  # rows: [q (H*D); k (KV*D); v (KV*D)]
            q, k, v = t.split([H * D, KV * D, KV * D], dim=0)
            rest = k.shape[1:]
            k = k.reshape(KV, D, *rest).repeat_interleave(group, dim=0).reshape(H * D, *rest)
            v = v.reshape(KV, D, *rest).repeat_interleave(group, dim=0).reshape(H * D, *rest)
            state[name] = torch.cat([q, k, v], dim=0)
    mha.load_state_dict(state)
    return mha


@pytest.mark.parametrize("n_kv_heads,qkv_bias", [(2, False), (1, True), (2, True)], ids=["gqa", "mqa-bias", "gqa-bias"])
def test_gqa_equals_mha_with_repeated_kv_heads(n_kv_heads, qkv_bias):
    gqa = make_model(**{**LLAMA, "n_kv_heads": n_kv_heads, "qkv_bias": qkv_bias})
    mha = mha_from_gqa(gqa)
    assert mha.blocks[0].attn.n_kv_heads == mha.config.n_heads
    assert gqa.blocks[0].attn.qkv.weight.shape[0] < mha.blocks[0].attn.qkv.weight.shape[0]
    ids = random_ids(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), rtol=1e-5, atol=1e-5)


def test_gqa_head_mapping_is_grouped_not_interleaved():
    """Guard against the test above passing for the wrong reason: tiling kv heads (h % n_kv_heads)
    instead of grouping them (h // group) gives different logits."""
    gqa = make_model(**LLAMA)
    cfg = gqa.config
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    wrong = Transformer(ModelConfig(**{**cfg.to_dict(), "n_kv_heads": H})).eval()
    state = dict(gqa.state_dict())
    for i in range(cfg.n_layers):
        name = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[name].split([H * D, KV * D, KV * D], dim=0)
        k = k.reshape(KV, D, -1).repeat(H // KV, 1, 1).reshape(H * D, -1)
        v = v.reshape(KV, D, -1).repeat(H // KV, 1, 1).reshape(H * D, -1)
        state[name] = torch.cat([q, k, v])
    wrong.load_state_dict(state)
    ids = random_ids(2, 20)
    with torch.no_grad():
        assert not torch.allclose(gqa(ids), wrong(ids), atol=1e-4)


def test_mha_matches_explicit_attention():
    """The n_kv_heads == n_heads path (enable_gqa off) equals attention written out by hand."""
    model = make_model(**{**LLAMA, "n_kv_heads": 4, "n_layers": 1})
    attn = model.blocks[0].attn
    cfg = model.config
    x = torch.randn(2, 9, cfg.d_model)
    seq = x.shape[1]
    cos = model.rope_cos[:seq][None, :, None]
    sin = model.rope_sin[:seq][None, :, None]
    with torch.no_grad():
        got = attn(x, (cos, sin), None, None)
        q, k, v = attn.qkv(x).split(cfg.n_heads * cfg.head_dim, dim=-1)
        q, k, v = (t.view(2, seq, cfg.n_heads, cfg.head_dim) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, seq, -1)
        want = attn.out(y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- rotary position embedding ----------------------------------------------------------------------------
def rope_score(model: Transformer, q: torch.Tensor, k: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """q·k after rotating q to position m and k to position n; q, k: (head_dim,)."""
    def rotate(x, pos):
        cos = model.rope_cos[pos].view(1, 1, 1, -1).double()
        sin = model.rope_sin[pos].view(1, 1, 1, -1).double()
        return apply_rope(x.view(1, 1, 1, -1).double(), cos, sin).view(-1)
    return rotate(q, m) @ rotate(k, n)


def test_rope_scores_depend_only_on_relative_position():
    model = make_model(**{**LLAMA, "max_seq_len": 256}, randomize=False)
    D = model.config.head_dim
    assert model.rope_cos.shape == model.rope_sin.shape == (256, D)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
        for m, n in [(0, 0), (3, 7), (10, 2), (50, 49)]:
            base = rope_score(model, q, k, m, n)
            for shift in (1, 17, 150):
                torch.testing.assert_close(rope_score(model, q, k, m + shift, n + shift), base,
                                           rtol=1e-4, atol=1e-4)
            # A different offset gives a different score.
            assert not torch.isclose(rope_score(model, q, k, m, n + 1), base, rtol=1e-3, atol=1e-3)


def test_rope_is_a_rotation_and_identity_at_position_zero():
    model = make_model(**LLAMA, randomize=False)
    x = torch.randn(2, 5, 3, model.config.head_dim)
    pos = torch.tensor([0, 1, 9, 30, 63])
    cos, sin = model.rope_cos[pos][None, :, None], model.rope_sin[pos][None, :, None]
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, 0], x[:, 0])  # angle 0
    assert not torch.allclose(y[:, 1:], x[:, 1:], atol=1e-3)


def test_rope_model_logits_invariant_to_shifting_all_positions():
    """With RoPE only relative positions matter, so starting the sequence at position 13 changes nothing;
    with learned absolute positions it does."""
    ids = random_ids(2, 16)
    shifted = (torch.arange(16) + 13).unsqueeze(0)
    rope = make_model(**LLAMA)
    learned = make_model(**GPT2)
    with torch.no_grad():
        torch.testing.assert_close(rope(ids, positions=shifted), rope(ids), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(learned(ids, positions=shifted), learned(ids), atol=1e-3)


def test_learned_positions_default_slice_equals_explicit_lookup():
    """Default positions read the learned table as a slice (a batch-sum gradient, no scatter); explicit
    positions 0..seq-1 look the same rows up: loss and every gradient must agree."""
    ids, targets = random_ids(3, 12), random_ids(3, 12, seed=2)
    results = []
    for positions in (None, torch.arange(12).expand(3, 12)):
        model = make_model(**GPT2)
        model(ids, targets, positions=positions).backward()
        results.append({"loss": model(ids, targets).detach()} | {n: p.grad for n, p in model.named_parameters()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-6, atol=1e-7, msg=name)
    assert results[0]["pos_emb.weight"][:12].abs().sum() > 0 and not results[0]["pos_emb.weight"][12:].any()


def test_rope_tables_stay_float32_under_dtype_casts():
    model = make_model(**LLAMA, randomize=False)
    cos, sin = model.rope_cos.clone(), model.rope_sin.clone()
    assert cos.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.tok_emb.weight.dtype == torch.bfloat16
    assert model.rope_cos.dtype == torch.float32 and model.rope_sin.dtype == torch.float32
    torch.testing.assert_close(model.rope_cos, cos, rtol=0, atol=0)
    torch.testing.assert_close(model.rope_sin, sin, rtol=0, atol=0)
    model.half()
    assert model.rope_cos.dtype == torch.float32
    with torch.no_grad():
        assert model.to(torch.bfloat16)(random_ids(1, 8)).dtype == torch.bfloat16


# --- mixture of experts -----------------------------------------------------------------------------------
def test_moe_routes_each_token_to_exactly_top_k_distinct_experts():
    model = make_model(**MOE)
    chosen_per_layer = []

    def capture(module, inputs, output):
        chosen_per_layer.append(F.softmax(output.float(), dim=-1).topk(model.config.top_k, dim=-1).indices)

    hooks = [b.mlp.router.register_forward_hook(capture) for b in model.blocks]
    ids = random_ids(3, 10)
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    n_tokens, k, E = ids.numel(), model.config.top_k, model.config.n_experts
    assert len(chosen_per_layer) == model.config.n_layers
    for block, chosen in zip(model.blocks, chosen_per_layer):
        tpe = block.mlp.tokens_per_expert
        assert tpe.shape == (E,)
        assert int(tpe.sum()) == n_tokens * k
        assert torch.equal(tpe, torch.bincount(chosen.flatten(), minlength=E))
        # No token goes to the same expert twice.
        assert all(len(set(row.tolist())) == k for row in chosen)


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: sum over the top_k experts of renormalised prob * expert(x), plus shared experts."""
    flat = x.reshape(-1, x.shape[-1])
    out = []
    for token in flat:
        probs = F.softmax(moe.router(token), dim=-1)
        top = probs.topk(moe.top_k)
        w = top.values / top.values.sum()
        y = sum(wi * moe.experts[int(e)](token) for wi, e in zip(w, top.indices))
        if moe.shared is not None:
            y = y + moe.shared(token)
        out.append(y)
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("top_k,shared", [(2, 1), (1, 0), (4, 0)])
def test_moe_output_equals_token_by_token_reference(top_k, shared):
    model = make_model(**{**MOE, "top_k": top_k, "n_shared_experts": shared})
    moe = model.blocks[0].mlp
    x = torch.randn(2, 7, model.config.d_model)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), reference_moe(moe, x), rtol=1e-5, atol=1e-5)


def test_moe_aux_loss_is_one_for_uniform_router_and_larger_when_skewed():
    model = make_model(**MOE)
    moe = model.blocks[0].mlp
    x = torch.randn(4, 8, model.config.d_model)
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities
        moe(x)
        assert abs(float(moe.aux_loss) - 1.0) < 1e-5
        # Skewed: every token strongly prefers expert 0 (then 1).
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0
        moe.router.weight[1] = 0.5
        moe(x.abs() + 0.1)
        assert float(moe.aux_loss) > 1.0 + 1e-3
        assert moe.tokens_per_expert[0] == x.shape[0] * x.shape[1]
    # The loss is differentiable in the router weights (that is how it balances the load).
    moe.router.weight.data.normal_()
    moe(x)
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_loss_includes_moe_aux_loss_times_coefficient():
    model = make_model(**{**MOE, "moe_aux_loss_coef": 0.5})
    ids, targets = random_ids(2, 12, seed=1), random_ids(2, 12, seed=2)
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, targets)
        aux = model.moe_aux_loss()
    ce = F.cross_entropy(logits.view(-1, V), targets.view(-1))
    expected_aux = torch.stack([b.mlp.aux_loss for b in model.blocks]).mean()
    torch.testing.assert_close(aux, expected_aux)
    assert float(aux) > 1.0  # random router: some imbalance, so the term is visible
    torch.testing.assert_close(loss, ce + 0.5 * aux, rtol=1e-6, atol=1e-6)
    assert not torch.isclose(loss, ce, rtol=1e-4, atol=1e-4)


def test_dense_model_has_zero_aux_loss():
    model = make_model(**LLAMA)
    assert float(model.moe_aux_loss()) == 0.0


# --- accounting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,expected", [("gpt2-124m", 124_475_904), ("smollm2-135m", 134_515_008)])
def test_num_params_of_presets(preset, expected):
    with torch.device("meta"):
        model = Transformer(ModelConfig.preset(preset))
    assert model.num_params() == expected


def test_num_params_counts_tied_head_once_and_non_embedding():
    tied = make_model(**GPT2, randomize=False)
    untied = make_model(**{**GPT2, "tie_embeddings": False}, randomize=False)
    d = GPT2["d_model"]
    assert untied.num_params() - tied.num_params() == V * d
    assert tied.num_params(non_embedding=True) == tied.num_params() - V * d - GPT2["max_seq_len"] * d


def dense_matmul_params(c: dict) -> int:
    hd = c["d_model"] // c["n_heads"]
    kv = c.get("n_kv_heads") or c["n_heads"]
    attn = c["d_model"] * (c["n_heads"] + 2 * kv) * hd + c["n_heads"] * hd * c["d_model"]
    mlp_one = c["d_model"] * c["d_ff"] * (3 if c["mlp"] == "swiglu" else 2)
    return attn, mlp_one


@pytest.mark.parametrize("fields", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_flops_per_token_dense(fields):
    model = make_model(**fields, randomize=False)
    attn, mlp = dense_matmul_params(fields)
    n = fields["n_layers"] * (attn + mlp) + V * fields["d_model"]  # head counts even when tied
    T = 40
    expected = 6 * n + 12 * fields["n_layers"] * fields["n_heads"] * (fields["d_model"] // fields["n_heads"]) * T
    assert model.flops_per_token(T) == expected


def test_flops_per_token_moe_counts_only_active_experts():
    model = make_model(**MOE, randomize=False)
    c = MOE
    attn, mlp = dense_matmul_params(c)
    per_layer = attn + c["d_model"] * c["n_experts"] + c["top_k"] * mlp + c["n_shared_experts"] * mlp
    n = c["n_layers"] * per_layer + V * c["d_model"]
    T = 32
    assert model.flops_per_token(T) == 6 * n + 12 * c["n_layers"] * c["n_heads"] * (c["d_model"] // c["n_heads"]) * T
    # Fewer FLOPs than if every expert ran.
    assert model.flops_per_token(T) < 6 * model.num_params()


def test_flops_per_token_counts_frozen_weights_as_four_not_six():
    """LoRA's base weights need no gradient of their own: 4 FLOPs a weight a token, not 6 (a LoRA SFT run
    once showed MFU 113% from counting them as 6)."""
    from llmkit.train.peft import apply_lora, freeze
    model = make_model(**LLAMA, randomize=False)
    T = 40
    full = model.flops_per_token(T)
    attention = 12 * LLAMA["n_layers"] * LLAMA["n_heads"] * (LLAMA["d_model"] // LLAMA["n_heads"]) * T
    freeze(model)
    assert model.flops_per_token(T) - attention == pytest.approx((full - attention) * 4 / 6)
    apply_lora(model, rank=2)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert adapters > 0
    assert model.flops_per_token(T) - attention == pytest.approx((full - attention) * 4 / 6 + 6 * adapters)


# --- loss ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_loss_is_cross_entropy_of_logits(fields):
    model = make_model(**fields)
    ids, targets = random_ids(2, 10, seed=3), random_ids(2, 10, seed=4)
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, targets)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)),
                               rtol=1e-6, atol=1e-6)


def test_loss_ignores_minus_100_targets():
    model = make_model(**LLAMA)
    ids, targets = random_ids(2, 10, seed=3), random_ids(2, 10, seed=4)
    masked = targets.clone()
    masked[0, :4] = -100
    masked[1, 7:] = -100
    keep = masked != -100
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, masked)
    manual = -(logits.log_softmax(-1)[keep].gather(-1, targets[keep][:, None])).mean()
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-6)
    # Ignoring one more position changes the loss only by removing that term.
    other = masked.clone()
    other[1, 0] = -100
    keep2 = other != -100
    manual2 = -(logits.log_softmax(-1)[keep2].gather(-1, targets[keep2][:, None])).mean()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, other), manual2, rtol=1e-5, atol=1e-6)
    # And the ignored positions do matter when not ignored.
    with torch.no_grad():
        assert not torch.isclose(model(ids, targets), loss)


def test_loss_backward_reaches_every_parameter():
    model = make_model(**{**MOE, "top_k": MOE["n_experts"]}).train()  # every expert sees tokens
    loss = model(random_ids(2, 12, seed=5), random_ids(2, 12, seed=6))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# --- the compiled CPU training paths --------------------------------------------------------------------
def test_gelu_tanh_compiled_form_is_the_tanh_approximation(monkeypatch):
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    eager = gelu_tanh(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the sigmoid form inductor compiles
    torch.testing.assert_close(gelu_tanh(x), eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eager, F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    assert (eager - F.gelu(x)).abs().max() > 1e-4  # and it is not the erf GELU


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_attention_backward_matches_sdpa(dtype, tolerance):
    """The recomputing backward gives SDPA's gradients (checked against float64), eager here."""
    g = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(2, 3, 40, 16, generator=g) for _ in range(4))
    reference = [t.double().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*reference, is_causal=True).backward(grad_out.double())
    ours = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = CausalAttentionCPU.apply(*ours)
    out.backward(grad_out.to(dtype))
    expected = F.scaled_dot_product_attention(*(t.double() for t in (q, k, v)), is_causal=True)
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    for mine, ref in zip(ours, reference):
        error = (mine.grad.double() - ref.grad).norm() / ref.grad.norm()
        assert error < tolerance, error


@pytest.mark.slow
@pytest.mark.parametrize("fields,dtype", [(LLAMA, torch.float32), ({**GPT2, "mlp": "gelu_tanh"}, torch.bfloat16)],
                         ids=["llama-gqa-fp32", "gpt2-gelu_tanh-bf16-autocast"])
def test_compiled_cpu_training_step_matches_eager(fields, dtype):
    """torch.compile on CPU takes the recomputing attention backward (GQA heads repeated) and the
    sigmoid-form GELU; the loss and every gradient must equal the eager (SDPA, PyTorch GELU) step's:
    to float32 rounding, or under bf16 autocast to bf16's (~3 significant digits).

    Two of the four architecture x dtype pairs, each compile costing 12-20 s: every value of both axes
    is covered, and the grouped-query backward gets the tight float32 tolerance. The GELU forms
    themselves are compared eagerly to 1e-12 above."""
    eager, compiled = make_model(**fields).train(), make_model(**fields).train()
    ids, targets = random_ids(2, 48, seed=3), random_ids(2, 48, seed=4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with autocast:
        eager_loss = eager(ids, targets)
    eager_loss.backward()
    runner = torch.compile(compiled)
    with torch.profiler.profile() as prof:
        with autocast:
            loss = runner(ids, targets)
        loss.backward()
    names = {event.key for event in prof.key_averages()}
    assert not any("flash_attention_for_cpu_backward" in name for name in names), "SDPA's backward ran"
    # measured: fp32 loss 5e-7 apart, gradients 4e-7 (relative); bf16 loss 2e-5, gradients 7e-3
    loss_tolerance, grad_tolerance = (1e-5, 1e-5) if dtype == torch.float32 else (1e-3, 3e-2)
    torch.testing.assert_close(loss, eager_loss, rtol=loss_tolerance, atol=loss_tolerance)
    for (name, mine), ref in zip(compiled.named_parameters(), eager.parameters()):
        error = (mine.grad - ref.grad).norm() / ref.grad.norm()
        assert error < grad_tolerance, (name, error)
