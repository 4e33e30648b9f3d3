"""Import, export and quantization against bad and unusual inputs: what transformers computes for the same
file (sliding windows, RoPE scaling inside GGUF, Qwen3 biases), and one clear error for what llmkit cannot
read (quantized or corrupt weights, broken shards, malformed GGUF tables) instead of a traceback or a model
that loads and computes something else."""

import json
import struct

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.checkpoint import load_model, save_checkpoint
from llmkit.config import ModelConfig
from llmkit.convert import convert, quantize_checkpoint
from llmkit.convert.gguf_file import read_gguf_file
from llmkit.errors import CheckpointError, ConversionError, OutputError
from llmkit.infer.quantize import QuantizationError, quantize_model
from llmkit.model import Transformer

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")

X = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(1))


def hf_model(kind="llama", **overrides):
    """A tiny random transformers model (norms near 1, every tensor random so a dropped one would show)."""
    fields = {**dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6), **overrides}
    config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                                 "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def hf_directory(tmp_path, tokenizer, model=None, name="hf"):
    src = tmp_path / name
    (model or hf_model()).save_pretrained(src)
    tokenizer.save(src)
    return src


def edit_config(src, **fields):
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, **fields}))


def edit_tensors(file, edit):
    state = load_file(file)
    edit(state)
    save_file(state, file, metadata={"format": "pt"})


# --- Hugging Face import ---------------------------------------------------------------------------------
def test_a_quantized_hf_model_is_refused_by_name(tmp_path, shakespeare_tokenizer):
    src = hf_directory(tmp_path, shakespeare_tokenizer)
    edit_config(src, quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(ConversionError, match=r"config.json: quantization_config \(gptq\) is not supported"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_qwen_sliding_window_caps_the_context_and_matches_transformers(tmp_path, shakespeare_tokenizer):
    # layer 1 of 2 attends to the last 8 tokens only: up to 8 tokens that is full attention, beyond it is not
    reference = hf_model("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    convert(hf_directory(tmp_path, shakespeare_tokenizer, reference), tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    assert model.config.max_seq_len == 8
    with torch.no_grad():
        assert torch.allclose(model(X), reference(X).logits, atol=1e-5, rtol=0)
    # the window set but not used (Qwen2.5's shipped configs): the whole context stays
    unused = hf_model("qwen2", use_sliding_window=False, sliding_window=8)
    convert(hf_directory(tmp_path, shakespeare_tokenizer, unused, "unused"), tmp_path / "unused-ours")
    assert load_model(tmp_path / "unused-ours").config.max_seq_len == 128


@pytest.mark.parametrize("rows", [(64, 32, 64), (48, 48, 32)])
def test_q_k_v_shapes_that_do_not_fit_the_heads_are_named(tmp_path, shakespeare_tokenizer, rows):
    """(64, 32, 64): torch.cat's traceback before; (48, 48, 32): the same 128 rows in all, which passed the
    fused matrix's shape check and split the heads wrongly."""
    src = hf_directory(tmp_path, shakespeare_tokenizer)

    def resize(state):
        for x, n in zip("qkv", rows):
            state[f"model.layers.1.self_attn.{x}_proj.weight"] = torch.zeros(n, 64)

    edit_tensors(src / "model.safetensors", resize)
    with pytest.raises(ConversionError, match=r"hf: tensor 'layers.1.self_attn.[qkv]_proj.weight' has shape "
                                              r"\(\d+, 64\) but the config implies \((64|32), 64\)"):
        convert(src, tmp_path / "out")


def test_gate_and_up_of_different_shapes_are_named(tmp_path, shakespeare_tokenizer):
    src = hf_directory(tmp_path, shakespeare_tokenizer)
    edit_tensors(src / "model.safetensors",
                 lambda state: state.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(96, 32)))
    with pytest.raises(ConversionError, match=r"tensor 'layers.0.mlp.up_proj.weight' has shape \(96, 32\) but "
                                              r"the config implies \(96, 64\)"):
        convert(src, tmp_path / "out")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(tmp_path, shakespeare_tokenizer, value):
    src = hf_directory(tmp_path, shakespeare_tokenizer)
    edit_tensors(src / "model.safetensors",
                 lambda state: state["model.layers.0.mlp.down_proj.weight"].__setitem__((3, 5), value))
    with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight' "
                                              r"holds NaN or infinite values"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weight_files_are_chosen_as_transformers_chooses_them(tmp_path, shakespeare_tokenizer):
    src = tmp_path / "hf"
    hf_model().save_pretrained(src, max_shard_size="100KB")
    shakespeare_tokenizer.save(src)
    shards = sorted(src.glob("model-*.safetensors"))
    assert len(shards) > 2 and (src / "model.safetensors.index.json").exists()
    convert(src, tmp_path / "ok")  # the sharded directory itself converts
    # a single file beside the shards: transformers loads model.safetensors, and so do we (which copy won
    # depended on the sort order; review: refusing it refused folders transformers loads)
    other = hf_model()
    with torch.no_grad():
        other.lm_head.weight.mul_(2)
    other.save_pretrained(tmp_path / "single")
    (tmp_path / "single" / "model.safetensors").rename(src / "model.safetensors")
    convert(src, tmp_path / "out")
    reference = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "out")(ids), reference(ids).logits, atol=1e-4)
    (src / "model.safetensors").unlink()
    shards[1].unlink()  # an interrupted download
    with pytest.raises(ConversionError, match=rf"index.json: lists shard '{shards[1].name}', which is not in"):
        convert(src, tmp_path / "out")


def test_a_zip_of_a_sharded_directory_converts(tmp_path, shakespeare_tokenizer):
    """Only model.safetensors was taken out of a zip: a sharded model's zip was "no *.safetensors files"."""
    import zipfile

    reference = hf_model()
    reference.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    shakespeare_tokenizer.save(tmp_path / "hf")
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as zf:
        for file in (tmp_path / "hf").iterdir():
            zf.write(file, f"model/{file.name}")
        zf.writestr("model/sub/model-00001-of-00009.safetensors", b"not taken: not beside config.json")
    convert(tmp_path / "model.zip", tmp_path / "ours")
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path / "ours")(X), reference(X).logits, atol=1e-5, rtol=0)
    # an error inside names the zip, not the temporary folder its files were copied to
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.write(tmp_path / "hf" / "config.json", "model/config.json")
    with pytest.raises(ConversionError, match=r"bad.zip/model: no \*.safetensors files"):
        convert(tmp_path / "bad.zip", tmp_path / "out")


# --- Hugging Face export ---------------------------------------------------------------------------------
def test_qwen3_with_attention_biases_exports_and_matches_transformers(tmp_path, shakespeare_tokenizer):
    reference = hf_model("qwen3", head_dim=32, attention_bias=True)
    convert(hf_directory(tmp_path, shakespeare_tokenizer, reference), tmp_path / "ours")
    convert(tmp_path / "ours", tmp_path / "back", to="hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    assert type(back) is transformers.Qwen3ForCausalLM
    with torch.no_grad():
        assert torch.allclose(back(X).logits, reference(X).logits, atol=1e-5, rtol=0)


def test_llama3_rope_with_llmkit_defaults_exports_a_file_transformers_loads(tmp_path):
    """llmkit's llama3 scaling may leave low/high_freq_factor at their defaults; written as it was, transformers
    5 refused the exported config (KeyError: missing required keys)."""
    torch.manual_seed(0)
    scaling = {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 16}  # 40 tokens: past the ramp
    model = Transformer(ModelConfig.preset("tiny", rope_scaling=scaling, rope_theta=5e5)).eval()
    save_checkpoint(tmp_path / "ckpt", model)
    convert(tmp_path / "ckpt", tmp_path / "hf", to="hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(back(x).logits, model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fields,message", [
    (dict(qkv_bias=True, mlp_bias=True), "mlp_bias with q/k/v biases only has no Hugging Face architecture"),
    (dict(qk_norm=True, mlp_bias=True), "mlp_bias with qk_norm has no Hugging Face architecture"),
    (dict(norm_position="post"), "norm_position='post' has no place in a Hugging Face Llama/Qwen config"),
    (dict(scaled_attention=False), "scaled_attention=False has no place"),
    (dict(head_bias=True), "head_bias=True has no place"),
])
def test_options_transformers_would_drop_are_refused_on_export(tmp_path, fields, message):
    """Written out, transformers loaded these files and computed something else (Qwen2 drops MLP biases)."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", Transformer(ModelConfig.preset("tiny", **fields)))
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path / "ckpt", tmp_path / "out", to="hf")
    assert not (tmp_path / "out").exists()


# --- GGUF --------------------------------------------------------------------------------------------------
def _llama_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    # convert_hf_to_gguf.py's q/k row order for the llama architecture
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_of(model, tokenizer, path, metadata=()):
    """The F32 GGUF of a transformers Llama, as convert_hf_to_gguf.py names and orders it, plus `metadata`."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    for key, value in metadata:
        (writer.add_string if isinstance(value, str) else writer.add_float32)(key, value)
    vocab = json.loads(tokenizer.backend.to_str())["model"]
    tokens = [t for t, _ in sorted(vocab["vocab"].items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in vocab["merges"]])
    writer.add_token_types([1] * len(tokens))
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        w = tensor.float().numpy()
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, suffix = rest.rsplit(".", 1)
            if module.endswith(("q_proj", "k_proj")):
                w = _llama_permute(w, cfg.num_attention_heads if module.endswith("q_proj") else cfg.num_key_value_heads)
            out = f"blk.{i}.{names[module]}.{suffix}"
        else:
            out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": "output.weight"}[name]
        writer.add_tensor(out, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("key", ["llama.rope.scaling.factor", "llama.rope.scale_linear"])
def test_gguf_linear_rope_scaling_matches_transformers(tmp_path, shakespeare_tokenizer, key):
    """llama.cpp reads the factor from either key (type: linear unless named); it was ignored before."""
    reference = hf_model(vocab_size=shakespeare_tokenizer.vocab_size,
                         rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    path = gguf_of(reference, shakespeare_tokenizer, tmp_path / "linear.gguf", [(key, 4.0)])
    convert(path, tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    x = torch.randint(0, shakespeare_tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("metadata,message", [
    ([("llama.rope.scaling.type", "yarn"), ("llama.rope.scaling.factor", 4.0)],
     r"RoPE scaling 'yarn' \(metadata llama.rope.scaling.type\) is not supported"),
    ([("llama.rope.dimension_count", 8.0)], r"llama.rope.dimension_count is 8.0 but heads have 16 dimensions"),
])
def test_gguf_rope_variants_llmkit_lacks_are_refused_by_name(tmp_path, shakespeare_tokenizer, metadata, message):
    path = gguf_of(hf_model(vocab_size=shakespeare_tokenizer.vocab_size), shakespeare_tokenizer,
                   tmp_path / "m.gguf", metadata)
    with pytest.raises(ConversionError, match=message):
        convert(path, tmp_path / "out")


def test_gguf_non_finite_weights_are_refused(tmp_path, shakespeare_tokenizer):
    model = hf_model(vocab_size=shakespeare_tokenizer.vocab_size)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    path = gguf_of(model, shakespeare_tokenizer, tmp_path / "nan.gguf")
    with pytest.raises(ConversionError, match=r"nan.gguf: tensor 'blk.1.ffn_up.weight' holds NaN or infinite"):
        convert(path, tmp_path / "out")


def _small_gguf(path, alignment=None):
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    for name in ("aaaa.weight", "bbbb.weight"):
        data = gguf.quants.quantize(np.ones((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _patched(raw: bytes, at: int, fmt: str, value) -> bytes:
    return raw[:at] + struct.pack(fmt, value) + raw[at + struct.calcsize(fmt):]


def test_malformed_gguf_tensor_tables_are_one_clear_error(tmp_path):
    raw = _small_gguf(tmp_path / "ok.gguf")
    assert [t.shape for t in read_gguf_file(tmp_path / "ok.gguf").tensors] == [(64, 2), (64, 2)]
    entry = raw.index(b"aaaa.weight") + len(b"aaaa.weight")  # then: u32 dims, u64 x dims, u32 type, u64 offset
    cases = {
        "zero dimension": (_patched(raw, entry + 4, "<Q", 0), "1 to 4 dimensions of at least 1"),
        "partial block": (_patched(raw, entry + 4, "<Q", 33), "rows of 33 values, not a multiple of its Q8_0 blocks"),
        "wrapping shape": (_patched(_patched(raw, entry + 4, "<Q", 1 << 63), entry + 12, "<Q", 2),
                           "not a multiple of its Q8_0 blocks|runs past the end"),
        "misaligned": (_patched(raw, entry + 24, "<Q", 4), "starts at offset 4, not a multiple of the alignment 32"),
        "duplicate": (raw.replace(b"bbbb.weight", b"aaaa.weight"), "tensor 'aaaa.weight' appears twice"),
    }
    for what, (data, message) in cases.items():
        (tmp_path / "bad.gguf").write_bytes(data)
        with pytest.raises(ConversionError, match=f"bad.gguf: not a readable GGUF file .*({message})"):
            read_gguf_file(tmp_path / "bad.gguf")
    for alignment in (0, 3):
        _small_gguf(tmp_path / "bad.gguf", alignment)
        with pytest.raises(ConversionError, match=f"general.alignment must be a power of two, not {alignment}"):
            read_gguf_file(tmp_path / "bad.gguf")


# --- quantization ------------------------------------------------------------------------------------------
def test_quantizing_refuses_before_touching_the_model():
    """A NaN weight became finite garbage (int8 of NaN); an int4 shape refused midway left the first
    layers already swapped in the caller's model."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    with torch.no_grad():
        model.blocks[1].mlp.down.weight[2, 3] = float("nan")
    with pytest.raises(QuantizationError, match=r"layer 'blocks.1.mlp.down' has NaN or infinite weights"):
        quantize_model(model, 8)
    odd = Transformer(ModelConfig.preset("tiny", vocab_size=520)).eval()  # a head of 520 rows: not int4's 16s
    with pytest.raises(QuantizationError, match="layer 'lm_head': the int4 kernel needs a multiple of 16 outputs, "
                                                "not 520"):
        quantize_model(odd, 4, lm_head_bits=4)
    assert all(type(m) is torch.nn.Linear for m in (model.blocks[0].attn.qkv, odd.blocks[0].attn.qkv))
    assert not getattr(odd, "quantization", None)
    # the message names the layer, and a fix that exists (no int4 group size divides 48)
    narrow = Transformer(ModelConfig.preset("tiny", d_model=48, n_heads=4, n_kv_heads=2)).eval()
    with pytest.raises(QuantizationError, match=r"layer 'blocks.0.attn.qkv': a Linear with 48 inputs cannot be split "
                                                r"into int4 groups of 32; no int4 group size divides it: use --bits 8"):
        quantize_model(narrow, 4)


# --- convert's output ----------------------------------------------------------------------------------------
def test_converting_over_its_own_source_is_refused_and_the_source_kept(tmp_path, shakespeare_tokenizer):
    """--overwrite replaced the Hugging Face directory with its own conversion (and a .gguf inside --out was
    deleted with it): the only copy of the model read was gone."""
    src = hf_directory(tmp_path, shakespeare_tokenizer)
    before = sorted(p.name for p in src.iterdir())
    with pytest.raises(OutputError, match=r"hf: holds the model being converted"):
        convert(src, src, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before
    convert(src, tmp_path / "ours")
    with pytest.raises(OutputError, match=r"ours: holds the model being converted"):
        convert(tmp_path / "ours", tmp_path / "ours", to="hf", overwrite=True)
    assert load_model(tmp_path / "ours").config.vocab_size == 512


def test_quantizing_into_a_folder_that_holds_the_source_is_refused(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "runs" / "fp32", Transformer(ModelConfig.preset("tiny")))
    with pytest.raises(OutputError, match=r"runs: holds the model being quantized"):
        quantize_checkpoint(tmp_path / "runs" / "fp32", tmp_path / "runs", 8, overwrite=True)
    assert load_model(tmp_path / "runs" / "fp32").config.vocab_size == 512


def test_float16_refuses_weights_beyond_its_range(tmp_path, shakespeare_tokenizer):
    model = hf_model()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = 1e5  # finite in float32 and bfloat16, inf in float16
    src = hf_directory(tmp_path, shakespeare_tokenizer, model)
    with pytest.raises(ConversionError, match=r"tensor 'blocks.0.mlp.gate_up.weight' holds values beyond "
                                              r"float16's range .*use --dtype bfloat16"):
        convert(src, tmp_path / "out", dtype=torch.float16)
    assert not (tmp_path / "out").exists()
    convert(src, tmp_path / "out", dtype=torch.bfloat16)
    assert bool(torch.isfinite(load_model(tmp_path / "out").blocks[0].mlp.gate_up.weight).all())


@pytest.mark.parametrize("edit,message", [  # float qweight, int8 head read as uint8, NaN scale
    (lambda s: s.__setitem__("blocks.0.attn.qkv.qweight", s["blocks.0.attn.qkv.qweight"].float()),
     r"tensor 'blocks.0.attn.qkv.qweight' holds float32 values; an int4 layer stores uint8"),
    (lambda s: s.__setitem__("lm_head.qweight", s["lm_head.qweight"].view(torch.uint8)),
     r"tensor 'lm_head.qweight' holds uint8 values; an int8 layer stores int8"),
    (lambda s: s["blocks.1.mlp.down.scales"].__setitem__((0, 0), float("nan")),
     r"tensor 'blocks.1.mlp.down.scales' must hold finite floating-point values"),
])
def test_a_corrupt_quantized_checkpoint_is_refused_by_tensor(tmp_path, edit, message):
    """A float qweight was a NotImplementedError traceback; uint8 read as int8 and NaN scales loaded silently."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    quantize_model(model, 4)  # int4 blocks, int8 head
    save_checkpoint(tmp_path, model)
    edit_tensors(tmp_path / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=f"model.safetensors: .*{message}"):  # the file and the tensor
        load_model(tmp_path)


def test_gguf_rope_factor_zero_scales_nothing_as_in_llama_cpp():
    """Review: a factor of 0 fell back to the older rope.scale_linear key; llama.cpp reads that key only
    when rope.scaling.factor is absent."""
    from pathlib import Path as P

    from llmkit.convert.gguf import _rope_scaling

    class Reader:
        def __init__(self, values):
            self.values = values

        def get(self, key, default=None):
            return self.values.get(key, default)

    both = {"llama.rope.scaling.factor": 0.0, "llama.rope.scale_linear": 2.0}
    assert _rope_scaling(Reader(both), "llama", P("m.gguf")) is None
    assert _rope_scaling(Reader({"llama.rope.scale_linear": 2.0}), "llama", P("m.gguf"))["factor"] == 2.0
    # an attention factor, which llama.cpp applies to RoPE, is refused by name rather than ignored
    assert _rope_scaling(Reader({"llama.rope.scaling.attn_factor": 1.0}), "llama", P("m.gguf")) is None
    with pytest.raises(ConversionError, match="attn_factor 0.5 is not supported"):
        _rope_scaling(Reader({"llama.rope.scaling.attn_factor": 0.5, "llama.rope.scale_linear": 2.0}), "llama",
                      P("m.gguf"))
