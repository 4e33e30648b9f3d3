"""A Llama-type decoder layer run as three of llmkit's CPU operators (kernels/llama_layer.cpp) when its linear
layers are on the int8-activation kernels: what `Block.forward` and the head of `Transformer.forward` call then.

Why: the batch-1 decode token in one parallel region (llmkit.infer.token_step) is only usable if it gives the
bits of the model's own forward -- a prefix-cache hit reuses keys and values a decode step wrote, and batched and
lone steps must agree. Its norms, RoPE and residual sums are C++, so the model's forward runs the same C++ for
every row it computes (prefill, batched decode, a full recompute, scoring): `llama_pre_attention` (RMSNorm, the
qkv layer, RoPE), then the KV-cache write and the attention operator as before, then `llama_post_attention` (the
output layer, the residual, RMSNorm, gate/up with SwiGLU, down, the residual), and `llama_final` (the last
RMSNorm and the head). A compiled step then makes 3 operator calls a layer and the cache write, where it made ~5
operator calls and ~4 small kernels (BENCHMARKS.md, twenty-fourth session).

Which layers: a pre-norm block with RMSNorm, RoPE without QK-norm, SwiGLU without experts, no biases, every
linear layer on the kernels (int8 or int4 weights), float32 activations without gradients, a boolean mask or none.
Anything else runs the plain modules, unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn

import llmkit.cpu_kernels as cpu_kernels

# Set by `plain_modules()`, for the calling thread alone (a server's engine thread keeps the operators)
_PLAIN = contextvars.ContextVar("llmkit_plain_modules", default=False)


@contextlib.contextmanager
def plain_modules():
    """Forwards inside run the plain modules, so that hooks on them fire (llmkit.inspect reads attention and
    the residual stream so); they round differently from the operators (not the engine's bits)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def _plain_requested() -> bool:
    """Whether this thread is inside `plain_modules()`. Only eager callers ask for it, and TorchDynamo
    cannot trace ContextVar.get: read in a compiled step, it broke the graph in every layer (SmolLM2 fp32
    compiled decode 21 tok/s against 31 eager on the AMX Xeon, 2026-12-07), so a compiled step never reads it."""
    return not torch.compiler.is_compiling() and _PLAIN.get()


def kernel_weights(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(packed weight, row scales) of an int8 layer or (packed weight, None) of an int4 layer on the kernels,
    without bias; None for any other layer."""
    if not getattr(linear, "int8_activations", False) or getattr(linear, "bias", None) is not None:
        return None
    if hasattr(linear, "qweight"):  # llmkit.infer.quantize.Int8Linear
        return linear.qweight, linear.scales.float()
    if hasattr(linear, "packed"):  # Int4Linear
        return linear.packed, None
    return None


def _rms_norm(norm: nn.Module) -> bool:
    return isinstance(norm, nn.RMSNorm) and norm.weight is not None


def norm_eps(norm: nn.RMSNorm) -> float:
    """The eps an nn.RMSNorm adds (its own, or float32's machine epsilon where it has none, as it uses then)."""
    return norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps


def block_runs_fused(block, attn_mask: torch.Tensor | None = None) -> bool:
    """Whether `block` (an llmkit.model.Block) is a Llama-type layer on the kernels (module docstring)."""
    attn, mlp = block.attn, block.mlp
    return (attn.use_rope and attn.q_norm is None and _rms_norm(block.attn_norm) and _rms_norm(block.mlp_norm)
            and getattr(mlp, "activation", None) == "swiglu" and not (block.training and (block.drop.p or attn.dropout))
            and (attn_mask is None or attn_mask.dtype == torch.bool)
            and all(kernel_weights(m) is not None for m in (attn.qkv, attn.out, mlp.gate_up, mlp.down)))


def _no_gradients(x: torch.Tensor, *norms: nn.Module) -> bool:
    """The operators have no backward: with gradients on, a forward that would need one (x, or a trainable
    norm) runs the plain modules in every layer alike."""
    return not torch.is_grad_enabled() or not (x.requires_grad or any(n.weight.requires_grad for n in norms))


def runs_fused(block, x: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not _plain_requested()
            and block_runs_fused(block, attn_mask) and _no_gradients(x, block.attn_norm, block.mlp_norm))


def attention_scale(attn) -> float:
    """The score scale of an llmkit.model.Attention: its own, or 1/sqrt(head_dim) (the graph's kernel call and
    TokenStep take it from here, so that both scale alike)."""
    return attn.head_dim ** -0.5 if attn.scale is None else attn.scale


def attention(attn, q, k, v, attn_mask, kv_cache) -> torch.Tensor:
    """llmkit's CPU attention kernel for an llmkit.model.Attention `attn`: q (batch, heads, seq, head_dim), k and v
    (batch, kv_heads, seq, head_dim) stored in the cache first (every slot of its rows returned, and an int8
    cache's scales); with no cache, every key or the causal triangle."""
    kv_scales = None
    if kv_cache is not None:
        k, v = kv_cache.update(attn.layer_idx, k, v, whole_rows=True)
        kv_scales = kv_cache.scales(attn.layer_idx)
    if attn_mask is None:
        seq = q.shape[2]
        attn_mask = torch.ones(seq, k.shape[2], dtype=torch.bool, device=q.device)
        attn_mask = (attn_mask.tril(k.shape[2] - seq) if attn.causal else attn_mask)[None, None]
    return cpu_kernels.attention(q, k, v, attn_mask, attention_scale(attn), *(kv_scales or ()))


def block_forward(block, x: torch.Tensor, rope, attn_mask, kv_cache) -> torch.Tensor:
    """Block.forward through the operators: x (batch, seq, d_model) -> the block's output."""
    attn, mlp = block.attn, block.mlp
    batch, seq, _ = x.shape
    heads, kv_heads, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    cos, sin = (t.expand(batch, seq, 1, hd) for t in rope)
    qkv = torch.ops.llmkit_cpu.llama_pre_attention(x, block.attn_norm.weight, norm_eps(block.attn_norm),
                                                   *kernel_weights(attn.qkv), cos, sin, heads, kv_heads)
    q, k, v = qkv.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    y = attention(attn, q.view(batch, seq, heads, hd).transpose(1, 2), k.view(batch, seq, kv_heads, hd).transpose(1, 2),
                  v.view(batch, seq, kv_heads, hd).transpose(1, 2), attn_mask, kv_cache)
    y = y.transpose(1, 2).reshape(batch, seq, heads * hd)
    return torch.ops.llmkit_cpu.llama_post_attention(x, y, *kernel_weights(attn.out), block.mlp_norm.weight,
                                                     norm_eps(block.mlp_norm), *kernel_weights(mlp.gate_up),
                                                     *kernel_weights(mlp.down))


def head_runs_fused(model) -> bool:
    """Whether the model's final norm and head run as `llama_final`: RMSNorm, a head on the kernels, nothing
    between them."""
    return (_rms_norm(model.norm) and model.lm_head is not None and model.head_transform is None
            and not model.config.scale_head_input and kernel_weights(model.lm_head) is not None)


def final_forward(model, x: torch.Tensor) -> torch.Tensor | None:
    """The logits of x (batch, seq, d_model) through `llama_final`, or None where the head does not run so."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or _plain_requested() or not head_runs_fused(model):
        return None
    if not _no_gradients(x, model.norm):
        return None
    return torch.ops.llmkit_cpu.llama_final(x, model.norm.weight, norm_eps(model.norm), *kernel_weights(model.lm_head))
