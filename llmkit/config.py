"""Model configuration: one dataclass that describes every architecture llmkit runs.

Configs are data: presets are YAML files in `llmkit/presets/models/`, checkpoints carry the same fields
in `config.json`, and any field can be overridden with `key=value` strings from the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError
from llmkit.yaml_config import build_dataclass, check_ranges, load_preset, merged, parse_overrides


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
    # "rope" (Su et al. 2021), "learned" absolute position embeddings (GPT-2) or "relative": T5's bucketed
    # relative position bias added to the attention scores (Raffel et al. 2020, section 2.1)
    pos_embedding: str = "rope"
    rope_theta: float = 10000.0
    # Optional RoPE frequency scaling, e.g. Llama 3.1's {"type": "llama3", "factor": 8.0, ...}.
    rope_scaling: dict | None = None
    # "swiglu" (Shazeer 2020), "geglu" (GELU-gated, tanh GELU: T5 v1.1's "gated-gelu"), "gelu" (exact, erf),
    # "gelu_tanh" (the tanh approximation GPT-2 used) or "relu" (the original T5)
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
    # -- encoder (BERT, Devlin et al. 2019): all off for a decoder, which then runs exactly as without them
    causal: bool = True  # false: bidirectional attention (an encoder); generation is refused, `fill`/`embed` serve it
    # "pre": x + f(norm(x)) (GPT-2) with a final norm; "post": norm(x + f(x)) (Vaswani et al. 2017, BERT), no final norm
    norm_position: str = "pre"
    type_vocab_size: int = 0  # token-type (segment) embeddings added to the input (BERT: 2); 0 = none
    embedding_norm: bool = False  # a norm over the summed input embeddings (BERT's embeddings.LayerNorm)
    # false: no output head (a sentence encoder such as BertModel: hidden states only; fill is refused)
    lm_head: bool = True
    head_transform: bool = False  # dense + activation + norm before the output head (BERT's MLM head)
    head_bias: bool = False  # a bias on the output head's logits (BERT's MLM decoder bias)
    cls_pooler: bool = False  # BERT's pooler: tanh(dense(first token's state)); kept for classifiers and export
    # -- encoder-decoder (T5, Raffel et al. 2020): off for the others, whose forward then runs exactly as without it
    # > 0: an encoder of that many bidirectional pre-norm blocks (+ final norm) reads the source; the `n_layers`
    # blocks are the decoder, each with a cross-attention sublayer over the encoder's output
    n_encoder_layers: int = 0
    relative_buckets: int = 32  # pos_embedding "relative": buckets of the relative position bias (T5: 32)
    relative_max_distance: int = 128  # ... distances beyond this share the last bucket (T5: 128)
    scaled_attention: bool = True  # false: softmax(QK^T) without 1/sqrt(head_dim) (T5 folds it into its init)
    scale_head_input: bool = False  # final states times d_model^-0.5 before the output head (T5 with tied embeddings)
    decoder_start_token: int = 0  # the decoder's first input token (T5: the pad token, 0)

    # The valid range of every numeric field (llmkit.yaml_config). Sizes stop at 2^31: a model file or an
    # override claiming more is a mistake, and how much memory a legal shape needs is checked separately.
    RANGES = {
        "vocab_size": "[1, 2^31)", "n_layers": "[1, 2^31)", "d_model": "[1, 2^31)", "n_heads": "[1, 2^31)",
        "n_kv_heads": "[1, 2^31)", "head_dim": "[1, 2^31)", "d_ff": "[1, 2^31)", "max_seq_len": "[1, 2^31)",
        "rope_theta": "(0, inf)", "norm_eps": "(0, 1)", "dropout": "[0, 1)", "n_experts": "[0, 2^16)",
        "top_k": "[1, 2^16)", "n_shared_experts": "[0, 2^16)", "moe_aux_loss_coef": "[0, inf)", "init_std": "[0, inf)",
        "type_vocab_size": "[0, 2^16)", "n_encoder_layers": "[0, 2^31)", "relative_buckets": "[4, 2^16)",
        "relative_max_distance": "[1, 2^31)", "decoder_start_token": "[0, 2^31)",
    }

    def __post_init__(self) -> None:
        check_ranges(self)
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
            (self.pos_embedding in ("rope", "learned", "relative"),
             f"pos_embedding must be 'rope', 'learned' or 'relative', not {self.pos_embedding!r}"),
            (self.mlp in MLP_KINDS, f"mlp must be one of {', '.join(MLP_KINDS)}, not {self.mlp!r}"),
            (self.norm in ("rmsnorm", "layernorm"), f"norm must be 'rmsnorm' or 'layernorm', not {self.norm!r}"),
            (self.norm_position in ("pre", "post"), f"norm_position must be 'pre' or 'post', not {self.norm_position!r}"),
            (self.lm_head or not (self.head_transform or self.head_bias),
             "head_transform and head_bias need an output head (lm_head: true)"),
            (self.pos_embedding != "rope" or self.head_dim % 2 == 0, "RoPE needs an even head_dim"),
            (not self.n_encoder_layers or (self.causal and self.norm_position == "pre" and self.lm_head
                                           and self.pos_embedding != "learned" and not self.type_vocab_size),
             "an encoder-decoder (n_encoder_layers > 0) is a causal, pre-norm decoder with an output head and "
             "relative or RoPE positions (no learned positions or token types)"),
            (self.relative_max_distance > self.relative_buckets // 2,
             f"relative_max_distance {self.relative_max_distance} must exceed half of relative_buckets "
             f"{self.relative_buckets} (the exact buckets; the rest grow logarithmically up to it)"),
            (self.decoder_start_token < self.vocab_size,
             f"decoder_start_token {self.decoder_start_token} is outside the vocabulary of {self.vocab_size}"),
            (self.n_experts == 0 or 1 <= self.top_k <= self.n_experts,
             f"top_k {self.top_k} must be between 1 and n_experts {self.n_experts}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_rope_scaling()

    def _check_rope_scaling(self) -> None:
        """The RoPE scalings the model implements (llmkit.rope.rope_inverse_frequencies), with the numbers
        each needs: a model file's other kind, or a factor given as text, stops here rather than mid-build."""
        scaling = self.rope_scaling
        if scaling is None:
            return
        if not isinstance(scaling, dict):
            raise ConfigError(f"rope_scaling must be a mapping such as {{type: linear, factor: 2.0}} or null, "
                              f"not {scaling!r}")
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            return
        if kind not in ("linear", "llama3"):
            raise ConfigError(f"rope_scaling type {kind!r} is not supported; llmkit implements 'linear' and 'llama3'")
        defaults = {"factor": None}
        if kind == "llama3":
            defaults.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
        for key, default in defaults.items():
            value = scaling.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"rope_scaling {kind}: {key} must be a positive number, not {value!r}")
        if kind == "llama3" and scaling.get("low_freq_factor", 1.0) == scaling.get("high_freq_factor", 4.0):
            raise ConfigError("rope_scaling llama3: low_freq_factor and high_freq_factor must differ")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        """A config from a mapping of fields (a config.json's, a preset's), each checked (llmkit.yaml_config)."""
        return build_dataclass(cls, data, source)

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
        data, path = load_preset("models", name, "model preset")
        return cls.from_dict(merged(data, path, overrides, "model overrides"), source=str(path))

    def num_params(self) -> int:
        """The parameters a Transformer of this config holds (tied weights once), by arithmetic alone: what a
        shape costs is known before anything is allocated (equal to Transformer.num_params(); tested)."""
        d, hd, ff = self.d_model, self.head_dim, self.d_ff
        norm = d * (2 if self.norm == "layernorm" else 1)

        def mlp(width: int) -> int:
            up = (2 if self.mlp in GATED_MLPS else 1) * width
            return d * up + width * d + (up + d if self.mlp_bias else 0)

        qkv = (self.n_heads + 2 * self.n_kv_heads) * hd
        attn = d * qkv + self.n_heads * hd * d + (qkv if self.qkv_bias else 0) + (d if self.out_bias else 0)
        attn += 2 * hd if self.qk_norm else 0
        if self.n_experts:
            feed_forward = d * self.n_experts + self.n_experts * mlp(ff)
            feed_forward += mlp(ff * self.n_shared_experts) if self.n_shared_experts else 0
        else:
            feed_forward = mlp(ff)
        total = self.vocab_size * d + (self.n_layers + self.n_encoder_layers) * (2 * norm + attn + feed_forward)
        if self.n_encoder_layers:  # the encoder's final norm; each decoder block's cross-attention and its norm
            cross = d * qkv + self.n_heads * hd * d + (qkv if self.qkv_bias else 0) + (d if self.out_bias else 0)
            total += norm + self.n_layers * (norm + cross)
        if self.pos_embedding == "relative":  # one bias table per stack (T5: layer 0 holds it, all layers use it)
            total += self.relative_buckets * self.n_heads * (2 if self.n_encoder_layers else 1)
        total += norm if self.norm_position == "pre" else 0  # post-norm blocks end normalised: no final norm
        total += self.max_seq_len * d if self.pos_embedding == "learned" else 0
        total += self.type_vocab_size * d + (norm if self.embedding_norm else 0)
        total += d * d + d if self.cls_pooler else 0
        if not self.lm_head:
            return total
        total += d * d + d + norm if self.head_transform else 0
        total += self.vocab_size if self.head_bias else 0
        return total + (0 if self.tie_embeddings else self.vocab_size * d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # model_type/architectures let tools that sniff config.json see what this checkpoint is.
        return json.dumps({"model_type": "llmkit", "architectures": ["LLMKitTransformer"], **self.to_dict()},
                          indent=2) + "\n"

    def with_overrides(self, pairs: list[str]) -> "ModelConfig":
        """Apply `field=value` strings (values parsed as YAML, so `rope_theta=1e5` is a float)."""
        return ModelConfig.from_dict(merged(self.to_dict(), "config", parse_overrides(pairs), "command line"),
                                     source="command line")


MLP_KINDS = ("swiglu", "geglu", "gelu", "gelu_tanh", "relu")
GATED_MLPS = ("swiglu", "geglu")  # a gate and an up projection, fused as one matrix (twice d_ff wide)
METADATA_KEYS = {"model_type", "architectures"}  # config.json keys written by to_json that are not fields
