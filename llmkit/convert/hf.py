"""Hugging Face <-> llmkit for the Llama family (Llama 2/3, SmolLM/SmolLM2, Mistral, Qwen2, Qwen3);
BERT encoders (llmkit/convert/bert.py) and T5 encoder-decoders (llmkit/convert/t5.py) are read and written
by their own modules, chosen here by the config's model_type.

Import: a directory with `config.json`, `*.safetensors` (one file or shards with an index) and
`tokenizer.json`. Export: the same layout, loadable by `transformers.AutoModelForCausalLM`.
The name mapping lives here once; the GGUF importer produces Hugging Face names and reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from llmkit.atomic import atomic_write_bytes, atomic_write_text
from llmkit.checkpoint import load_generation_config
from llmkit.config import ModelConfig
from llmkit.convert.bert import config_from_bert, config_to_bert, is_bert_config, state_from_bert, state_to_bert
from llmkit.convert.hf_tensors import HFTensors, check_finite
from llmkit.convert.t5 import config_from_t5, config_to_t5, is_t5_config, state_from_t5, state_to_t5
from llmkit.errors import ConfigError, ConversionError
from llmkit.model import Transformer
from llmkit.tokenizer import Tokenizer
from llmkit.yaml_config import load_json

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


# --- config --------------------------------------------------------------------------------------------
# The config.json keys we read, with what each must be: a model file is data from anywhere, and a string
# for a number, a list for a mapping or a zero head count must be one clear line, not a TypeError below.
HF_REQUIRED_SIZES = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
HF_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
HF_COUNTS = ("max_window_layers",)  # may be 0 (every layer slides)
HF_NUMBERS = ("rope_theta", "rms_norm_eps", "initializer_range")
HF_FLAGS = ("attention_bias", "tie_word_embeddings", "mlp_bias", "use_sliding_window")
HF_MAPPINGS = ("rope_scaling", "rope_parameters")


def check_hf_config(hf, source: str, names: dict[str, str] | None = None) -> None:
    """A ConversionError naming the first key of a Hugging Face config whose value has the wrong type
    (`names` maps keys to what the message calls them: the GGUF importer passes its metadata keys)."""
    names = names or {}
    if not isinstance(hf, dict):
        raise ConversionError(f"{source}: expected a JSON object of config fields, found {type(hf).__name__}")

    def fail(key: str, what: str) -> None:
        raise ConversionError(f"{source}: {names.get(key, key)} must be {what}, not {hf[key]!r}"
                              if hf.get(key) is not None else f"{source}: {names.get(key, key)} is missing")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for key in HF_REQUIRED_SIZES:
        if not is_int(hf.get(key)) or hf[key] <= 0:
            fail(key, "a positive integer")
    for key in HF_OPTIONAL_SIZES:
        if hf.get(key) is not None and (not is_int(hf[key]) or hf[key] <= 0):
            fail(key, "a positive integer")
    for key in HF_COUNTS:
        if hf.get(key) is not None and (not is_int(hf[key]) or hf[key] < 0):
            fail(key, "a non-negative integer")
    for key in HF_NUMBERS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            fail(key, "a number")
    for key in HF_FLAGS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            fail(key, "true or false")
    for key in HF_MAPPINGS:
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            fail(key, "an object")


def config_from_hf(hf: dict, source: str = "config.json", names: dict[str, str] | None = None) -> ModelConfig:
    if not isinstance(hf, dict):
        raise ConversionError(f"{source}: expected a JSON object of config fields, found {type(hf).__name__}")
    architectures = hf.get("architectures") or []
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(f"{source}: architecture {arch!r} is not supported; llmkit imports "
                              f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu/SwiGLU)")
    check_hf_config(hf, source, names)
    family = SUPPORTED_ARCHITECTURES[arch]
    if hf.get("quantization_config") is not None:
        # GPTQ / AWQ / bitsandbytes / FP8 files store packed integers and scales under the usual names (or
        # beside them): read as floating-point weights they would load and compute garbage
        method = hf["quantization_config"].get("quant_method") if isinstance(hf["quantization_config"], dict) else None
        raise ConversionError(f"{source}: quantization_config ({method or 'unknown method'}) is not supported; "
                              "convert the unquantized model, then quantize it with `llmkit quantize`")
    # transformers >= 5 nests RoPE settings in rope_parameters; older configs have rope_theta/rope_scaling.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    max_len = hf.get("max_position_embeddings") or 2048
    if _sliding_window(hf, family):
        # Mistral (and Qwen2/Qwen3 with use_sliding_window) attend to at most `sliding_window` past tokens;
        # up to that length full attention is exact, so we cap the context there rather than implement the window.
        max_len = min(max_len, hf["sliding_window"])
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ConversionError(f"{source}: rope_theta must be a number, not {theta!r}")
    attention_bias = bool(hf.get("attention_bias", False))
    n_heads = hf["num_attention_heads"]
    try:  # the ranges and combinations ModelConfig checks (heads dividing the width, rope_scaling's kind)
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            d_ff=hf["intermediate_size"],
            max_seq_len=max_len,
            pos_embedding="rope",
            rope_theta=float(theta),
            rope_scaling=scaling,
            mlp="swiglu",
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            qk_norm=family == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            out_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            init_std=hf.get("initializer_range", 0.02),
        )
    except ConfigError as e:
        raise ConversionError(f"{source}: {e}") from None


def _sliding_window(hf: dict, family: str) -> bool:
    """Whether any layer attends within `sliding_window` (transformers' rules: Mistral whenever the window is
    set; Qwen2/Qwen3 only with use_sliding_window, on the layers from max_window_layers on, or as
    `layer_types` lists them). Ignoring it gave other logits than transformers past the window."""
    if not hf.get("sliding_window"):
        return False
    if family == "mistral":
        return True
    if family not in ("qwen2", "qwen3") or not hf.get("use_sliding_window"):
        return False
    layer_types = hf.get("layer_types")
    if isinstance(layer_types, list):
        return "sliding_attention" in layer_types
    first = hf.get("max_window_layers")
    return (28 if first is None else first) < hf["num_hidden_layers"]  # transformers' default for both: 28


def _rope_scaling_to_hf(scaling: dict | None) -> dict | None:
    """llmkit's rope_scaling with every key transformers requires: llmkit's llama3 defaults
    (llmkit.rope.rope_inverse_frequencies) written out, since transformers 5 refuses to load a llama3
    scaling without low_freq_factor and high_freq_factor (a KeyError on the exported directory)."""
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    out = {"rope_type": kind, "factor": scaling["factor"]}
    if kind == "llama3":
        out.update(low_freq_factor=scaling.get("low_freq_factor", 1.0),
                   high_freq_factor=scaling.get("high_freq_factor", 4.0),
                   original_max_position_embeddings=scaling.get("original_max_position_embeddings", 8192))
    return out


def config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.pos_embedding != "rope" or cfg.mlp != "swiglu" or cfg.norm != "rmsnorm" or cfg.n_experts:
        raise ConversionError("only Llama-family models (RoPE, SwiGLU, RMSNorm, no MoE) can be exported to "
                              "Hugging Face; this config has "
                              f"pos_embedding={cfg.pos_embedding}, mlp={cfg.mlp}, norm={cfg.norm}, n_experts={cfg.n_experts}")
    # Options of llmkit's one Transformer that Llama/Qwen have no place for: written out anyway, transformers
    # would load the file and compute something else (a dropped bias, another norm order), so refuse by name.
    foreign = {"norm_position": cfg.norm_position != "pre", "embedding_norm": cfg.embedding_norm,
               "type_vocab_size": bool(cfg.type_vocab_size), "lm_head": not cfg.lm_head,
               "head_transform": cfg.head_transform, "head_bias": cfg.head_bias, "cls_pooler": cfg.cls_pooler,
               "scaled_attention": not cfg.scaled_attention, "scale_head_input": cfg.scale_head_input}
    for field, used in foreign.items():
        if used:
            raise ConversionError(f"{field}={getattr(cfg, field)!r} has no place in a Hugging Face Llama/Qwen "
                                  "config; this model cannot be exported to Hugging Face")
    if cfg.qk_norm:
        # Qwen3's attention_bias puts biases on q, k, v and o together
        arch, model_type = "Qwen3ForCausalLM", "qwen3"
        if cfg.qkv_bias != cfg.out_bias:
            raise ConversionError("qk_norm with biases on only some attention projections has no Hugging Face "
                                  "architecture to export to")
    elif cfg.qkv_bias and not cfg.out_bias:
        arch, model_type = "Qwen2ForCausalLM", "qwen2"
    elif cfg.qkv_bias != cfg.out_bias:
        raise ConversionError("out_bias without qkv_bias has no Hugging Face architecture to export to")
    else:
        arch, model_type = "LlamaForCausalLM", "llama"
    if cfg.mlp_bias and model_type != "llama":  # Qwen2/Qwen3 MLPs have no biases: transformers would drop them
        raise ConversionError(f"mlp_bias with {'qk_norm' if cfg.qk_norm else 'q/k/v biases only'} has no Hugging "
                              "Face architecture to export to (only Llama has mlp_bias)")
    hf = {
        "architectures": [arch], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "num_hidden_layers": cfg.n_layers, "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta, "rope_scaling": _rope_scaling_to_hf(cfg.rope_scaling),
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu", "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
    }
    if model_type == "llama":
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif model_type == "qwen3":
        hf.update(attention_bias=cfg.qkv_bias)
    return hf


# --- weights -------------------------------------------------------------------------------------------
def state_from_hf(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Hugging Face tensor names -> llmkit names (q/k/v and gate/up concatenated into fused matrices)."""
    hf_state = HFTensors({k.removeprefix("model."): v for k, v in hf_state.items()}, source)
    take = hf_state.take
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim

    def fused(names: list[str], rows: list[int | None]) -> torch.Tensor:
        """The parts concatenated into one matrix, each checked first: torch.cat of mismatched parts was a
        traceback, and q/k/v rows split otherwise than the heads say would pass the fused shape's check.
        rows None: any, as long as the parts agree (gate/up: d_ff is checked on the fused matrix)."""
        parts = [take(name) for name in names]
        bias = names[0].endswith(".bias")
        for name, part, n in zip(names, parts, rows):
            want = ((n,) if n is not None else tuple(parts[0].shape[:1])) + (() if bias else (cfg.d_model,))
            if tuple(part.shape) != want:
                raise ConversionError(f"{source}: tensor {name!r} has shape {tuple(part.shape)} but the config "
                                      f"implies {want}; the config and the weights come from different models")
        return torch.cat(parts)

    out = {"tok_emb.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"blocks.{i}."
        out[q + "attn_norm.weight"] = take(p + "input_layernorm.weight")
        out[q + "mlp_norm.weight"] = take(p + "post_attention_layernorm.weight")
        for suffix in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            out[q + "attn.qkv." + suffix] = fused([p + f"self_attn.{x}_proj.{suffix}" for x in "qkv"],
                                                  [q_rows, kv_rows, kv_rows])
        out[q + "attn.out.weight"] = take(p + "self_attn.o_proj.weight")
        if cfg.out_bias:
            out[q + "attn.out.bias"] = take(p + "self_attn.o_proj.bias")
        if cfg.qk_norm:
            out[q + "attn.q_norm.weight"] = take(p + "self_attn.q_norm.weight")
            out[q + "attn.k_norm.weight"] = take(p + "self_attn.k_norm.weight")
        out[q + "mlp.gate_up.weight"] = fused([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [None, None])
        out[q + "mlp.down.weight"] = take(p + "mlp.down_proj.weight")
        if cfg.mlp_bias:
            out[q + "mlp.gate_up.bias"] = fused([p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"], [None, None])
            out[q + "mlp.down.bias"] = take(p + "mlp.down_proj.bias")
    head = hf_state.head("lm_head.weight", needed=not cfg.tie_embeddings)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = head
    for name in [k for k in hf_state if k.endswith("rotary_emb.inv_freq")]:  # a buffer older files carry
        del hf_state[name]
    hf_state.check_all_used()
    return out


def state_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.config
    state = model.state_dict()
    q_size, kv_size = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["norm.weight"]}
    for i in range(cfg.n_layers):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[p + "input_layernorm.weight"] = state[q + "attn_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = state[q + "mlp_norm.weight"]
        for suffix in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for x, part in zip("qkv", state[q + "attn.qkv." + suffix].split([q_size, kv_size, kv_size])):
                out[p + f"self_attn.{x}_proj.{suffix}"] = part
        out[p + "self_attn.o_proj.weight"] = state[q + "attn.out.weight"]
        if cfg.out_bias:
            out[p + "self_attn.o_proj.bias"] = state[q + "attn.out.bias"]
        if cfg.qk_norm:
            out[p + "self_attn.q_norm.weight"] = state[q + "attn.q_norm.weight"]
            out[p + "self_attn.k_norm.weight"] = state[q + "attn.k_norm.weight"]
        for suffix in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            gate, up = state[q + "mlp.gate_up." + suffix].chunk(2)
            out[p + f"mlp.gate_proj.{suffix}"], out[p + f"mlp.up_proj.{suffix}"] = gate, up
            out[p + f"mlp.down_proj.{suffix}"] = state[q + "mlp.down." + suffix]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    # clone: the q/k/v and gate/up parts are views of one storage, which safetensors refuses to save
    return {k: v.detach().cpu().clone() for k, v in out.items()}


# --- directories ---------------------------------------------------------------------------------------
def read_hf_directory(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer, dict]:
    """(config, llmkit state dict, tokenizer, generation config) of a Hugging Face model directory."""
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{config_path}: missing; a Hugging Face model directory needs config.json, "
                              "*.safetensors and tokenizer.json")
    hf_config = load_json(config_path, ConversionError, expect=object)  # (config_from_hf names a non-object)
    # BERT's and T5's configs depend on their tensors (a pooler or not, a tied head or not): read below
    bert, t5 = is_bert_config(hf_config), is_t5_config(hf_config)
    cfg = None if bert or t5 else config_from_hf(hf_config, str(config_path))
    hf_state = read_safetensors_files(directory, weight_files(directory))
    if bert:
        cfg = config_from_bert(hf_config, hf_state, str(config_path))
        state = state_from_bert(cfg, hf_state, str(directory))
    elif t5:
        cfg = config_from_t5(hf_config, hf_state, str(config_path))
        state = state_from_t5(cfg, hf_state, str(directory))
    else:
        state = state_from_hf(cfg, hf_state, str(directory))
    if not (directory / "tokenizer.json").exists():
        raise ConversionError(f"{directory / 'tokenizer.json'}: missing; llmkit needs the fast-tokenizer file "
                              "(save it with transformers' `tokenizer.save_pretrained`)")
    tokenizer = Tokenizer.load(directory)
    generation = load_generation_config(directory, ConversionError)
    generation.setdefault("eos_token_id", tokenizer.stop_token_ids or hf_config.get("eos_token_id"))
    return cfg, state, tokenizer, generation


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files that hold a directory's weights, chosen as transformers chooses them:
    model.safetensors if present, else the shards its index lists (each checked present: an interrupted
    download is named before its tensors go missing), else every *.safetensors."""
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    index_path = directory / "model.safetensors.index.json"
    if index_path.exists():
        index = load_json(index_path, ConversionError, expect=object)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{index_path}: expected a \"weight_map\" object of tensor name -> shard file")
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard or not (directory / shard).is_file():
                raise ConversionError(f"{index_path}: lists shard {shard!r}, which is not in {directory}; "
                                      "download the model's missing files")
        return [directory / shard for shard in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are pickles and are "
                              "not loaded; convert them to safetensors first)")
    return files


def read_safetensors_files(directory: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of `files` (weight_files), each checked finite. A name in two of them is refused:
    which copy won would depend on the files' sort order."""
    hf_state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for file in files:
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as e:
            raise ConversionError(f"{file}: not a readable safetensors file ({e})") from None
        for name, tensor in tensors.items():
            if name in origin:
                raise ConversionError(f"{file}: tensor {name!r} is also in {origin[name].name}; the directory holds "
                                      "two copies of the weights (remove the stale file)")
            check_finite(name, tensor, str(file))
            origin[name] = file
        hf_state.update(tensors)
    return hf_state


def write_hf_directory(model: Transformer, tokenizer: Tokenizer | None, generation: dict, out: Path) -> Path:
    if model.config.n_encoder_layers:
        hf_config, state = config_to_t5(model.config), state_to_t5(model)
    elif not model.config.causal:
        hf_config, state = config_to_bert(model.config), state_to_bert(model)
    else:
        hf_config, state = config_to_hf(model.config), state_to_hf(model)
    out.mkdir(parents=True, exist_ok=True)
    hf_config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    if tokenizer is not None:
        hf_config["bos_token_id"], hf_config["eos_token_id"] = tokenizer.bos_id, tokenizer.eos_id
        tokenizer.save(out)
    atomic_write_bytes(out / "model.safetensors", save(state, metadata={"format": "pt"}))
    atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    if generation:
        atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return out
