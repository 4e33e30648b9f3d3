"""Import GGUF files (llama.cpp's format).

`gguf_file.py` reads the header and tensor table; the `gguf` package dequantizes every ggml tensor type
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_x, the K-quants Q2_K..Q6_K, ...) to float32 with numpy. We map GGUF names and metadata to Hugging Face
ones and reuse the Hugging Face importer, so the Llama mapping exists once. Tokenizers of the "gpt2"
kind (byte-level BPE: SmolLM, Llama 3, Qwen2) are rebuilt for the `tokenizers` library with the
pre-tokenizer that llama.cpp uses for the file's `tokenizer.ggml.pre`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.config import ModelConfig
from llmkit.convert.gguf_file import GGUFFile, read_gguf_file
from llmkit.convert.hf import config_from_hf, state_from_hf
from llmkit.convert.hf_tensors import check_finite
from llmkit.errors import ConversionError
from llmkit.tokenizer import Tokenizer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF tensor names (llama.cpp `gguf-py/gguf/tensor_mapping.py`) -> Hugging Face names.
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer regexes of llama.cpp (`llama-vocab.cpp`) for the byte-level BPE vocabularies we import.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


def config_from_gguf(reader: GGUFFile, path: Path) -> tuple[ModelConfig, str]:
    arch = reader.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{path}: GGUF architecture {arch!r} is not supported; llmkit imports "
                              f"{', '.join(ARCHITECTURES)} (Mistral files use 'llama')")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ConversionError(f"{path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 long context) are not "
                              "supported from GGUF; convert the Hugging Face directory instead")
    tokens = reader.get("tokenizer.ggml.tokens", [])
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    keys = {  # Hugging Face config key -> (GGUF metadata key, default)
        "vocab_size": (f"{arch}.vocab_size", len(tokens) if isinstance(tokens, list) else None),
        "num_hidden_layers": (f"{arch}.block_count", None),
        "hidden_size": (f"{arch}.embedding_length", None),
        "num_attention_heads": (f"{arch}.attention.head_count", None),
        "num_key_value_heads": (f"{arch}.attention.head_count_kv", None),  # None: num_attention_heads
        "head_dim": (f"{arch}.attention.key_length", None),  # None: hidden_size / num_attention_heads
        "intermediate_size": (f"{arch}.feed_forward_length", None),
        "max_position_embeddings": (f"{arch}.context_length", 2048),
        "rope_theta": (f"{arch}.rope.freq_base", 10000.0),
        "rms_norm_eps": (f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
    }
    hf = {"architectures": [ARCHITECTURES[arch]], "tie_word_embeddings": not has_output, "attention_bias": False}
    hf.update({key: reader.get(name, default) for key, (name, default) in keys.items()})
    hf["rope_scaling"] = _rope_scaling(reader, arch, path)
    # config_from_hf checks every value's type (a string-typed or zero head count is one clear line),
    # naming the GGUF metadata keys
    names = {key: f"metadata {name}" for key, (name, _) in keys.items()}
    cfg = config_from_hf(hf, str(path), names)
    rotated = reader.get(f"{arch}.rope.dimension_count")
    if rotated is not None and rotated != cfg.head_dim:
        # llama.cpp rotates only the first `dimension_count` dimensions of each head; llmkit rotates all
        raise ConversionError(f"{path}: metadata {arch}.rope.dimension_count is {rotated!r} but heads have "
                              f"{cfg.head_dim} dimensions; partial rotary embeddings are not supported")
    return cfg, arch


def _rope_scaling(reader: GGUFFile, arch: str, path: Path) -> dict | None:
    """The RoPE scaling of a GGUF file as a Hugging Face rope_scaling, read as llama.cpp reads it
    (llama-model.cpp: `rope.scaling.factor`, else the older `rope.scale_linear`; the type defaults to
    linear, and "none" scales nothing). Ignoring these keys gave other logits than llama.cpp's."""
    kind = reader.get(f"{arch}.rope.scaling.type", "linear")
    attention = reader.get(f"{arch}.rope.scaling.attn_factor")
    if attention is not None and attention != 1:  # llama.cpp scales RoPE's cos/sin by it: ignored, other logits
        raise ConversionError(f"{path}: metadata {arch}.rope.scaling.attn_factor {attention!r} is not supported "
                              "(llmkit's RoPE has no attention factor); convert the model from its Hugging Face "
                              "directory")
    factor = reader.get(f"{arch}.rope.scaling.factor")
    if factor is None:  # llama.cpp reads the older key only when the newer one is absent (0 then scales nothing)
        factor = reader.get(f"{arch}.rope.scale_linear")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0):
        raise ConversionError(f"{path}: metadata {arch}.rope.scaling.factor must be a positive number, not {factor!r}")
    if not isinstance(kind, str):
        raise ConversionError(f"{path}: metadata {arch}.rope.scaling.type must be a string, not {kind!r}")
    if kind == "none" or factor in (None, 0, 1):
        return None
    if kind != "linear":
        raise ConversionError(f"{path}: RoPE scaling {kind!r} (metadata {arch}.rope.scaling.type) is not supported "
                              "from GGUF; llmkit implements linear scaling here (and llama3 from a Hugging Face "
                              "directory)")
    return {"rope_type": "linear", "factor": float(factor)}


def _unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: convert_hf_to_gguf.py interleaves the two RoPE halves of
    each head for ggml's rope kernel; our RoPE (like Hugging Face's) rotates (i, i + d/2) pairs."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def dequantize_tensor(tensor, path: Path) -> torch.Tensor:
    import gguf

    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ConversionError(f"{path}: tensor {tensor.name!r} has ggml type {tensor.tensor_type.name}, which "
                              "cannot be dequantized; re-quantize the model to F16, Q8_0, Q4_K or Q6_K") from None
    shape = tuple(int(x) for x in reversed(tensor.shape))  # ggml lists dimensions innermost first
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer, dict]:
    """(config, llmkit state dict, tokenizer, generation config) of a GGUF file, weights in float32."""
    path = Path(path)
    reader = read_gguf_file(path)
    cfg, arch = config_from_gguf(reader, path)
    hf_state = {}
    for tensor in reader.tensors:
        stem, _, suffix = tensor.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{suffix}"
        elif stem in GLOBAL_NAMES:
            name = f"{GLOBAL_NAMES[stem]}.{suffix}"
        else:
            raise ConversionError(f"{path}: tensor {tensor.name!r} has no counterpart in the {arch} architecture")
        weight = dequantize_tensor(tensor, path)
        check_finite(tensor.name, weight, str(path))
        if arch == "llama" and parts[-1] in ("attn_q", "attn_k"):
            weight = _unpermute(weight, cfg.n_heads if parts[-1] == "attn_q" else cfg.n_kv_heads)
        hf_state[name] = weight
    state = state_from_hf(cfg, hf_state, str(path))
    tokenizer = tokenizer_from_gguf(reader, path)
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_token_ids}
    return cfg, state, tokenizer, generation


def read_gguf_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    return tokenizer_from_gguf(read_gguf_file(path, tensors=False), path)


def tokenizer_from_gguf(reader: GGUFFile, path: Path) -> Tokenizer:
    kind = reader.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConversionError(f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, "
                              "'gpt2'); for SentencePiece models convert the Hugging Face directory instead")
    tokens = reader.get("tokenizer.ggml.tokens")
    merges = reader.get("tokenizer.ggml.merges", [])
    token_types = reader.get("tokenizer.ggml.token_type", [1] * len(tokens) if isinstance(tokens, list) else None)
    for key, value, kind, what in [("tokens", tokens, str, "token texts"), ("merges", merges, str, "merge rules"),
                                   ("token_type", token_types, int, "token types")]:
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise ConversionError(f"{path}: metadata tokenizer.ggml.{key} must be a list of {what}, "
                                  f"not {type(value).__name__}{'' if not isinstance(value, list) else ' of other values'}")
    if len(token_types) != len(tokens):
        raise ConversionError(f"{path}: metadata tokenizer.ggml.token_type has {len(token_types)} entries for "
                              f"{len(tokens)} tokens")
    merges = [tuple(m.split(" ", 1)) for m in merges]
    pre = reader.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("smollm", "starcoder", "refact"):
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in ("llama-bpe", "llama3", "smaug-bpe"):
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"), byte_level])
    elif pre == "qwen2":
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"), byte_level])
    elif pre in ("default", "gpt-2", "gpt2"):
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ConversionError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: smollm, llama-bpe, "
                              "qwen2, gpt-2")
    try:
        backend = BackendTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                              ignore_merges=pre in ("llama-bpe", "llama3")))
    except Exception as e:  # the library's own errors for merges that do not fit the vocabulary
        raise ConversionError(f"{path}: the tokenizer's merges do not fit its tokens ({e})") from None
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, token_types)
                if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    backend.add_special_tokens(specials)

    def token(key):
        token_id = reader.get(key)
        if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int)):
            raise ConversionError(f"{path}: metadata {key} must be a token id, not {token_id!r}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    eot = token("tokenizer.ggml.eot_token_id")
    template = reader.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise ConversionError(f"{path}: metadata tokenizer.chat_template must be a string, not {type(template).__name__}")
    return Tokenizer(backend, bos_token=token("tokenizer.ggml.bos_token_id"), eos_token=token("tokenizer.ggml.eos_token_id"),
                     pad_token=token("tokenizer.ggml.padding_token_id"),
                     chat_template=template, extra_stop_tokens=[eot] if eot else [])
