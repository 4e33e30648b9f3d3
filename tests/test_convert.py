"""Real-model import checked against an implementation nobody here wrote: Hugging Face transformers."""

import json
import re

import gguf
import numpy as np
import pytest
import torch

from conftest import run_cli
from llmkit.checkpoint import load_model, load_tokenizer
from llmkit.convert import convert, read_tokenizer
from llmkit.errors import ConversionError, TokenizerError
from llmkit.infer import Engine, SamplingParams
from llmkit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    return model.eval(), tokenizer


PROSE = ("The history of the Roman Empire spans more than a thousand years. In 27 BC, Augustus became the "
         "first emperor; by 117 AD the empire covered 5,000,000 square kilometres. Historians still debate "
         "why it fell: economic troubles, military defeats, and political instability all played a part.")


@pytest.mark.slow
def test_smollm2_logits_and_greedy_match_transformers(smollm2_dir, hf_smollm2):
    hf_model, _ = hf_smollm2
    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    ids = tokenizer.encode(PROSE)[:64]
    assert len(ids) == 64
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model(x), hf_model(x).logits
    assert ours.shape == theirs.shape == (1, 64, 49152)
    assert (ours - theirs).abs().max().item() <= 1e-3

    ours_greedy = Engine(model).generate(ids, SamplingParams(max_new_tokens=32, temperature=0))
    with torch.no_grad():
        hf_out = hf_model.generate(x, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours_greedy == hf_out[0, 64:].tolist()


def test_smollm2_tokenizer_and_chat_template_match_transformers(smollm2_dir, hf_smollm2):
    _, hf_tokenizer = hf_smollm2
    tokenizer = load_tokenizer(smollm2_dir)
    for text in [PROSE, "  leading spaces\n\n\ttabs and 12345 digits", "héllo wörld 日本語 🙂", "<|im_start|>user\nhi"]:
        assert tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False).input_ids, text
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}]
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    theirs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    assert tokenizer.decode(tokenizer.encode(ours)) == ours
    assert tokenizer.stop_token_ids == [2]  # <|im_end|> ends an assistant turn


def test_gguf_tokenizer_is_read_by_the_converter(smollm2_gguf, smollm2_dir):
    from_gguf, converted = read_tokenizer(smollm2_gguf), load_tokenizer(smollm2_dir)
    assert from_gguf.encode(PROSE) == converted.encode(PROSE)
    assert from_gguf.chat_template == converted.chat_template
    assert from_gguf.stop_token_ids == converted.stop_token_ids == [2]
    assert read_tokenizer(smollm2_dir).encode(PROSE) == converted.encode(PROSE)  # a directory: Tokenizer.load
    with pytest.raises(TokenizerError, match="a GGUF file, not a tokenizer.json.*llmkit convert"):
        Tokenizer.load(smollm2_gguf)
    result = run_cli("tokenize", "--tokenizer", smollm2_gguf, "In 1603")
    assert result.returncode == 0, result.stderr
    ids = [int(line.split()[0]) for line in result.stdout.splitlines()[:-1]]
    assert ids == converted.encode("In 1603") and result.stdout.splitlines()[-1] == f"{len(ids)} tokens"


def _tiny_hf_model(arch: str, tie: bool):
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie, rms_norm_eps=1e-6)
    if arch == "llama":
        config = transformers.LlamaConfig(rope_theta=5000.0, **common)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(rope_theta=5000.0, **common)
        model = transformers.Qwen2ForCausalLM(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # random norms and biases too, so a dropped tensor would show
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0.0))
    return model.eval()


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_hf_to_llmkit_to_hf_round_trip(tmp_path, shakespeare_tokenizer, arch, tie):
    hf_model = _tiny_hf_model(arch, tie)
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    shakespeare_tokenizer.save(src)
    convert(src, tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    assert load_tokenizer(tmp_path / "ours").encode("To be, or not") == shakespeare_tokenizer.encode("To be, or not")
    x = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf_model(x).logits
        assert torch.allclose(model(x), reference, atol=1e-5, rtol=0)
        convert(tmp_path / "ours", tmp_path / "back", to="hf")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
        assert type(back) is type(hf_model)
        assert torch.allclose(back(x).logits, reference, atol=1e-5, rtol=0)


def test_tensors_that_do_not_fit_their_own_config_are_named(tmp_path, shakespeare_tokenizer):
    src = tmp_path / "hf"
    _tiny_hf_model("llama", tie=False).save_pretrained(src)
    shakespeare_tokenizer.save(src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))  # the weights have 96
    with pytest.raises(ConversionError, match=r"tensor 'blocks.0.mlp.gate_up.weight' has shape \(192, 64\) but "
                                              r"the config read from .*hf implies \(256, 64\)"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- GGUF files written here, one tensor type per matrix ------------------------------------------------
GGUF_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]


def _random_kquant_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Random K-quant data (gguf-py cannot quantize K-types) with small, finite fp16 scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    scale = (rng.random((rows, cols // block_size, 1)) * 0.01).astype(np.float16).view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin at the start of the block
        blocks[..., 0:2], blocks[..., 2:4] = scale, scale
    else:  # Q6_K: d at the end
        blocks[..., -2:] = scale
    return blocks.reshape(rows, -1)


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    # what llama.cpp's convert_hf_to_gguf.py does to q/k rows for the llama architecture
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path, tokenizer, arch="llama"):
    rng = np.random.default_rng(0)
    d, ff, heads, kv_heads, layers = 256, 512, 4, 2, 2
    vocab = tokenizer.vocab_size
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    vocab_json = json.loads(tokenizer.backend.to_str())["model"]
    tokens = [t for t, _ in sorted(vocab_json["vocab"].items(), key=lambda kv: kv[1])]
    added = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    tokens += sorted(added - set(tokens), key=tokenizer.backend.token_to_id)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in vocab_json["merges"]])
    writer.add_token_types([3 if t in added else 1 for t in tokens])
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    hf_names = {}
    type_cycle = iter(GGUF_TYPES * 10)

    def add(name, shape, hf_name, permute_heads=None):
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if name.endswith("norm.weight"):
            w = 1.0 + w
            qtype = gguf.GGMLQuantizationType.F32
        else:
            qtype = gguf.GGMLQuantizationType[next(type_cycle)]
        stored = _permute(w, permute_heads) if permute_heads else w
        if qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
            data = _random_kquant_blocks(*stored.shape, qtype, rng)
        else:
            data = gguf.quants.quantize(stored, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        hf_names[hf_name] = qtype.name

    add("token_embd.weight", (vocab, d), "embed_tokens")
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (d,), "")
        add(f"blk.{i}.attn_q.weight", (d, d), f"{i}.q", heads)
        add(f"blk.{i}.attn_k.weight", (kv_heads * d // heads, d), f"{i}.k", kv_heads)
        add(f"blk.{i}.attn_v.weight", (kv_heads * d // heads, d), f"{i}.v")
        add(f"blk.{i}.attn_output.weight", (d, d), f"{i}.o")
        add(f"blk.{i}.ffn_norm.weight", (d,), "")
        add(f"blk.{i}.ffn_gate.weight", (ff, d), f"{i}.gate")
        add(f"blk.{i}.ffn_up.weight", (ff, d), f"{i}.up")
        add(f"blk.{i}.ffn_down.weight", (d, ff), f"{i}.down")
    add("output_norm.weight", (d,), "")
    add("output.weight", (vocab, d), "lm_head")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return set(hf_names.values())


def test_gguf_every_tensor_type_matches_transformers(tmp_path, shakespeare_tokenizer):
    path = tmp_path / "tiny.gguf"
    used = _write_tiny_gguf(path, shakespeare_tokenizer)
    assert set(GGUF_TYPES) <= used  # every required ggml type is in the file
    convert(path, tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                                 dtype=torch.float32).eval()
    x = torch.randint(0, shakespeare_tokenizer.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - hf_model(x).logits).abs().max().item()
    assert diff <= 1e-3
    tokenizer = load_tokenizer(tmp_path / "ours")
    assert tokenizer.decode(tokenizer.encode("Good morrow, 1601!")) == "Good morrow, 1601!"


def test_gguf_file_reader_equals_the_gguf_package_and_refuses_broken_files(tmp_path, shakespeare_tokenizer):
    from llmkit.convert.gguf_file import read_gguf_file

    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, shakespeare_tokenizer)
    ours, theirs = read_gguf_file(path), gguf.GGUFReader(path)
    expected = {key: field.contents() for key, field in theirs.fields.items() if not key.startswith("GGUF.")}
    assert ours.metadata == expected and len(expected) > 10
    assert all(type(ours.metadata[key]) is type(value) for key, value in expected.items())
    assert [(t.name, t.shape, t.tensor_type) for t in ours.tensors] == \
        [(t.name, tuple(int(n) for n in t.shape), t.tensor_type) for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors):
        assert mine.data.tobytes() == np.ascontiguousarray(reference.data).tobytes(), mine.name
    raw = path.read_bytes()
    header_end = raw.index(b"token_embd.weight")  # inside the tensor table
    for cut in (0, 3, 10, 23, header_end // 2, header_end + 5, len(raw) - 100):
        (tmp_path / "cut.gguf").write_bytes(raw[:cut])
        with pytest.raises(ConversionError, match="cut.gguf: not a readable GGUF file"):
            read_gguf_file(tmp_path / "cut.gguf")
    # a hostile length field (2^60 metadata strings) is refused at once, not looped over or allocated
    key = raw.index(b"tokenizer.ggml.tokens")
    count_at = key + len(b"tokenizer.ggml.tokens") + 8  # after the value type (u32) and element type (u32)
    hostile = raw[:count_at] + (1 << 60).to_bytes(8, "little") + raw[count_at + 8:]
    (tmp_path / "hostile.gguf").write_bytes(hostile)
    with pytest.raises(ConversionError, match="runs past the end of the file"):
        read_gguf_file(tmp_path / "hostile.gguf")


def test_gguf_unsupported_architecture_and_type_are_named(tmp_path):
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
    with pytest.raises(ConversionError, match="architecture 'falcon' is not supported"):
        convert(path, tmp_path / "out")

    from llmkit.convert.gguf import dequantize_tensor

    class FakeTensor:  # a tensor of a type gguf-py cannot dequantize
        name, tensor_type, shape = "blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q8_K, [256, 1]
        data = np.zeros((1, 292), dtype=np.uint8)

    with pytest.raises(ConversionError, match="blk.0.attn_q.weight.*Q8_K"):
        dequantize_tensor(FakeTensor(), path)


def test_bad_sources_give_clear_errors(tmp_path):
    (tmp_path / "notgguf.gguf").write_bytes(b"definitely not a gguf file")
    with pytest.raises(ConversionError, match="notgguf.gguf: not a readable GGUF file"):
        convert(tmp_path / "notgguf.gguf", tmp_path / "out")
    hf_dir = tmp_path / "gpt2"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConversionError, match="architecture 'GPT2LMHeadModel' is not supported"):
        convert(hf_dir, tmp_path / "out")
    with pytest.raises(ConversionError, match="not a .gguf file"):
        convert(tmp_path / "missing", tmp_path / "out")


@pytest.mark.parametrize("kind", ["llama", "bert", "t5"])
def test_a_tensor_the_converter_does_not_map_is_refused_by_name(tmp_path, shakespeare_tokenizer, kind):
    """One extra tensor (an option the converter does not know) must stop the import, not be dropped."""
    from safetensors.torch import load_file, save_file

    from test_encoder import tiny_bert, write_wordpiece_tokenizer
    from test_t5 import hf_directory, tiny_t5

    if kind == "llama":
        src = tmp_path / "hf"
        _tiny_hf_model("llama", tie=False).save_pretrained(src)
        shakespeare_tokenizer.save(src)
        extra, what = "model.layers.0.self_attn.o_proj.bias", ""
    elif kind == "bert":
        src = tmp_path / "hf"
        tiny_bert("encoder", 64).save_pretrained(src)
        write_wordpiece_tokenizer(src)
        extra, what = "encoder.layer.0.output.extra.weight", r" \(llmkit imports BertModel and BertForMaskedLM\)"
    else:
        src = hf_directory(tmp_path, tiny_t5("relu"))
        extra, what = "encoder.block.0.layer.0.SelfAttention.o.bias", r" \(llmkit imports T5ForConditionalGeneration\)"
    state = load_file(src / "model.safetensors")
    state[extra] = torch.zeros(4)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    shown = extra.removeprefix("model.")
    with pytest.raises(ConversionError, match=rf"hf: tensors this architecture does not use: "
                                              rf"{re.escape(shown)}{what}$"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_untied_model_without_its_head_is_refused(tmp_path, shakespeare_tokenizer):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "hf"
    _tiny_hf_model("llama", tie=False).save_pretrained(src)
    shakespeare_tokenizer.save(src)
    state = load_file(src / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"hf: tensor 'lm_head.weight' is missing and embeddings are not tied$"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
