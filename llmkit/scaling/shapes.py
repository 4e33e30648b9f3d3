"""Model shapes for a sweep, and the parameter count N that scaling laws use here.

The rule for N (stated once, used by sweep, fit and predict): N counts the weights that take part in
matrix multiplies, exactly as `Transformer.flops_per_token` counts them: every Linear of the blocks and
the output head (a tied head too: it is still a matmul), but not the embedding lookup, norms or biases.
Compute is the Trainer's count, C = flops_per_token(seq_len) x D = (6N + 12 L H Q T) x D, so attention's
QK^T and AV products are included (PaLM, Chowdhery et al. 2022, app. B); for the small models a CPU can
sweep, that term is 5-25% of the total, which is why D is planned as C / flops_per_token rather than
C / 6N.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llmkit.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int

    @property
    def label(self) -> str:
        return f"L{self.n_layers}-d{self.d_model}"

    def overrides(self) -> dict[str, int]:
        """The model.FIELD values of this shape (multi-head attention: as many key/value heads as heads)."""
        return {"n_layers": self.n_layers, "d_model": self.d_model, "n_heads": self.n_heads,
                "n_kv_heads": self.n_heads, "d_ff": self.d_ff}


def heads_for(d_model: int, head_dim: int) -> int:
    """The number of heads nearest d_model / head_dim that divides d_model evenly (with an even head size)."""
    target = max(1, round(d_model / head_dim))
    for distance in range(d_model):
        for heads in (target - distance, target + distance):
            if 1 <= heads <= d_model and d_model % heads == 0 and (d_model // heads) % 2 == 0:
                return heads
    return 1


def swiglu_width(d_model: int) -> int:
    """8/3 d_model, rounded up to a multiple of 32: a SwiGLU MLP with the parameters of a 4d GELU one
    (Shazeer 2020; Llama's rule)."""
    return 32 * math.ceil(8 * d_model / 3 / 32)


def shape_for_depth(depth: int, width_per_layer: int = 64, head_dim: int = 64) -> Shape:
    """One knob, as in nanochat: d_model = width_per_layer x depth (a fixed aspect ratio), heads of about
    head_dim, a SwiGLU MLP of 8/3 d_model."""
    d_model = width_per_layer * depth
    return Shape(depth, d_model, heads_for(d_model, head_dim), swiglu_width(d_model))


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(item) for item in text.split(",")]  # (an empty item is a typo: float('') refuses it)
    except ValueError:
        raise ConfigError(f"--budgets {text!r}: give FLOP counts separated by commas, e.g. 1e12,3e12,1e13") from None
    if not budgets or any(not math.isfinite(b) or b <= 0 for b in budgets):
        raise ConfigError(f"--budgets {text!r}: give positive FLOP counts separated by commas, e.g. 1e12,3e12,1e13")
    return sorted(set(budgets))


def parse_sizes(sizes: str | None, depths: str | None, width_per_layer: int, head_dim: int) -> list[Shape]:
    """--sizes LAYERSxWIDTH[xHEADS],... or --depths D,... (the depth rule); one of them."""
    if bool(sizes) == bool(depths):
        raise ConfigError("give the model sizes either as --sizes LAYERSxWIDTH,... (e.g. 2x128,4x256) or as "
                          "--depths 1,2,3,... (d_model = --width-per-layer x depth), not both and not neither")
    if width_per_layer < 2 or head_dim < 2:
        raise ConfigError("--width-per-layer and --head-dim must be at least 2")
    shapes = []
    if depths:
        for item in depths.split(","):
            if not item.strip().isdigit() or int(item) < 1:
                raise ConfigError(f"--depths {depths!r}: {item!r} is not a positive whole number of layers")
            shapes.append(shape_for_depth(int(item), width_per_layer, head_dim))
    else:
        for item in sizes.split(","):
            match = re.fullmatch(r"\s*(\d+)x(\d+)(?:x(\d+))?\s*", item)
            if not match or int(match[1]) < 1 or int(match[2]) < 2:
                raise ConfigError(f"--sizes {sizes!r}: {item!r} is not LAYERSxWIDTH (e.g. 4x256) or "
                                  "LAYERSxWIDTHxHEADS")
            layers, width = int(match[1]), int(match[2])
            heads = int(match[3]) if match[3] else heads_for(width, head_dim)
            if heads < 1 or width % heads or (width // heads) % 2:
                raise ConfigError(f"--sizes: {item!r}: {heads} heads do not split width {width} into even head sizes")
            shapes.append(Shape(layers, width, heads, swiglu_width(width)))
    return sorted(set(shapes), key=lambda s: (s.n_layers * s.d_model**2, s.d_model))


def model_costs(model_config, seq_len: int) -> tuple[int, float, int]:
    """(N as above, training FLOPs per token, all parameters) of a config, built on the meta device:
    no memory is allocated, so any size is cheap to count."""
    import torch

    from llmkit.model import Transformer

    with torch.device("meta"):
        model = Transformer(model_config)
    per_token = model.flops_per_token(seq_len)
    cfg = model_config
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return round((per_token - attention) / 6), float(per_token), model.num_params()
