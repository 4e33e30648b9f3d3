"""BERT-style encoders as options of the one Transformer (issue 23): Hugging Face BertForMaskedLM and
BertModel in and out with equal logits, padding masked out of attention, all-MiniLM-L6-v2's sentence
embeddings equal to transformers' + mean pooling, and generation refused on an encoder."""

import json

import numpy as np
import pytest
import torch

from llmkit.checkpoint import load_model, load_tokenizer
from llmkit.config import ModelConfig
from llmkit.convert import convert
from llmkit.errors import ConversionError, GenerationError
from llmkit.infer import Engine
from llmkit.model import Transformer
from llmkit.rag.embed import pooled_embeddings

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")

TEXTS = ["The mouse ate the cheese.", "To be, or not to be, that is the question.",
         "Shall I compare thee to a summer's day? Thou art more lovely and more temperate."]


def write_wordpiece_tokenizer(folder):
    """A small lower-casing WordPiece tokenizer with BERT's specials and [CLS] ... [SEP] post-processor."""
    from tokenizers import processors
    from tokenizers.implementations import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(TEXTS * 5, vocab_size=150, min_frequency=1)
    # (the class sets its post-processor before training, with ids the trained vocabulary does not have)
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASK]", "pad_token": "[PAD]"}))
    return wordpiece.get_vocab_size()


def tiny_bert(kind: str, vocab: int, **extra):
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, **extra)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config) if kind == "mlm" else transformers.BertModel(config)
    with torch.no_grad():
        for p in model.parameters():  # random norms and biases too, so a dropped or swapped tensor would show
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def padded_batch(vocab: int):
    ids = torch.randint(5, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros(3, 12, dtype=torch.long)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("kind", ["mlm", "encoder"])
def test_bert_to_llmkit_to_bert_logits_equal_with_padding(tmp_path, kind):
    vocab = write_wordpiece_tokenizer(tmp_path / "hf")
    hf_model = tiny_bert(kind, vocab)
    hf_model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    assert model.config.causal is False and model.config.lm_head == (kind == "mlm")
    assert model.config.cls_pooler == (kind == "encoder")
    ids, mask, types = padded_batch(vocab)
    real = mask.bool()
    with torch.no_grad():
        if kind == "mlm":
            reference = hf_model(ids, attention_mask=mask, token_type_ids=types).logits
            ours = model(ids, attention_mask=mask, token_type_ids=types)
        else:
            out = hf_model(ids, attention_mask=mask, token_type_ids=types)
            reference = out.last_hidden_state
            ours = model(ids, attention_mask=mask, token_type_ids=types, return_hidden=True)
            pooled = torch.tanh(model.pooler(ours[:, 0]))
            assert torch.allclose(pooled, out.pooler_output, atol=1e-5, rtol=0)
        assert torch.allclose(ours[real], reference[real], atol=1e-5, rtol=0)
        convert(tmp_path / "ours", tmp_path / "back", to="hf")
        back_class = transformers.BertForMaskedLM if kind == "mlm" else transformers.BertModel
        back = back_class.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
        again = back(ids, attention_mask=mask, token_type_ids=types)
        again = again.logits if kind == "mlm" else again.last_hidden_state
        assert torch.equal(again[real], reference[real])


def test_padding_does_not_change_an_encoder_s_outputs():
    """Right-padded rows under the padding mask == each row alone (bidirectional attention would
    otherwise read the padding); and without the mask they differ, so the mask is what does it."""
    config = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, d_ff=48, max_seq_len=32, causal=False,
                         norm_position="post", norm="layernorm", pos_embedding="learned", mlp="gelu",
                         type_vocab_size=2, embedding_norm=True)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    rows = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    batched = pooled_embeddings(model, rows, skip_first=False)
    alone = torch.cat([pooled_embeddings(model, [r], skip_first=False) for r in rows])
    assert torch.allclose(batched, alone, atol=1e-6)
    with torch.no_grad():
        padded = torch.tensor([rows[1] + [0] * 4])
        assert not torch.allclose(model(padded, return_hidden=True)[0, :3],
                                  model(torch.tensor([rows[1]]), return_hidden=True)[0], atol=1e-4)


def test_an_encoder_refuses_to_generate(tmp_path):
    write_wordpiece_tokenizer(tmp_path / "hf")
    vocab = load_tokenizer(tmp_path / "hf").vocab_size
    tiny_bert("mlm", vocab).save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours")
    import llmkit

    llm = llmkit.load(tmp_path / "ours", device="cpu")
    for attempt in (lambda: llm.generate("the mouse"), lambda: llm.chat([{"role": "user", "content": "hi"}]),
                    lambda: llm.score("the mouse ate"), lambda: Engine(llm.model)):
        with pytest.raises(GenerationError, match="encoder"):
            attempt()
    assert llm.embed(["the mouse"]).shape == (1, 32)


@pytest.mark.parametrize("field, value, named", [
    ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key' is not supported"),
    ("hidden_act", "relu", "hidden_act 'relu' is not supported"),
    ("is_decoder", True, "is_decoder True is not supported"),
    ("architectures", ["BertForNextSentencePrediction"], "architecture 'BertForNextSentencePrediction'"),
    ("type_vocab_size", "2", "type_vocab_size must be a positive integer"),
])
def test_unsupported_bert_configs_are_one_line_errors(tmp_path, field, value, named):
    vocab = write_wordpiece_tokenizer(tmp_path / "hf")
    tiny_bert("mlm", vocab).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ConversionError, match=named) as error:
        convert(tmp_path / "hf", tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_a_decoder_cannot_be_exported_as_bert_nor_an_encoder_as_llama(tmp_path, shakespeare_tokenizer):
    from llmkit.convert.bert import config_to_bert
    from llmkit.convert.hf import config_to_hf

    with pytest.raises(ConversionError, match="cannot be exported as Hugging Face BERT: it has causal=True"):
        config_to_bert(ModelConfig.preset("tiny"))
    with pytest.raises(ConversionError, match="only Llama-family"):
        config_to_hf(ModelConfig(pos_embedding="learned", mlp="gelu", norm="layernorm", causal=False))


def test_the_wordpiece_tokenizer_wraps_texts_as_bert_does(tmp_path):
    write_wordpiece_tokenizer(tmp_path / "hf")
    ours = load_tokenizer(tmp_path / "hf")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode_with_special_tokens([text], 512)[0] == theirs(text)["input_ids"]
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    cut = ours.encode_with_special_tokens([TEXTS[2]], 6)[0]
    assert len(cut) == 6 and cut[0] == ours.backend.token_to_id("[CLS]") and cut[-1] == ours.backend.token_to_id("[SEP]")
    assert ours.mask_id == ours.backend.token_to_id("[MASK]")


# --- the real all-MiniLM-L6-v2, from its PyPI wheel -------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm_dir(cache_dir):
    from llmkit.convert import resolve_model

    return resolve_model("all-minilm")


@pytest.mark.slow
def test_minilm_sentence_embeddings_equal_transformers_mean_pooling(minilm_dir, tmp_path):
    import zipfile

    import llmkit
    from llmkit.convert import named_model_file

    with zipfile.ZipFile(named_model_file("all-minilm")) as zf:  # the original Hugging Face directory
        zf.extractall(tmp_path / "hf", [m for m in zf.namelist() if m.count("/") == 0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    bert = transformers.BertModel.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    texts = TEXTS + ["Hello!", "A man is playing a guitar on a stage while the crowd cheers."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    llm = llmkit.load(minilm_dir, device="cpu", dtype="float32")
    assert llm.tokenizer.encode_with_special_tokens(texts, 512) == [
        [i for i, m in zip(ids, row) if m] for ids, row in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())]
    ours = llm.embed(texts)
    assert np.abs(ours - reference).max() < 1e-5
    assert float(ours[0] @ ours[1]) < float(ours[2] @ ours[2])  # (unit vectors: a text is nearest itself)



@pytest.mark.slow
def test_rag_index_with_minilm_finds_the_passage_by_meaning(minilm_dir, tmp_path):
    """Dense retrieval through the encoder's pooled embeddings: the query shares no word with the passage
    it must find, so BM25 cannot find it and the encoder must."""
    from conftest import cli_in_process

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.txt").write_text("The cat sat on the mat and purred all afternoon.\n")
    (docs / "bank.txt").write_text("Interest rates rose sharply as the central bank fought inflation.\n")
    (docs / "music.txt").write_text("The violinist tuned her instrument before the concert began.\n")
    result = cli_in_process("rag", "index", "--input", docs, "--model", minilm_dir, "--out", tmp_path / "idx")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["dense"]["dim"] == 384 and meta["dense"]["pooling"] == "mean of encoder states"
    for query, expected in [("monetary policy and the economy", "bank.txt"), ("a feline resting", "cats.txt"),
                            ("an orchestra performance", "music.txt")]:
        result = cli_in_process("rag", "search", tmp_path / "idx", query, "--mode", "dense", "--k", "1")
        assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr

# --- llmkit fill ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_mlm(tmp_path):
    """A random tiny BertForMaskedLM converted to llmkit: (checkpoint directory, the transformers model)."""
    vocab = write_wordpiece_tokenizer(tmp_path / "hf")
    hf_model = tiny_bert("mlm", vocab)
    hf_model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "mlm")
    return tmp_path / "mlm", hf_model


def test_fill_gives_transformers_probabilities_for_each_mask(tiny_mlm):
    import llmkit

    directory, hf_model = tiny_mlm
    llm = llmkit.load(directory, device="cpu", dtype="float32")
    text = "The [MASK] ate the [MASK]."
    predictions = llm.fill(text, top=4)
    ids = llm.tokenizer.encode_with_special_tokens([text], 64)[0]
    masks = [i for i, t in enumerate(ids) if t == llm.tokenizer.mask_id]
    assert [p.position for p in predictions] == masks and len(masks) == 2
    with torch.no_grad():
        probs = torch.softmax(hf_model(torch.tensor([ids])).logits[0, masks], dim=-1)
    for prediction, row in zip(predictions, probs):
        best, best_ids = row.topk(4)
        assert [text for text, _ in prediction.candidates] == [llm.tokenizer.decode([t]) for t in best_ids.tolist()]
        assert np.allclose([p for _, p in prediction.candidates], best.tolist(), atol=1e-6)


def test_fill_cli_prints_a_table_and_refuses_what_cannot_fill(tiny_mlm, tmp_path, saved_tiny_model):
    from conftest import cli_in_process

    directory, _ = tiny_mlm
    result = cli_in_process("fill", "--model", directory, "--top", "3", "The [MASK] ate the [MASK].")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "[MASK]", "1", "[MASK]", "2"] and len(lines) == 4
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"] and all(line.count("%") == 2 for line in lines[1:])
    vocab = load_tokenizer(tmp_path / "hf").vocab_size
    tiny_bert("encoder", vocab).save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "tokenizer.json").write_bytes((tmp_path / "hf" / "tokenizer.json").read_bytes())
    convert(tmp_path / "enc", tmp_path / "encoder")
    for model, text, message in [(saved_tiny_model, "The [MASK] ate", "this model is a decoder"),
                                 (tmp_path / "encoder", "The [MASK] ate", "has no masked-LM head"),
                                 (directory, "The mouse ate", "the text has no [MASK]")]:
        result = cli_in_process("fill", "--model", model, text)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
