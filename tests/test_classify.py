"""Sequence classification: the data files and their one-line errors, pooling over packed rows (batched ==
one by one), a tiny model learning a separable task on the one Trainer (full and LoRA: only adapters and
the head train), the classifier saved and loaded with equal probabilities, zero-shot label-word scoring
against a plain forward, and contextual calibration on a hand example."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit.classify.data import label_indices, label_names, read_examples, subsample
from llmkit.classify.head import (SequenceClassifier, classification_batch, classify_texts, load_classifier,
                                  save_classifier)
from llmkit.classify.train import ClassifyConfig, run_classify
from llmkit.classify.zero_shot import (CONTENT_FREE, calibrate, content_free_probabilities, label_logprobs,
                                       label_probabilities, parse_label_words)
from llmkit.config import ModelConfig
from llmkit.errors import CheckpointError, DataError
from llmkit.model import Transformer
from conftest import TEST_DATA, cli_in_process
from posttrain_fixtures import config, tiny_base  # noqa: F401 (fixtures)

TRAIN, DEV = TEST_DATA / "sentiment" / "train.tsv", TEST_DATA / "sentiment" / "dev.jsonl"


# --- data ------------------------------------------------------------------------------------------------
def test_tsv_with_header_and_jsonl_read_alike():
    train, dev = read_examples(TRAIN), read_examples(DEV)
    assert len(train) == 32 and len(dev) == 8  # the header line is not an example
    assert train[0].text == "a warm and wonderful film , full of joy" and train[0].label == "positive"
    assert train[0].where == f"{TRAIN}:2" and dev[-1].where == f"{DEV}:8"
    assert label_names(train) == ["negative", "positive"] == label_names(dev)
    numbered = [type(train[0])("t", n, "f:1") for n in ("10", "2", "0")]
    assert label_names(numbered) == ["0", "2", "10"]  # integers in numeric order


def test_json_numbers_and_tsv_digits_are_the_same_labels(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    (tmp_path / "a.tsv").write_text("good\t1\nbad\t0\n")
    assert ([(e.text, e.label) for e in read_examples(tmp_path / "a.jsonl")]
            == [(e.text, e.label) for e in read_examples(tmp_path / "a.tsv")] == [("good", "1"), ("bad", "0")])


@pytest.mark.parametrize("name, content, line, says", [
    ("three.tsv", "text\tlabel\ngood film\t1\na\tb\tc\n", 3, "(2 tab-separated fields), found 3"),
    ("one.tsv", "good film\t1\nno label here\n", 2, "found 1"),
    ("empty_text.tsv", "good\t1\n \t0\n", 2, "the text is empty"),
    ("empty_label.tsv", "good\t1\nbad\t\n", 2, "the label is empty"),
    ("bad.jsonl", '{"text": "ok", "label": "1"}\n{"text": "x", \n', 2, "not valid JSON"),
    ("keys.jsonl", '{"text": "ok", "label": "1"}\n\n{"sentence": "x", "label": "0"}\n', 3, "\"text\" and \"label\""),
    ("kind.jsonl", '{"text": "ok", "label": [1]}\n', 1, "\"label\" is a list"),
    ("textkind.jsonl", '{"text": 5, "label": "1"}\n', 1, "\"text\" is a int"),
])
def test_bad_rows_are_one_line_errors_at_file_and_line(tmp_path, name, content, line, says):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as e:
        read_examples(path)
    message = str(e.value)
    assert message.startswith(f"{path}:{line}: ") and says in message and "\n" not in message
    result = cli_in_process("classify", "zero-shot", "--model", "unused", "--data", path, "--labels", "a=x,b=y")
    assert result.returncode == 2 and result.stderr == f"error: {message}\n"


def test_a_line_separator_inside_a_text_is_text(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\nfirst\u2028half, second half\tpositive\r\nplain\tnegative\n", encoding="utf-8")
    examples = read_examples(path)
    assert [(e.text, e.label, e.where) for e in examples] == [
        ("first\u2028half, second half", "positive", f"{path}:2"), ("plain", "negative", f"{path}:3")]


def test_unknown_label_missing_file_and_empty_file(tmp_path):
    dev = read_examples(DEV)
    with pytest.raises(DataError, match=rf"^{DEV}:1: label 'positive' is not one of the classifier's labels"):
        label_indices(dev, ["0", "1"])
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "nope.tsv")
    (tmp_path / "blank.tsv").write_text("\n\n")
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(tmp_path / "blank.tsv")


def test_subsample_is_seeded_and_keeps_file_order():
    train = read_examples(TRAIN)
    a, b = subsample(train, 10, seed=3), subsample(train, 10, seed=3)
    assert a == b and len(a) == 10 and a != subsample(train, 10, seed=4)
    assert [train.index(e) for e in a] == sorted(train.index(e) for e in a)
    assert subsample(train, 0, 3) == train == subsample(train, 99, 3)


# --- the head ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False], ids=["decoder", "encoder"])
@pytest.mark.parametrize("pooling", ["last", "cls", "mean"])
def test_pooling_of_packed_rows_equals_each_text_alone(pooling, causal):
    """Packed texts never see each other; an encoder's tokens see their whole text (before this was
    tested, packed rows were causal for an encoder too: its [CLS] saw only itself)."""
    torch.manual_seed(0)
    model = SequenceClassifier(Transformer(ModelConfig.preset("tiny", causal=causal)), ["a", "b", "c"], pooling).eval()
    sequences = [torch.randint(0, 512, (n,)).tolist() for n in (9, 20, 5, 14, 1)]
    batch = classification_batch(sequences, row_len=32, pad_id=0)
    assert batch["input_ids"].shape[0] < len(sequences)  # several texts share a row
    packed = model(batch)
    alone = torch.cat([model(classification_batch([s], row_len=32, pad_id=0)) for s in sequences])
    assert torch.allclose(packed, alone, atol=1e-5)
    # the reference pooling, from a plain forward of each text
    with torch.no_grad():
        for s, logits in zip(sequences, packed):
            hidden = model.transformer(torch.tensor([s]), return_hidden=True)[0]
            vector = {"last": hidden[-1], "cls": hidden[0], "mean": hidden.mean(0)}[pooling]
            assert torch.allclose(model.score(vector), logits, atol=1e-5)


def test_auto_pooling_follows_the_models_causal_flag():
    assert SequenceClassifier(Transformer(ModelConfig.preset("tiny")), ["a", "b"]).pooling == "last"
    assert SequenceClassifier(Transformer(ModelConfig.preset("tiny", causal=False)), ["a", "b"]).pooling == "cls"


def test_a_bert_classifier_reads_cls_text_sep_and_pools_what_transformers_computes(tmp_path):
    """A BERT imported from Hugging Face: classify_texts wraps each text as BERT was trained ([CLS] text
    [SEP]) and the head reads the [CLS] vector transformers' BertModel gives, packed or alone."""
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")
    from test_encoder import tiny_bert, write_wordpiece_tokenizer

    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.convert import convert

    hf = tiny_bert("encoder", write_wordpiece_tokenizer(tmp_path / "hf"))
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours")
    tokenizer = load_tokenizer(tmp_path / "ours")
    torch.manual_seed(0)
    model = SequenceClassifier(load_model(tmp_path / "ours"), ["negative", "positive"]).eval()
    assert model.pooling == "cls"
    texts = ["the cat sat", "a dog ran on the mat", "cat"]
    probs = classify_texts(model, tokenizer, texts, per_batch=3)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    for text, row in zip(texts, probs):
        ids = hf_tokenizer(text).input_ids
        assert ids[0] == tokenizer.backend.token_to_id("[CLS]") and ids[-1] == tokenizer.backend.token_to_id("[SEP]")
        with torch.no_grad():
            cls = hf(torch.tensor([ids])).last_hidden_state[0, 0]
            expected = torch.softmax(model.score(cls), -1)
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_batched_probabilities_equal_one_by_one(tiny_base):
    from llmkit.checkpoint import load_model, load_tokenizer

    torch.manual_seed(1)
    model = SequenceClassifier(load_model(tiny_base), ["negative", "positive"]).eval()
    tokenizer = load_tokenizer(tiny_base)
    texts = [e.text for e in read_examples(DEV)]
    batched = classify_texts(model, tokenizer, texts, per_batch=8)
    alone = torch.cat([classify_texts(model, tokenizer, [t]) for t in texts])
    assert batched.shape == (8, 2) and torch.allclose(batched.sum(-1), torch.ones(8))
    assert torch.allclose(batched, alone, atol=1e-6)


def test_save_and_load_give_the_same_probabilities_labels_and_pooling(tmp_path, tiny_base):
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.train.peft import apply_lora

    torch.manual_seed(2)
    tokenizer = load_tokenizer(tiny_base)
    model = SequenceClassifier(load_model(tiny_base), ["neg", "pos", "mixed"], "mean").eval()
    apply_lora(model.transformer, rank=4)  # unmerged in memory, merged on disk
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.05)
    texts = [e.text for e in read_examples(DEV)]
    before = classify_texts(model, tokenizer, texts)
    save_classifier(tmp_path / "clf", model, model.state_dict(), tokenizer, str(tiny_base))
    loaded, loaded_tokenizer = load_classifier(tmp_path / "clf")
    assert loaded.labels == ["neg", "pos", "mixed"] and loaded.pooling == "mean"
    assert torch.allclose(classify_texts(loaded, loaded_tokenizer, texts), before, atol=1e-5)
    record = json.loads((tmp_path / "clf" / "classifier_config.json").read_text())
    assert record == {"labels": ["neg", "pos", "mixed"], "pooling": "mean", "base_model": str(tiny_base)}
    assert (tmp_path / "clf" / "adapter_model.safetensors").exists()
    # a head that does not fit its labels is refused, not silently truncated
    record["labels"] = ["neg", "pos"]
    (tmp_path / "clf" / "classifier_config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not fit the backbone and its 2 labels"):
        load_classifier(tmp_path / "clf")
    with pytest.raises(CheckpointError, match="is not a classifier"):
        load_classifier(tiny_base)


# --- training on the one Trainer -------------------------------------------------------------------------------
def test_head_learns_a_separable_task_and_the_saved_classifier_predicts_it(tmp_path, tiny_base):
    out = tmp_path / "clf"
    result = run_classify(config(ClassifyConfig, init_from=tiny_base, data=TRAIN, val_data=DEV, max_steps=40,
                                 micro_batch=8, lr=3e-3, eval_every=20), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "accuracy" in r]
    assert sum(r["loss"] for r in train[:3]) / 3 > 0.6 > 0.2 > sum(r["loss"] for r in train[-3:]) / 3
    assert [r["step"] for r in records if "val_accuracy" in r] == [20, 40]
    assert result.eval["val_accuracy"] >= 7 / 8
    assert result.eval["val_ci95_low"] < result.eval["val_accuracy"] <= result.eval["val_ci95_high"] <= 1
    model, tokenizer = load_classifier(out)
    examples = read_examples(TRAIN)
    probs = classify_texts(model, tokenizer, [e.text for e in examples])
    assert (probs.argmax(-1) == torch.tensor(label_indices(examples, model.labels))).float().mean() > 0.95


def test_lora_trains_only_the_adapters_and_the_head(tmp_path, tiny_base):
    from llmkit.checkpoint import load_model

    out = tmp_path / "lora"
    run_classify(config(ClassifyConfig, init_from=tiny_base, data=TRAIN, max_steps=6, micro_batch=8, lr=1e-2,
                        peft="lora", lora_rank=4, lora_dropout=0.0, ckpt_every=6), out)
    trainable = load_file(out / "checkpoints" / "step_0000006" / "trainable.safetensors")
    assert trainable and all(k.endswith((".lora_A", ".lora_B")) or k.startswith("score.") for k in trainable)
    assert {"score.weight", "score.bias"} <= set(trainable)
    base, merged = load_model(tiny_base).state_dict(), load_model(out).state_dict()
    adapted = [k for k in base if k.endswith(("attn.qkv.weight", "attn.out.weight", "mlp.gate_up.weight",
                                              "mlp.down.weight"))]
    assert adapted and all(not torch.equal(base[k], merged[k]) for k in adapted)  # the adapters, merged in
    assert all(torch.equal(base[k], merged[k]) for k in base if k not in adapted)  # embeddings, norms: untouched


def test_config_fields_have_ranges_and_data_is_required(tiny_base):
    from llmkit.errors import ConfigError
    from llmkit.yaml_config import field_ranges

    import dataclasses
    import typing

    from llmkit.config_help import field_docs
    from llmkit.yaml_config import range_problem

    hints = typing.get_type_hints(ClassifyConfig)
    numeric = [f.name for f in dataclasses.fields(ClassifyConfig)
               if hints[f.name] in (int, float) or {int, float} & set(typing.get_args(hints[f.name]))]
    ranges = field_ranges(ClassifyConfig)
    assert "train_examples" in ranges and [n for n in numeric if n not in ranges] == []
    assert all(range_problem(ClassifyConfig, n, getattr(ClassifyConfig(), n)) is None for n in ranges)
    assert [d.name for d in field_docs(ClassifyConfig) if len(d.meaning) < 8] == []  # every field's --help text
    with pytest.raises(ConfigError, match="pooling must be"):
        ClassifyConfig(pooling="max")
    with pytest.raises(ConfigError, match="data is required"):
        run_classify(ClassifyConfig(init_from=str(tiny_base)), "/nonexistent-out")


def test_train_flags_and_overrides_build_the_config():
    from llmkit.classify.commands import LORA_LR, classify_train_config
    from llmkit.cli import build_parser

    def built(*extra):
        args, rest = build_parser().parse_known_args(["classify", "train", "--model", "m", "--data", "d.tsv",
                                                      "--out", "o", *extra])
        args.overrides += rest
        return classify_train_config(args)

    plain = built()
    assert (plain.init_from, plain.data, plain.val_data, plain.peft, plain.lr) == ("m", "d.tsv", None, "none", 5e-5)
    lora = built("--lora", "--dev", "v.jsonl", "pooling=mean")
    assert (lora.peft, lora.lr, lora.val_data, lora.pooling, lora.lora_rank) == ("lora", LORA_LR, "v.jsonl", "mean", 16)
    assert built("--lora", "lr=1e-3").lr == 1e-3  # a field=value wins over what --lora implies
    with pytest.raises(Exception, match="pooling must be"):
        built("pooling=max")


def test_cli_train_predict_and_eval(tmp_path, tiny_base):
    out = tmp_path / "clf"
    result = cli_in_process("classify", "train", "--model", tiny_base, "--data", TRAIN, "--dev", DEV, "--out", out,
                            "max_steps=30", "micro_batch=8", "lr=3e-3", "dtype=fp32", "threads=1", "plot=false")
    assert result.returncode == 0, result.stderr
    assert "val_accuracy" in result.stdout and (out / "classifier_head.safetensors").exists()
    result = cli_in_process("classify", "--model", out, "a wonderful , moving film", "a dull , tedious mess")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "'a wonderful , moving film'" and lines[1].split()[0] == "positive"
    assert lines[3] == "'a dull , tedious mess'" and lines[4].split()[0] == "negative"
    result = cli_in_process("classify", "eval", "--model", out, "--data", DEV)
    assert result.returncode == 0, result.stderr
    assert "(Wilson)" in result.stdout and "accuracy " in result.stdout and "/8)" in result.stdout
    result = cli_in_process("classify", "--model", tiny_base, "text")
    assert result.returncode == 2 and "is not a classifier" in result.stderr and result.stderr.count("\n") == 1


# --- zero-shot ------------------------------------------------------------------------------------------------
def test_label_word_logprobs_equal_a_plain_forward(tiny_base):
    from llmkit.checkpoint import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_base), load_tokenizer(tiny_base)
    words = parse_label_words("negative=terrible,positive=great")
    texts = ["a dull film", "the finest picture of the year"]
    got = label_logprobs(model, tokenizer, texts, words, "Review: {text} It was")
    for i, text in enumerate(texts):
        prompt = [tokenizer.bos_id] + tokenizer.encode(f"Review: {text} It was")
        for j, word in enumerate(words.words):
            whole = tokenizer.encode(f"Review: {text} It was {word}")
            tail = whole[len(prompt) - 1:]
            ids = prompt + tail
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
            expected = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(tail))
            assert got[i, j].item() == pytest.approx(expected, abs=1e-4)
    probs = label_probabilities(got)
    assert torch.allclose(probs.sum(-1), torch.ones(2, dtype=torch.float64))
    p_cf = content_free_probabilities(model, tokenizer, words, "Review: {text} It was")
    cf = label_probabilities(label_logprobs(model, tokenizer, list(CONTENT_FREE), words, "Review: {text} It was"))
    assert CONTENT_FREE == ("N/A", "", "[MASK]") and torch.allclose(p_cf, cf.mean(0))


def test_contextual_calibration_on_a_hand_example():
    """Zhao et al. 2021: W = diag(p_cf)^-1, b = 0, then renormalise. p_cf = (0.8, 0.2): the model says
    label 0 four times as readily on content-free input, so label 0's probability is divided by 0.8."""
    probs = torch.tensor([[0.7, 0.3], [0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
    p_cf = torch.tensor([0.8, 0.2], dtype=torch.float64)
    got = calibrate(probs, p_cf)
    # row 0: (0.7/0.8, 0.3/0.2) = (0.875, 1.5) -> (0.875/2.375, 1.5/2.375)
    assert got[0].tolist() == pytest.approx([0.875 / 2.375, 1.5 / 2.375])
    assert got[1].tolist() == pytest.approx([1.125 / 1.625, 0.5 / 1.625])
    assert got[2].tolist() == pytest.approx([0.5, 0.5])  # p_cf itself lands on uniform
    assert got.argmax(-1).tolist() == [1, 0, 0] != probs.argmax(-1).tolist()
    assert torch.allclose(calibrate(probs, torch.tensor([0.5, 0.5], dtype=torch.float64)), probs)  # uniform p_cf: no change
    assert torch.allclose(got.sum(-1), torch.ones(3, dtype=torch.float64))


def test_label_word_parsing_and_its_errors():
    words = parse_label_words("negative=terrible, positive=great")
    assert words.names == ["negative", "positive"] and words.words == ["terrible", "great"]
    assert parse_label_words("no,yes").words == ["no", "yes"]
    for bad, says in [("positive=great", "two or more"), ("a=x,a=y", "two or more distinct"),
                      ("a=x,b=x", "share a word"), ("a=,b=y", "empty label or word")]:
        with pytest.raises(DataError, match=says):
            parse_label_words(bad)


def test_cli_zero_shot_with_calibration_maps_numbered_labels(tmp_path, tiny_base):
    (tmp_path / "dev.tsv").write_text("a fine film\t1\na dull film\t0\nthe worst\t0\n")
    result = cli_in_process("classify", "zero-shot", "--model", tiny_base, "--data", tmp_path / "dev.tsv",
                            "--labels", "negative=terrible,positive=great", "--calibrate")
    assert result.returncode == 0, result.stderr
    assert "data labels read as indices of --labels: 0=negative, 1=positive" in result.stdout
    assert "accuracy (uncalibrated)" in result.stdout and "accuracy (calibrated)" in result.stdout
    assert "content-free label distribution: negative" in result.stdout
    result = cli_in_process("classify", "zero-shot", "--model", tiny_base, "--labels", "a=x,b=y",
                            "--template", "no slot", "some text")
    assert result.returncode == 2 and "has no {text}" in result.stderr
