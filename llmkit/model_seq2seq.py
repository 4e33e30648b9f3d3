"""The encoder-decoder pieces of the one Transformer (T5, Raffel et al. 2020), used by llmkit/model.py
when `n_encoder_layers > 0` or `pos_embedding: relative`; a decoder-only model never builds them.

- `RelativePositionBias`: T5's bucketed relative position bias, one table per stack, computed once per
  forward and added to every layer's attention scores (as the attention mask SDPA adds).
- `EncoderStack`: the encoder's bidirectional blocks and final norm over a padded source.
- `CrossAttention`: a decoder block's attention over the encoder's output. Its keys and values depend
  on the source alone, so generation computes them once per request (`cross_keys_values`) and the KV
  cache keeps them beside the decoder's own (llmkit/infer/kv_cache.py); a full forward computes them
  from an `EncoderMemory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.config import ModelConfig


def gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out, 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) (Hendrycks & Gimpel
    2016), as T5's gated GELU is computed by Mesh TensorFlow and transformers (`gelu_new`): PyTorch's fused
    kernel differs in the last bits, which the gate and T5's unscaled head grow past 1e-5 in the logits."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def relative_position_buckets(relative: torch.Tensor, bidirectional: bool, n_buckets: int,
                              max_distance: int) -> torch.Tensor:
    """Bucket of each key-minus-query distance (T5, Raffel et al. 2020, section 2.1; Mesh TensorFlow's
    `_relative_position_bucket`): half the buckets are exact small distances, the other half grow
    logarithmically up to max_distance, beyond which all share the last. Bidirectional (the encoder):
    half the buckets for keys after the query; unidirectional (the decoder): later keys count as 0.
    The float operations keep the reference's order, so boundary distances land in the same bucket."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        distance = -torch.clamp(relative, max=0)
    exact = n_buckets // 2
    is_small = distance < exact
    # (distance 0 takes log(0) = -inf here, then the small branch)
    large = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact)
                     * (n_buckets - exact)).to(torch.long)
    large = torch.clamp(large, max=n_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A (buckets x heads) table of learned scalars, one per bucket and head."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.weight = nn.Parameter(torch.empty(cfg.relative_buckets, cfg.n_heads))

    def attention_mask(self, query_positions: torch.Tensor, key_positions: torch.Tensor,
                       allowed: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Float mask (batch or 1, heads, queries, keys) for SDPA: the bias, -inf where a key is not
        allowed. Positions: (batch or 1, n); allowed: boolean, broadcastable, or None: every key for the
        encoder, keys at or before the query for the decoder."""
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_buckets(relative, self.bidirectional, self.n_buckets, self.max_distance)
        bias = F.embedding(buckets, self.weight).permute(0, 3, 1, 2).to(dtype)
        if allowed is None and not self.bidirectional:
            allowed = (relative <= 0)[:, None]
        return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))


@dataclass
class EncoderMemory:
    """The encoder's output for a batch of sources: hidden (batch, source, d_model) after the final norm,
    mask (batch, source) True for real tokens. Cross-attention reads it; generation stores its keys and
    values in the KV cache instead (KVCache.store_cross)."""
    hidden: torch.Tensor
    mask: torch.Tensor

    def cross_keys_values(self, layer: int, attention: "CrossAttention"):
        k, v = attention.keys_values(self.hidden)
        return k, v, self.mask[:, None, None, :]


class EncoderStack(nn.Module):
    """Bidirectional blocks over the source, then the final norm (T5's encoder). The blocks are built
    by model.py (its pre-norm Block, non-causal); the token embedding is the model's, shared."""

    def __init__(self, cfg: ModelConfig, blocks: list[nn.Module], norm: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.rel_bias = RelativePositionBias(cfg, bidirectional=True) if cfg.pos_embedding == "relative" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope) -> torch.Tensor:
        """x: embedded source (batch, source, d_model); mask: (batch, source) bool; rope: the tables for
        positions 0..source-1, or None."""
        allowed = mask[:, None, None, :]
        if self.rel_bias is not None:
            positions = torch.arange(x.shape[1], device=x.device)[None]
            allowed = self.rel_bias.attention_mask(positions, positions, allowed, x.dtype)
        for block in self.blocks:
            x = block(x, rope, allowed, None)
        return self.norm(x)


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output, padding masked out; no
    position information (T5's cross-attention has no position bias)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
        self.scale = None if cfg.scaled_attention else 1.0
        self.dropout = cfg.dropout

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, kv_heads, source, head_dim) keys and values of the encoder's output."""
        batch, source, _ = memory.shape
        k, v = self.kv(memory).view(batch, source, 2, self.n_kv_heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, memory) -> torch.Tensor:
        """memory: an EncoderMemory, or the KV cache holding this layer's cross keys and values."""
        batch, seq, _ = x.shape
        k, v, mask = memory.cross_keys_values(self.layer_idx, self)
        q = self.q(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=self.scale,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out(y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))
