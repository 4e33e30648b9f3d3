"""Hugging Face T5 <-> llmkit: `T5ForConditionalGeneration` (the original T5 with ReLU, T5 v1.1 / Flan-T5
with gated GELU) as options of the one Transformer.

T5 (Raffel et al. 2020) is that Transformer with an encoder (`n_encoder_layers`) whose output each decoder
block cross-attends to, bucketed relative position biases (`pos_embedding: relative`, one table per stack,
held by layer 0 in Hugging Face's files), unscaled attention (`scaled_attention: false`), RMSNorm without
biases anywhere, and one token embedding shared by encoder, decoder and (when tied) the output head, whose
input is then scaled by d_model^-0.5 (`scale_head_input`). transformers 5 keeps that scaling as its own
config key (`scale_decoder_outputs`); older files say it with `tie_word_embeddings`.
"""

from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.convert.hf_tensors import HFTensors
from llmkit.errors import ConfigError, ConversionError

T5_ARCHITECTURES = ("T5ForConditionalGeneration",)
# feed_forward_proj -> llmkit's mlp ("gated-gelu" is the tanh GELU, transformers' gelu_new)
FEED_FORWARD = {"relu": "relu", "gelu": "gelu", "gated-gelu": "geglu", "gated-silu": "swiglu"}
SIZES = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
OPTIONAL_SIZES = ("num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance",
                  "n_positions")


def is_t5_config(hf: dict) -> bool:
    return isinstance(hf, dict) and hf.get("model_type") == "t5"


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def config_from_t5(hf: dict, hf_state: dict[str, torch.Tensor], source: str) -> ModelConfig:
    """The ModelConfig of a Hugging Face T5 config.json (the tensors say whether the head is tied)."""
    architectures = hf.get("architectures") or ["T5ForConditionalGeneration"]
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    if arch not in T5_ARCHITECTURES:
        raise ConversionError(f"{source}: architecture {arch!r} is not supported; llmkit imports the T5 "
                              f"architecture {', '.join(T5_ARCHITECTURES)}")
    for key in SIZES + OPTIONAL_SIZES:
        if (key in SIZES or hf.get(key) is not None) and not _positive_int(hf.get(key)):
            raise ConversionError(f"{source}: {key} must be a positive integer, not {hf.get(key)!r}")
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARD:
        raise ConversionError(f"{source}: feed_forward_proj {projection!r} is not supported; llmkit imports T5 with "
                              f"{', '.join(FEED_FORWARD)}")
    if hf.get("is_encoder_decoder") is False:
        raise ConversionError(f"{source}: is_encoder_decoder false is not supported; llmkit imports T5 as an "
                              "encoder-decoder")
    for key in ("tie_word_embeddings", "scale_decoder_outputs"):
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            raise ConversionError(f"{source}: {key} must be true or false, not {hf[key]!r}")
    scale = hf.get("scale_decoder_outputs")
    if scale is None:  # (transformers < 5: a tied T5 scales, an untied one, T5 v1.1, does not)
        scale = hf.get("tie_word_embeddings", True) is not False
    head, shared = hf_state.get("lm_head.weight"), hf_state.get("shared.weight")
    tied = head is None or (shared is not None and head.shape == shared.shape and torch.equal(head, shared))
    start = hf.get("decoder_start_token_id", hf.get("pad_token_id", 0))
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            n_encoder_layers=hf["num_layers"], d_model=hf["d_model"], n_heads=hf["num_heads"],
            head_dim=hf["d_kv"], d_ff=hf["d_ff"], max_seq_len=hf.get("n_positions") or 512,
            pos_embedding="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128), mlp=FEED_FORWARD[projection],
            norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6), tie_embeddings=tied,
            dropout=hf.get("dropout_rate", 0.1), init_std=hf.get("initializer_factor", 1.0) * hf["d_model"] ** -0.5,
            scaled_attention=False, scale_head_input=scale, decoder_start_token=start if start is not None else 0,
        )
    except (ConfigError, TypeError) as e:
        raise ConversionError(f"{source}: {e}") from None


def config_to_t5(cfg: ModelConfig) -> dict:
    """A Hugging Face T5 config.json of an llmkit encoder-decoder; what T5 cannot express is named."""
    needs = {"pos_embedding": "relative", "scaled_attention": False, "norm": "rmsnorm", "qkv_bias": False,
             "out_bias": False, "mlp_bias": False, "qk_norm": False, "n_experts": 0, "n_kv_heads": cfg.n_heads}
    wrong = [f"{key}={getattr(cfg, key)!r} (T5 needs {want!r})" for key, want in needs.items() if getattr(cfg, key) != want]
    projection = {mlp: proj for proj, mlp in FEED_FORWARD.items()}.get(cfg.mlp)
    if projection is None:
        wrong.append(f"mlp={cfg.mlp!r} (T5 has {', '.join(FEED_FORWARD.values())})")
    if cfg.scale_head_input and not cfg.tie_embeddings:
        wrong.append("scale_head_input with an untied head (T5 scales only a tied one)")
    if wrong:
        raise ConversionError("this encoder-decoder cannot be exported as Hugging Face T5: it has " + ", ".join(wrong))
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.d_ff,
        "num_layers": cfg.n_encoder_layers, "num_decoder_layers": cfg.n_layers, "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance, "feed_forward_proj": projection,
        "layer_norm_epsilon": cfg.norm_eps, "dropout_rate": cfg.dropout, "initializer_factor": 1.0,
        "n_positions": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.scale_head_input, "decoder_start_token_id": cfg.decoder_start_token,
        "pad_token_id": cfg.decoder_start_token, "use_cache": True, "torch_dtype": "float32",
    }


def _name_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(llmkit name, Hugging Face name) of every tensor but the fused q/k/v, k/v and gate/up matrices."""
    pairs = [("tok_emb.weight", "shared.weight"), ("encoder.norm.weight", "encoder.final_layer_norm.weight"),
             ("norm.weight", "decoder.final_layer_norm.weight"),
             ("encoder.rel_bias.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
             ("rel_bias.weight", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")]
    for stack, ours, layers in (("encoder", "encoder.blocks", cfg.n_encoder_layers), ("decoder", "blocks", cfg.n_layers)):
        mlp_layer = 1 if stack == "encoder" else 2
        for i in range(layers):
            p, q = f"{stack}.block.{i}.layer.", f"{ours}.{i}."
            pairs += [(q + "attn_norm.weight", p + "0.layer_norm.weight"), (q + "attn.out.weight", p + "0.SelfAttention.o.weight"),
                      (q + "mlp_norm.weight", f"{p}{mlp_layer}.layer_norm.weight"),
                      (q + "mlp.down.weight", f"{p}{mlp_layer}.DenseReluDense.wo.weight")]
            if stack == "decoder":
                pairs += [(q + "cross_norm.weight", p + "1.layer_norm.weight"),
                          (q + "cross_attn.q.weight", p + "1.EncDecAttention.q.weight"),
                          (q + "cross_attn.out.weight", p + "1.EncDecAttention.o.weight")]
    return pairs


def _fused_parts(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """(llmkit name, the Hugging Face tensors concatenated into it, in order)."""
    up = ["wi_0", "wi_1"] if cfg.mlp in ("geglu", "swiglu") else ["wi"]
    fused = []
    for stack, ours, layers in (("encoder", "encoder.blocks", cfg.n_encoder_layers), ("decoder", "blocks", cfg.n_layers)):
        mlp_layer = 1 if stack == "encoder" else 2
        for i in range(layers):
            p, q = f"{stack}.block.{i}.layer.", f"{ours}.{i}."
            fused.append((q + "attn.qkv.weight", [f"{p}0.SelfAttention.{x}.weight" for x in "qkv"]))
            fused.append((q + "mlp.gate_up.weight", [f"{p}{mlp_layer}.DenseReluDense.{x}.weight" for x in up]))
            if stack == "decoder":
                fused.append((q + "cross_attn.kv.weight", [f"{p}1.EncDecAttention.{x}.weight" for x in "kv"]))
    return fused


def state_from_t5(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    hf_state = HFTensors(hf_state, source, "llmkit imports T5ForConditionalGeneration")
    take = hf_state.take

    # copies of the shared embedding that some files carry, and a table transformers itself ignores
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                 "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"):
        hf_state.pop(name, None)
    out = {ours: take(theirs) for ours, theirs in _name_pairs(cfg)}
    for ours, parts in _fused_parts(cfg):
        out[ours] = torch.cat([take(name) for name in parts])
    head = hf_state.head("lm_head.weight", needed=not cfg.tie_embeddings)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = head
    hf_state.check_all_used()
    return out


def state_to_t5(model) -> dict[str, torch.Tensor]:
    cfg = model.config
    state = model.state_dict()
    out = {theirs: state[ours] for ours, theirs in _name_pairs(cfg)}
    for ours, parts in _fused_parts(cfg):
        for name, part in zip(parts, state[ours].chunk(len(parts))):
            out[name] = part
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    # clone: the fused matrices' parts are views of one storage, which safetensors refuses to save
    return {k: v.detach().cpu().clone() for k, v in out.items()}
