"""Hugging Face BERT <-> llmkit: `BertModel` (a sentence encoder, e.g. all-MiniLM-L6-v2) and
`BertForMaskedLM` (with its masked-LM head) as options of the one Transformer.

BERT (Devlin et al. 2019) is that Transformer with `causal: false` (bidirectional attention), post-norm
blocks, learned positions, token-type embeddings, a LayerNorm over the summed embeddings, biases
everywhere and GELU. The masked-LM head is `head_transform` (dense + GELU + LayerNorm) before the
output projection tied to the word embeddings, plus `head_bias`; a `BertModel` has no output head
(`lm_head: false`) and, where its file has one, the [CLS] pooler (`cls_pooler`).
"""

from __future__ import annotations

import torch

from llmkit.config import ModelConfig
from llmkit.convert.hf_tensors import HFTensors
from llmkit.errors import ConfigError, ConversionError

BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM")
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
SIZES = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")


def is_bert_config(hf: dict) -> bool:
    return isinstance(hf, dict) and hf.get("model_type") == "bert"


def config_from_bert(hf: dict, hf_state: dict[str, torch.Tensor], source: str) -> ModelConfig:
    """The ModelConfig of a Hugging Face BERT config.json (the tensors say whether a pooler is there)."""
    architectures = hf.get("architectures") or ["BertModel"]
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    if arch not in BERT_ARCHITECTURES:
        raise ConversionError(f"{source}: architecture {arch!r} is not supported; llmkit imports the BERT "
                              f"architectures {', '.join(BERT_ARCHITECTURES)}")
    for key in SIZES:
        value = hf.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConversionError(f"{source}: {key} must be a positive integer, not {value!r}")
    unsupported = [(key, hf.get(key)) for key, fine in [
        ("position_embedding_type", ("absolute", None)), ("is_decoder", (False, None)),
        ("add_cross_attention", (False, None))] if hf.get(key) not in fine]
    if hf.get("hidden_act", "gelu") not in ACTIVATIONS:
        unsupported.append(("hidden_act", hf.get("hidden_act")))
    if unsupported:
        key, value = unsupported[0]
        raise ConversionError(f"{source}: {key} {value!r} is not supported; llmkit imports BERT with absolute "
                              f"positions, hidden_act {'/'.join(ACTIVATIONS)}, as an encoder (not is_decoder)")
    masked_lm = arch == "BertForMaskedLM"
    prefix = "bert." if masked_lm else ""
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"], pos_embedding="learned",
            mlp=ACTIVATIONS[hf.get("hidden_act", "gelu")], norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            qkv_bias=True, out_bias=True, mlp_bias=True, dropout=hf.get("hidden_dropout_prob", 0.1),
            init_std=hf.get("initializer_range", 0.02), causal=False, norm_position="post",
            type_vocab_size=hf["type_vocab_size"], embedding_norm=True, lm_head=masked_lm,
            head_transform=masked_lm, head_bias=masked_lm,
            cls_pooler=f"{prefix}pooler.dense.weight" in hf_state,
        )
    except ConfigError as e:
        raise ConversionError(f"{source}: {e}") from None


def config_to_bert(cfg: ModelConfig) -> dict:
    """A Hugging Face BERT config.json of an llmkit encoder; what BERT cannot express is named."""
    needs = {"causal": False, "norm_position": "post", "pos_embedding": "learned", "norm": "layernorm",
             "qkv_bias": True, "out_bias": True, "mlp_bias": True, "embedding_norm": True, "qk_norm": False,
             "n_experts": 0, "n_kv_heads": cfg.n_heads, "head_dim": cfg.d_model // cfg.n_heads}
    if cfg.lm_head:
        needs.update(head_transform=True, head_bias=True)
    wrong = [f"{k}={getattr(cfg, k)}" for k, v in needs.items() if getattr(cfg, k) != v]
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        wrong.append(f"mlp={cfg.mlp}")
    if cfg.type_vocab_size < 1:
        wrong.append("type_vocab_size=0")
    if wrong:
        raise ConversionError("this encoder cannot be exported as Hugging Face BERT: it has " + ", ".join(wrong))
    return {
        "architectures": ["BertForMaskedLM" if cfg.lm_head else "BertModel"], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": "gelu" if cfg.mlp == "gelu" else "gelu_pytorch_tanh", "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "initializer_range": cfg.init_std, "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings, "is_decoder": False, "torch_dtype": "float32",
    }


# The per-layer names: (llmkit, Hugging Face) for weight and bias alike.
LAYER_NAMES = [("attn.out", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
               ("mlp.gate_up", "intermediate.dense"), ("mlp.down", "output.dense"), ("mlp_norm", "output.LayerNorm")]
TOP_NAMES = [("tok_emb.weight", "embeddings.word_embeddings.weight"),
             ("pos_emb.weight", "embeddings.position_embeddings.weight"),
             ("type_emb.weight", "embeddings.token_type_embeddings.weight"),
             ("emb_norm.weight", "embeddings.LayerNorm.weight"), ("emb_norm.bias", "embeddings.LayerNorm.bias")]
POOLER_NAMES = [("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias")]
HEAD_NAMES = [("head_transform.dense.weight", "cls.predictions.transform.dense.weight"),
              ("head_transform.dense.bias", "cls.predictions.transform.dense.bias"),
              ("head_transform.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
              ("head_transform.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
              ("lm_head.bias", "cls.predictions.bias")]


def _name_pairs(cfg: ModelConfig, prefix: str) -> list[tuple[str, str]]:
    """(llmkit name, Hugging Face name) of every tensor but the fused q/k/v and the head's weight."""
    pairs = [(ours, prefix + theirs) for ours, theirs in TOP_NAMES]
    for i in range(cfg.n_layers):
        for ours, theirs in LAYER_NAMES:
            for kind in ("weight", "bias"):
                pairs.append((f"blocks.{i}.{ours}.{kind}", f"{prefix}encoder.layer.{i}.{theirs}.{kind}"))
    if cfg.cls_pooler:
        pairs += [(ours, prefix + theirs) for ours, theirs in POOLER_NAMES]
    if cfg.lm_head:
        pairs += HEAD_NAMES
    return pairs


def state_from_bert(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    hf_state = HFTensors(hf_state, source, "llmkit imports BertModel and BertForMaskedLM")
    take = hf_state.take
    prefix = "bert." if cfg.lm_head else ""

    hf_state.pop(prefix + "embeddings.position_ids", None)  # a buffer of 0..n-1 that older files carry
    # The head's forward adds `decoder.bias` (transformers 5's BertLMPredictionHead): transformers < 5 made
    # it the same tensor as `cls.predictions.bias` (saved twice), transformers 5 ties the two only when the
    # embeddings are tied, so an untied file's `cls.predictions.bias` is an unused leftover. The decoder's
    # bias, where the file has one, is therefore the one the model computes with.
    if "cls.predictions.decoder.bias" in hf_state:
        hf_state["cls.predictions.bias"] = hf_state.pop("cls.predictions.decoder.bias")
    out = {ours: take(theirs) for ours, theirs in _name_pairs(cfg, prefix)}
    for i in range(cfg.n_layers):
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [take(f"{prefix}encoder.layer.{i}.attention.self.{x}.{kind}") for x in ("query", "key", "value")])
    decoder = hf_state.head("cls.predictions.decoder.weight", needed=cfg.lm_head and not cfg.tie_embeddings)
    if cfg.lm_head and not cfg.tie_embeddings:
        out["lm_head.weight"] = decoder
    hf_state.check_all_used()
    return out


def state_to_bert(model) -> dict[str, torch.Tensor]:
    cfg = model.config
    state = model.state_dict()
    prefix = "bert." if cfg.lm_head else ""
    out = {theirs: state[ours] for ours, theirs in _name_pairs(cfg, prefix)}
    for i in range(cfg.n_layers):
        for kind in ("weight", "bias"):
            parts = state[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)
            for x, part in zip(("query", "key", "value"), parts):
                out[f"{prefix}encoder.layer.{i}.attention.self.{x}.{kind}"] = part
    if cfg.lm_head and not cfg.tie_embeddings:
        out["cls.predictions.decoder.weight"] = state["lm_head.weight"]
        # transformers 5 leaves an untied head's decoder.bias untied from cls.predictions.bias: written
        # under both names, the bias is the model's whichever name a version of transformers reads
        out["cls.predictions.decoder.bias"] = state["lm_head.bias"]
    return {k: v.detach().cpu().clone() for k, v in out.items()}
