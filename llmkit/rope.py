"""Rotary position embeddings (RoFormer, Su et al. 2021): the inverse frequencies with the long-context
scalings llmkit implements (Llama 3.1's, linear), the half-split rotation of GPT-NeoX and Hugging Face Llama,
and the check that a model file's context leaves the cos/sin tables (llmkit.model.Transformer builds them)
room in memory."""

from __future__ import annotations

import math

import torch

from llmkit.config import ModelConfig
from llmkit.device import physical_memory_bytes
from llmkit.errors import ConfigError


def rope_inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """theta^(-2i/d) for i < d/2 (RoFormer, Su et al. 2021, eq. 15), in float64 for exact tables."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        # Llama 3.1 long-context scaling: low frequencies divided by `factor`, high ones kept, a smooth
        # ramp between (Meta's reference implementation, `apply_scaling`).
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # The "half-split" RoPE layout of GPT-NeoX and Hugging Face Llama: pairs are (i, i + d/2).
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, seq, heads, head_dim); cos/sin: (batch or 1, seq, 1, head_dim)."""
    return x * cos + rotate_half(x) * sin


def check_rope_table_size(config: ModelConfig) -> None:
    """The RoPE tables hold max_seq_len x head_dim angles (built in float64, kept as float32 cos and sin:
    ~36 bytes each at the peak). A model file claiming an absurd context (max_seq_len: 1e8 would need
    ~200 GB) stops here with its figure rather than taking the machine's memory."""
    need = config.max_seq_len * config.head_dim * 36
    have = physical_memory_bytes()
    if need > have // 4:
        raise ConfigError(f"max_seq_len {config.max_seq_len:,} needs {need / 2**30:.1f} GiB of RoPE tables, more than "
                          f"a quarter of this machine's {have / 2**30:.0f} GiB; the model file is wrong, or set a "
                          "smaller max_seq_len")
