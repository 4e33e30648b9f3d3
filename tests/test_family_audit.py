"""The other family members as a user meets them (an audit): an untied BertForMaskedLM's head bias as
transformers 5 computes it, classification files with a byte-order mark or a non-finite label, an
encoder-decoder refused in one line where it cannot serve (zero-shot, fill, a classifier head), and a
masked-LM batch that always has a target."""

import json

import pytest
import torch

from llmkit.checkpoint import load_model, save_checkpoint
from llmkit.classify.data import label_names, read_examples
from llmkit.config import ModelConfig
from llmkit.convert import convert
from llmkit.errors import ConfigError, DataError, GenerationError
from llmkit.model import Transformer
from conftest import TEST_DATA, cli_in_process
from posttrain_fixtures import tiny_base  # noqa: F401 (a fixture)

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency (pip install -e .[test])")


# --- BERT: the masked-LM head's bias ------------------------------------------------------------------------
def test_untied_bert_mlm_head_adds_the_decoder_bias_transformers_adds(tmp_path):
    """transformers 5 ties cls.predictions.decoder.bias to cls.predictions.bias only with tied embeddings:
    an untied model computes with decoder.bias, and both are in its file, different."""
    from test_encoder import padded_batch, tiny_bert, write_wordpiece_tokenizer

    vocab = write_wordpiece_tokenizer(tmp_path / "hf")
    hf_model = tiny_bert("mlm", vocab, tie_word_embeddings=False)
    head = hf_model.cls.predictions
    assert not torch.equal(head.decoder.bias, head.bias)  # (the random perturbation set them apart)
    hf_model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours")
    model = load_model(tmp_path / "ours")
    ids, mask, types = padded_batch(vocab)
    real = mask.bool()
    with torch.no_grad():
        reference = hf_model(ids, attention_mask=mask, token_type_ids=types).logits
        ours = model(ids, attention_mask=mask, token_type_ids=types)
        assert torch.allclose(ours[real], reference[real], atol=1e-5, rtol=0)
        # and back: the exported file gives transformers the same bias (it was left at zeros, "MISSING")
        convert(tmp_path / "ours", tmp_path / "back", to="hf")
        back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
        again = back(ids, attention_mask=mask, token_type_ids=types).logits
    assert torch.allclose(again[real], reference[real], atol=1e-5, rtol=0)


# --- classification files -------------------------------------------------------------------------------------
def test_a_byte_order_mark_does_not_turn_the_header_into_an_example(tmp_path):
    (tmp_path / "a.tsv").write_bytes("\ufefftext\tlabel\ngood\t1\nbad\t0\n".encode("utf-8"))
    examples = read_examples(tmp_path / "a.tsv")
    assert [(e.text, e.label) for e in examples] == [("good", "1"), ("bad", "0")] and label_names(examples) == ["0", "1"]
    (tmp_path / "a.jsonl").write_bytes('\ufeff{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n'.encode())
    assert [(e.text, e.label) for e in read_examples(tmp_path / "a.jsonl")] == [("good", "1"), ("bad", "0")]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_json_label_is_an_error_at_its_line(tmp_path, value):
    (tmp_path / "a.jsonl").write_text(f'{{"text": "good", "label": 1}}\n{{"text": "bad", "label": {value}}}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: \"label\" is .*finite number"):
        read_examples(tmp_path / "a.jsonl")


def test_a_saved_classifier_cuts_texts_as_training_did(tmp_path, tiny_base):
    """Training scored its dev texts cut to seq_len tokens; `classify eval` cut the same file at the model's
    context (256 here): another accuracy than training's val_accuracy for the same classifier and file."""
    import torch.nn.functional as F
    from posttrain_fixtures import config

    from llmkit.classify.data import label_indices
    from llmkit.classify.head import classify_texts, load_classifier
    from llmkit.classify.train import ClassifyConfig, run_classify

    train, dev = TEST_DATA / "sentiment" / "train.tsv", TEST_DATA / "sentiment" / "dev.jsonl"
    out = tmp_path / "clf"
    result = run_classify(config(ClassifyConfig, init_from=tiny_base, data=train, val_data=dev, max_steps=6,
                                 micro_batch=8, lr=3e-3, eval_every=6, seq_len=5), out)
    assert json.loads((out / "classifier_config.json").read_text())["seq_len"] == 5
    model, tokenizer = load_classifier(out)
    examples = read_examples(dev)
    assert min(len(tokenizer.encode(e.text)) for e in examples) > 5  # (every dev text is cut)
    probs = classify_texts(model, tokenizer, [e.text for e in examples])
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(label_indices(examples, model.labels))).item()
    assert loss == pytest.approx(result.eval["val_loss"], abs=1e-5)
    (out / "classifier_config.json").write_text(json.dumps({"labels": ["a", "b"], "pooling": "last", "seq_len": "5"}))
    result = cli_in_process("classify", "--model", out, "text")
    assert result.returncode == 2 and "seq_len '5' is not a positive integer" in result.stderr, result.stderr


def test_an_empty_text_without_a_bos_is_refused_not_pooled_from_its_neighbour(tiny_base):
    """With a tokenizer that adds no BOS, "" is no tokens: packed between two texts, its row took the next
    text's probabilities."""
    from llmkit.checkpoint import load_tokenizer
    from llmkit.classify.head import SequenceClassifier, classify_texts
    from llmkit.tokenizer import Tokenizer

    tokenizer = load_tokenizer(tiny_base)
    no_bos = Tokenizer(tokenizer.backend, eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)
    model = SequenceClassifier(load_model(tiny_base), ["a", "b"]).eval()
    with pytest.raises(DataError, match=r"text 2 \(''\) has no tokens"):
        classify_texts(model, no_bos, ["a fine film", "", "a dull film"])
    assert classify_texts(model, tokenizer, [""]).shape == (1, 2)  # (with its BOS, an empty text is a text)


# --- an encoder-decoder where it cannot serve -------------------------------------------------------------
@pytest.fixture
def tiny_t5_dir(tmp_path, shakespeare_tokenizer):
    config = ModelConfig.preset("t5-cpu", vocab_size=shakespeare_tokenizer.vocab_size, n_encoder_layers=1, n_layers=1,
                                d_model=32, n_heads=2, head_dim=16, d_ff=48, max_seq_len=64)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "t5", Transformer(config), shakespeare_tokenizer)
    return tmp_path / "t5"


def test_zero_shot_refuses_an_encoder_decoder_in_one_line(tiny_t5_dir, tmp_path):
    """The scorer gives the decoder no source: it failed with an AttributeError traceback."""
    from llmkit.checkpoint import load_tokenizer
    from llmkit.classify.zero_shot import label_logprobs, parse_label_words

    with pytest.raises(DataError, match="encoder-decoder"):
        label_logprobs(load_model(tiny_t5_dir), load_tokenizer(tiny_t5_dir), ["a fine film"],
                       parse_label_words("negative=terrible,positive=great"))
    (tmp_path / "dev.tsv").write_text("a fine film\t1\na dull film\t0\n")
    result = cli_in_process("classify", "zero-shot", "--model", tiny_t5_dir, "--data", tmp_path / "dev.tsv",
                            "--labels", "negative=terrible,positive=great")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "encoder-decoder" in result.stderr, result.stderr


def test_fill_and_a_classifier_refuse_an_encoder_decoder_saying_what_it_is(tiny_t5_dir):
    from llmkit.checkpoint import load_tokenizer
    from llmkit.classify.head import SequenceClassifier
    from llmkit.fill import fill_masks

    model = load_model(tiny_t5_dir)
    with pytest.raises(GenerationError, match="encoder-decoder .*<extra_id_0>"):  # (was: "this model is a decoder")
        fill_masks(model, load_tokenizer(tiny_t5_dir), "The [MASK] ate")
    with pytest.raises(ConfigError, match="encoder-decoder"):  # (was: an error at the first training step)
        SequenceClassifier(model, ["negative", "positive"])


# --- masked language modelling ---------------------------------------------------------------------------------
def test_every_masked_lm_batch_has_a_target(shakespeare_tokenizer):
    """Short windows (4 tokens, one a micro-batch) often had no chosen token: the loss was 0/0 = NaN and
    `llmkit pretrain objective=mlm seq_len=4 micro_batch=1` stopped at step 0 with 'loss is nan'."""
    from test_mlm import _copy

    from llmkit.train.mlm import Masker, with_mask_token

    tokenizer = with_mask_token(_copy(shakespeare_tokenizer))
    masker = Masker(tokenizer, 0.15)
    ids = torch.randint(20, shakespeare_tokenizer.vocab_size, (1, 4), generator=torch.Generator().manual_seed(0))
    ids[0, 0] = tokenizer.bos_id  # (a special token is still never chosen)
    for step in range(40):
        inputs, targets = masker.batch(ids, 0, step, 0)
        chosen = targets != -100
        assert chosen.any() and not chosen[0, 0] and torch.equal(targets[chosen], ids[chosen])
    only_special = torch.full((1, 4), tokenizer.bos_id)
    assert not (masker.batch(only_special, 0, 0, 0)[1] != -100).any()  # (nothing eligible: nothing chosen)


# --- span corruption ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,density,mean_span", [(127, 0.5, 1.0), (7, 0.5, 1.0), (3, 0.5, 1.0), (2, 0.5, 1.0)])
def test_span_corruption_fits_every_window_its_config_allows(shakespeare_tokenizer, length, density, mean_span):
    """span_density 0.5 and span_mean_length 1 are in range; an odd window then rounded to more spans than
    kept tokens and numpy's draw failed with a ValueError traceback at the first step."""
    import numpy as np
    from test_span import _copy, _uncorrupt

    from llmkit.train.span import SpanCorruptor, span_lengths, with_sentinels

    tokenizer = with_sentinels(_copy(shakespeare_tokenizer))
    corruptor = SpanCorruptor(tokenizer, 0, density, mean_span)
    noise, spans = span_lengths(length, density, mean_span)
    window = list(range(20, 20 + length))
    for seed in range(5):
        mask = corruptor.noise_mask(length, np.random.default_rng(seed))
        assert int(mask.sum()) == noise and not mask[0]  # (kept first)
        assert int((mask[1:] & ~mask[:-1]).sum()) == spans
        inputs, targets = corruptor.corrupt(window, mask)
        assert _uncorrupt(inputs, targets, set(corruptor.sentinel_ids), tokenizer.eos_id)[0] == window


def test_a_byte_order_marked_file_that_is_not_utf8_names_the_files_own_byte(tmp_path):
    """Review: utf-8-sig counts offsets after the mark, so the error named byte 9 for the file's byte 12."""
    from llmkit.classify.data import read_examples

    path = tmp_path / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbfgood\t1\nba\xffd\t0\n")
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 12\)"):
        read_examples(path)
