"""T5-style encoder-decoders as options of the one Transformer (issue 23): Hugging Face
T5ForConditionalGeneration in and out with equal logits (ReLU and gated GELU, a tied and scaled head, a
tied unscaled one, an untied one), padding masked out of the encoder, and unsupported files refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.checkpoint import load_model
from llmkit.convert import convert
from llmkit.errors import ConversionError, GenerationError

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")

VOCAB = 128


def write_word_tokenizer(folder):
    """A word-level tokenizer of VOCAB ids with T5's specials (<pad> 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>",
                                                              "unk_token": "<unk>"}))


def tiny_t5(feed_forward: str, tie: bool = True, seed: int = 0, out_scale: float = 1.0, decoder_layers: int = 2):
    config = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2,
                                   num_decoder_layers=decoder_layers,
                                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   feed_forward_proj=feed_forward, tie_word_embeddings=tie, decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # random norms and position biases too: a dropped or swapped
            p.add_(torch.randn_like(p) * 0.1)  # tensor shows
            if name.endswith((".o.weight", ".wo.weight")):  # (out_scale > 1: the blocks outweigh the tied
                p.mul_(out_scale)  # embedding in the residual stream, so greedy text does not repeat one token)
    return model.eval()


def padded_sources():
    ids = torch.randint(3, VOCAB, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    decoder_ids = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(2))
    decoder_ids[:, 0] = 0  # the decoder start token
    return ids, mask, decoder_ids


def hf_directory(tmp_path, hf_model):
    write_word_tokenizer(tmp_path / "hf")
    hf_model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def assert_logits_equal(reference, ours, mask):
    # (every decoder position is real; the sources' padding is the mask's business)
    assert reference.shape == ours.shape
    assert torch.allclose(reference, ours, atol=1e-5, rtol=0), (reference - ours).abs().max()


@pytest.mark.parametrize("feed_forward,tie,decoder_layers", [("relu", True, 2), ("gated-gelu", True, 2),
                                                             ("gated-gelu", False, 2), ("relu", False, 3)])
def test_t5_to_llmkit_to_t5_logits_equal_with_padding(tmp_path, feed_forward, tie, decoder_layers):
    """tie=False in transformers 5 still ties the weights but drops the d_model^-0.5 head scaling (T5 v1.1)."""
    hf_model = tiny_t5(feed_forward, tie, decoder_layers=decoder_layers)
    convert(hf_directory(tmp_path, hf_model), tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    cfg = model.config
    assert (cfg.n_encoder_layers, cfg.n_layers, cfg.pos_embedding, cfg.scaled_attention) == (2, decoder_layers,
                                                                                             "relative", False)
    assert cfg.mlp == {"relu": "relu", "gated-gelu": "geglu"}[feed_forward] and cfg.scale_head_input == tie
    assert cfg.num_params() == model.num_params() == hf_model.num_parameters()  # (the arithmetic, tied head once)
    ids, mask, decoder_ids = padded_sources()
    with torch.no_grad():
        reference = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        ours = model(decoder_ids, encoder_ids=ids, encoder_mask=mask)
        # the encoder run once and reused gives the same
        again = model(decoder_ids, memory=model.encode(ids, mask))
    assert_logits_equal(reference, ours, mask)
    assert torch.equal(ours, again)
    # the source's padding is out of sight: a row alone, unpadded, gives the same logits
    with torch.no_grad():
        alone = model(decoder_ids[2:], encoder_ids=ids[2:, :3])
    assert torch.allclose(alone, ours[2:], atol=1e-4, rtol=1e-5)  # (other shapes: other summation orders)

    convert(tmp_path / "ours", tmp_path / "back", to="hf")
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        exported = back(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert_logits_equal(reference, exported, mask)
    original, written = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(written) <= set(original)
    assert all(torch.equal(written[name], original[name]) for name in written)


def test_untied_head_is_imported_and_exported(tmp_path):
    """An untied T5 (v1.1 as transformers 4 saved it: lm_head.weight of its own, tie_word_embeddings false):
    logits are the decoder's final states (transformers') times that head, unscaled."""
    hf_model = tiny_t5("gated-gelu", tie=False)
    folder = hf_directory(tmp_path, hf_model)
    tensors = load_file(folder / "model.safetensors")
    head = torch.randn(VOCAB, 64, generator=torch.Generator().manual_seed(3))
    save_file({**tensors, "lm_head.weight": head}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.pop("scale_decoder_outputs")
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    convert(folder, tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    assert not model.config.tie_embeddings and not model.config.scale_head_input
    ids, mask, decoder_ids = padded_sources()
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, output_hidden_states=True)
        reference = out.decoder_hidden_states[-1] @ head.t()
        ours = model(decoder_ids, encoder_ids=ids, encoder_mask=mask)
    assert_logits_equal(reference, ours, mask)
    convert(tmp_path / "ours", tmp_path / "back", to="hf")
    written = load_file(tmp_path / "back" / "model.safetensors")
    assert torch.equal(written["lm_head.weight"], head) and torch.equal(written["shared.weight"], tensors["shared.weight"])
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["tie_word_embeddings"] is False and exported["scale_decoder_outputs"] is False


@pytest.mark.parametrize("change,message", [
    ({"feed_forward_proj": "gated-relu"}, "feed_forward_proj 'gated-relu' is not supported"),
    ({"architectures": ["T5EncoderModel"]}, "architecture 'T5EncoderModel' is not supported"),
    ({"d_kv": "sixteen"}, "d_kv must be a positive integer"),
    ({"relative_attention_max_distance": 2}, "relative_max_distance 2 must exceed half of relative_buckets"),
])
def test_unsupported_t5_files_are_refused_in_one_line(tmp_path, change, message):
    folder = hf_directory(tmp_path, tiny_t5("relu"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConversionError, match=message) as error:
        convert(folder, tmp_path / "ours")
    assert "\n" not in str(error.value)


# --- generation on the one engine -------------------------------------------------------------------
SOURCES = [[5, 17, 99, 42, 8, 23, 64, 1], [77, 3, 12, 1], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 1]]


@pytest.fixture(scope="module")
def t5_pair(tmp_path_factory):
    """(transformers' model, ours converted from it): gated GELU, tied and scaled."""
    tmp_path = tmp_path_factory.mktemp("t5")
    hf_model = tiny_t5("gated-gelu", tie=True, seed=0, out_scale=6.0)
    convert(hf_directory(tmp_path, hf_model), tmp_path / "ours")
    return hf_model, load_model(tmp_path / "ours")


def hf_greedy(hf_model, sources, max_new_tokens, eos):
    width = max(map(len, sources))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sources])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources])
    out = hf_model.generate(input_ids=ids, attention_mask=mask, num_beams=1, do_sample=False,
                            max_new_tokens=max_new_tokens, min_length=0, eos_token_id=eos)
    rows = []
    for row in out[:, 1:].tolist():  # (after the decoder start token; padding follows an end token)
        rows.append(row[:row.index(eos) + 1] if eos in row else row)
    return rows


def test_greedy_generation_equals_transformers_generate(t5_pair):
    from llmkit.infer import Engine, SamplingParams

    hf_model, model = t5_pair
    reference = hf_greedy(hf_model, SOURCES, max_new_tokens=12, eos=94)  # (94: a token this model writes)
    assert [len(r) for r in reference] == [6, 12, 6] and len(set(reference[0] + reference[2])) >= 6
    engine = Engine(model, stop_token_ids=[94])
    params = SamplingParams(max_new_tokens=12, temperature=0)
    batched = [c.token_ids for c in engine.generate_batch(SOURCES, params)]
    assert batched == reference
    assert [engine.generate(source, params) for source in SOURCES] == reference
    assert engine.prefix_cache is None  # (a decoder prefix means nothing without its source)


def test_batched_equals_one_by_one_as_rows_come_and_go(t5_pair):
    """Requests of different lengths finish at different steps: the survivors' rows move, and their
    sources' cross-attention keys and values move with them; seeded sampling does not depend on the batch."""
    from llmkit.infer import Engine, SamplingParams

    _, model = t5_pair
    engine = Engine(model, stop_token_ids=[], max_batch_size=2)  # the third waits for a free row
    params = [SamplingParams(max_new_tokens=n, temperature=0.9, top_k=20, seed=7 + n) for n in (3, 11, 6)]
    params.append(SamplingParams(max_new_tokens=9, temperature=0))
    sources = SOURCES + [SOURCES[0][2:]]
    batched = engine.generate_batch(sources, params)
    alone = [Engine(model, stop_token_ids=[]).generate(s, p) for s, p in zip(sources, params)]
    assert [c.token_ids for c in batched] == alone
    assert [len(t) for t in alone] == [3, 11, 6, 9]
    assert [c.prompt_ids for c in batched] == sources


def test_incremental_decoding_equals_full_recompute(t5_pair):
    """The decoder's KV cache and the cross-attention cache give each step's logits as a full forward does."""
    from llmkit.infer import KVCache

    _, model = t5_pair
    source = torch.tensor([SOURCES[2]])
    decoder_ids = torch.tensor([[0, 9, 40, 41, 7, 7, 100]])
    with torch.no_grad():
        full = model(decoder_ids, encoder_ids=source)
        cache = KVCache(model.config, 1, 16)
        cache.store_cross([0], model.cross_keys_values(model.encode(source)), [source.shape[1]])
        steps = [model(decoder_ids[:, :3], kv_cache=cache)]
        steps += [model(decoder_ids[:, i:i + 1], positions=torch.tensor([[i]]), kv_cache=cache) for i in range(3, 7)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_a_forward_without_the_source_is_one_clear_error(t5_pair):
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="encoder-decoder .* needs the source"):
        t5_pair[1](torch.tensor([[0, 5]]))


def test_engine_refuses_a_speculator_for_an_encoder_decoder(t5_pair):
    from llmkit.errors import GenerationError
    from llmkit.infer import Engine
    from llmkit.infer.speculative import Speculator

    with pytest.raises(GenerationError, match="speculative decoding is for decoder-only models"):
        Engine(t5_pair[1], speculator=Speculator("prompt-lookup"))


@pytest.mark.parametrize("options", [
    {"pos_embedding": "relative", "scaled_attention": False, "mlp": "relu"},
    {"pos_embedding": "rope", "n_kv_heads": 2, "mlp": "swiglu", "tie_embeddings": False},  # RoPE, grouped-query
])
def test_engine_equals_naive_greedy_full_recompute(options):
    """Any encoder-decoder of the options (not only T5's): the engine's greedy text equals re-running the whole
    model (encoder included) for every new token, batched and alone."""
    from llmkit.config import ModelConfig
    from llmkit.infer import Engine, SamplingParams
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layers=2, n_encoder_layers=2, d_model=64, n_heads=4, d_ff=96,
                                    max_seq_len=64, init_std=0.2, **options)).eval()
    naive = []
    with torch.no_grad():
        for source in SOURCES:
            decoded = [model.config.decoder_start_token]
            for _ in range(8):
                logits = model(torch.tensor([decoded]), encoder_ids=torch.tensor([source]))
                decoded.append(int(logits[0, -1].argmax()))
            naive.append(decoded[1:])
    assert len({tuple(n) for n in naive}) == 3 and len(set(sum(naive, []))) > 6  # (text that varies)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    engine = Engine(model)
    assert [c.token_ids for c in engine.generate_batch(SOURCES, params)] == naive
    assert [engine.generate(source, params) for source in SOURCES] == naive


def test_the_memory_budget_counts_the_sources_cross_attention_cache():
    """Each row holds its source's cross-attention keys and values beside the decoder's: the engine's
    budget covers both, so fewer requests run at once, and each still equals its solo run."""
    from llmkit.config import ModelConfig
    from llmkit.infer import Engine, SamplingParams
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=VOCAB, n_layers=2, n_encoder_layers=2, d_model=64, n_heads=4, d_ff=96,
                                    max_seq_len=64, pos_embedding="relative", init_std=0.2)).eval()
    # a row: 64 decoder positions + 64 source positions, 2 layers x (keys + values) x 64 wide x 4 bytes = 128 KiB
    engine = Engine(model, kv_cache_mib=0.3, prefix_cache_mib=0)
    params = SamplingParams(max_new_tokens=5, temperature=0)
    most = 0
    requests = [engine.submit(source, params) for source in SOURCES + SOURCES[:2]]
    while not all(r.done for r in requests):
        engine.step()
        most = max(most, len(engine.scheduler.running))
        assert engine.scheduler.memory_in_use <= 0.3 * 2**20
    assert most == 2  # (counting the decoder's positions alone, four rows would have fit)
    assert [r.output_ids for r in requests] == [Engine(model).generate(s, params) for s in SOURCES + SOURCES[:2]]


def test_a_source_without_its_end_token_gets_it_as_t5_was_trained(tmp_path):
    """Hugging Face's T5 tokenizer ends every source with </s> (and llmkit's span corruption with EOS);
    `llm.generate(text)` encoded the text alone, so its replies differed from transformers' on the same text."""
    import llmkit
    from llmkit.infer import SamplingParams

    hf_model = tiny_t5("gated-gelu", tie=True, seed=0, out_scale=6.0)
    convert(hf_directory(tmp_path, hf_model), tmp_path / "ours")
    llm = llmkit.load(tmp_path / "ours")
    assert llm.tokenizer.eos_id == 1
    reference = hf_greedy(hf_model, SOURCES, max_new_tokens=12, eos=94)
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[94])
    assert [llm.engine.generate(source[:-1], params) for source in SOURCES] == reference  # </s> added
    assert [llm.engine.generate(source, params) for source in SOURCES] == reference  # never twice
    # a source one short of the context fits only when it already ends with </s> (the end token takes a position)
    context = llm.model.config.max_seq_len
    assert llm.engine.fits([5] * (context - 2) + [1]) and not llm.engine.fits([5] * (context - 1))
    with pytest.raises(GenerationError, match=f"context is {context}"):
        llm.engine.submit([5] * (context - 1), params)
    text = " ".join(f"w{i}" for i in SOURCES[0][:-1])
    assert llm.engine.complete(llm.tokenizer.encode(text), params).prompt_ids == SOURCES[0]
    from conftest import cli_in_process

    result = cli_in_process("generate", "--model", tmp_path / "ours", "--max-new-tokens", 4, "--temperature", 0, text)
    assert result.returncode == 0 and not result.stdout.startswith(text), result  # a reply, not a continuation
