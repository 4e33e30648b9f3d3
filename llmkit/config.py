"""Model configuration: one dataclass that describes every architecture llmkit runs.

Configs are data: presets are YAML files in `llmkit/presets/models/`, checkpoints carry the same fields
in `config.json`, and any field can be overridden with `key=value` strings from the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from llmkit.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets" / "models"


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    n_layers: int = 6
    d_model: int = 384
    n_heads: int = 6
    # Key/value heads: n_heads -> multi-head, 1 -> multi-query, in between -> grouped-query attention
    # (GQA, Ainslie et al. 2023). None means n_heads.
    n_kv_heads: int | None = None
    head_dim: int | None = None  # None means d_model // n_heads
    d_ff: int = 1536
    max_seq_len: int = 256
    # "rope" (Su et al. 2021) or "learned" absolute position embeddings (GPT-2).
    pos_embedding: str = "rope"
    rope_theta: float = 10000.0
    # Optional RoPE frequency scaling, e.g. Llama 3.1's {"type": "llama3", "factor": 8.0, ...}.
    rope_scaling: dict | None = None
    # "swiglu" (Shazeer 2020), "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation GPT-2 used)
    mlp: str = "swiglu"
    norm: str = "rmsnorm"  # "rmsnorm" (Zhang & Sennrich 2019) or "layernorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on queries and keys per head (Dehghani et al. 2023)
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v only
    out_bias: bool = False
    mlp_bias: bool = False
    dropout: float = 0.0
    # Mixture of Experts (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021). 0 = dense MLP.
    n_experts: int = 0
    top_k: int = 2
    n_shared_experts: int = 0  # always-on experts beside the routed ones (DeepSeekMoE, Dai et al. 2024)
    moe_aux_loss_coef: float = 0.01  # Switch Transformer's alpha
    init_std: float = 0.02  # GPT-2 / nanoGPT

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, not {value}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                                  "set head_dim explicitly or change one of them")
            self.head_dim = self.d_model // self.n_heads
        checks = [
            (self.n_heads % self.n_kv_heads == 0,
             f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}"),
            (self.pos_embedding in ("rope", "learned"), f"pos_embedding must be 'rope' or 'learned', not {self.pos_embedding!r}"),
            (self.mlp in ("swiglu", "gelu", "gelu_tanh"),
             f"mlp must be 'swiglu', 'gelu' or 'gelu_tanh', not {self.mlp!r}"),
            (self.norm in ("rmsnorm", "layernorm"), f"norm must be 'rmsnorm' or 'layernorm', not {self.norm!r}"),
            (self.pos_embedding != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head_dim"),
            (self.n_experts == 0 or 1 <= self.top_k <= self.n_experts,
             f"top_k {self.top_k} must be between 1 and n_experts {self.n_experts}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), not {self.dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {', '.join(unknown)}; "
                              f"known fields are: {', '.join(sorted(known))}")
        hints = get_type_hints(cls)
        for key, value in data.items():
            _check_type(key, value, hints[key], source)
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of config fields")
        data = {k: v for k, v in data.items() if k not in METADATA_KEYS}
        return cls.from_dict(data, source=str(path))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A shipped preset (`llmkit/presets/models/NAME.yaml`), with fields overridden."""
        path = PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(list_presets())}")
        data = yaml.safe_load(path.read_text()) or {}
        data.update(overrides)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # model_type/architectures let tools that sniff config.json see what this checkpoint is.
        return json.dumps({"model_type": "llmkit", "architectures": ["LLMKitTransformer"], **self.to_dict()},
                          indent=2) + "\n"

    def with_overrides(self, pairs: list[str]) -> "ModelConfig":
        """Apply `field=value` strings (values parsed as YAML, so `rope_theta=1e5` is a float)."""
        data = self.to_dict()
        data.update(parse_overrides(pairs, source="command line"))
        return ModelConfig.from_dict(data, source="command line")


METADATA_KEYS = {"model_type", "architectures"}  # config.json keys written by to_json that are not fields


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_overrides(pairs: list[str], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: override {pair!r} is not of the form field=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: override {pair!r}: the value is not valid YAML "
                              f"({str(e).splitlines()[0]}); quote it, e.g. {key}='\"...\"'") from None
        if isinstance(value, str):
            try:  # YAML 1.1 reads "5e-3" (no dot) as a string; a user means the number
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def _check_type(key: str, value: Any, hint: Any, source: str) -> None:
    """Reject values of the wrong type with the field's name (JSON has no tuples; ints pass as floats)."""
    allowed = getattr(hint, "__args__", None) or (hint,)
    allowed = tuple(getattr(a, "__origin__", a) for a in allowed)
    if value is None and type(None) in allowed:
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    elif float in allowed and isinstance(value, int):
        ok = True
    else:
        ok = isinstance(value, allowed)
    if not ok:
        names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
        raise ConfigError(f"{source}: field {key!r} must be {names}, not {value!r}")
