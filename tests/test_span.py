"""Span corruption (T5, Raffel et al. 2020) through the one Trainer: the corruption's statistics (noise
density 0.15, mean span length 3, every window alike), the original recovered from input and target,
corruption fixed by (seed, step, micro), and a few steps of `llmkit pretrain objective=span` lowering the
validation loss of an encoder-decoder."""

import json

import numpy as np
import torch

from llmkit.tokenizer import Tokenizer
from llmkit.train.span import N_SENTINELS, SpanCorruptor, sentinel, span_lengths, with_sentinels

from conftest import SHAKESPEARE, cli_in_process


def _copy(tokenizer):
    from tokenizers import Tokenizer as Backend

    return Tokenizer(Backend.from_str(tokenizer.backend.to_str()), bos_token=tokenizer.bos_token,
                     eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)


def _uncorrupt(inputs, targets, sentinels, eos):
    """The window back from the encoder's input and the decoder's target."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, current = {}, None
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    window = []
    for token in inputs[:-1]:
        window += spans[token] if token in sentinels else [token]
    return window, spans


def test_span_corruption_statistics_follow_t5(shakespeare_tokenizer):
    tokenizer = with_sentinels(_copy(shakespeare_tokenizer))  # (a copy: the session's fixture stays as it is)
    vocab = shakespeare_tokenizer.vocab_size
    assert [tokenizer.backend.token_to_id(sentinel(i)) for i in (0, 99)] == [vocab, vocab + 99]
    assert tokenizer.vocab_size == vocab + N_SENTINELS
    assert tokenizer.encode("To be") == shakespeare_tokenizer.encode("To be")  # no other id moved
    corruptor = SpanCorruptor(tokenizer, decoder_start=0)
    sentinels = set(corruptor.sentinel_ids)
    windows = torch.randint(20, vocab, (400, 128), generator=torch.Generator().manual_seed(0))
    inputs, decoder_inputs, targets = corruptor.corrupt_batch(windows, np.random.default_rng(1))
    assert span_lengths(128, 0.15, 3.0) == (19, 6)
    # every window alike: 128 - 19 kept + 6 sentinels + EOS in, 19 + 6 sentinels + EOS out; no padding
    assert inputs.shape == (400, 116) and targets.shape == (400, 26)
    assert torch.equal(decoder_inputs[:, 0], torch.zeros(400, dtype=torch.long))
    assert torch.equal(decoder_inputs[:, 1:], targets[:, :-1])  # teacher forcing: the targets shifted right
    lengths, starts = [], []
    for window, source, target in zip(windows.tolist(), inputs.tolist(), targets.tolist()):
        recovered, spans = _uncorrupt(source, target, sentinels, tokenizer.eos_id)
        assert recovered == window
        assert list(spans) == corruptor.sentinel_ids[:6]  # sentinels numbered from 0 in order
        lengths += [len(s) for s in spans.values()]
        starts.append(source.index(corruptor.sentinel_ids[0]))
    assert min(lengths) >= 1 and sum(lengths) == 400 * 19
    assert abs(np.mean(lengths) - 19 / 6) < 1e-9  # = 3.17: round(0.15 * 128) noise tokens in round(19 / 3) spans
    assert np.std(lengths) > 1  # span lengths vary (a random composition, not fixed-length spans)
    assert min(starts) >= 1 and np.mean(starts) > 5  # a kept run comes first; where spans fall varies
    noisy = np.zeros(128)
    for row in windows[:400]:
        noisy += corruptor.noise_mask(128, np.random.default_rng(int(row[0])))
    assert noisy[1:].min() > 0 and noisy[0] == 0  # any position but the first can be corrupted
    a, b, c = (corruptor.batch(windows[:4], 7, step, 0)[0] for step in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)  # decided by (seed, step, micro): resume sees the same


TRAIN_FILES = [SHAKESPEARE / "train" / "as_you_like_it_gut.txt"]


def test_span_pretraining_lowers_the_loss(tmp_path):
    root = tmp_path
    assert cli_in_process("tokenizer", "train", "--input", *TRAIN_FILES, "--vocab-size", 512, "--out",
                          root / "tok").returncode == 0
    for split, inputs in (("train", TRAIN_FILES), ("val", [SHAKESPEARE / "val"])):
        result = cli_in_process("data", "prepare", "--input", *inputs, "--tokenizer", root / "tok", "--out", root / split)
        assert result.returncode == 0, result.stderr
    args = ["model=t5-cpu", "objective=span", f"data={root / 'train'}", f"val_data={root / 'val'}", "seq_len=64",
            "micro_batch=8", "max_steps=60", "eval_every=30", "eval_tokens=16384", "lr=3e-3", "warmup_steps=5",
            "log_every=1", "ckpt_every=0", "dtype=fp32", "time_limit_s=0", "plot=false", "threads=1",
            "model.n_layers=2", "model.n_encoder_layers=2", "model.d_model=64", "model.n_heads=4",
            "model.head_dim=16", "model.d_ff=128", "model.max_seq_len=64"]
    result = cli_in_process("pretrain", "--out", root / "run", *args)
    assert result.returncode == 0, result.stderr
    assert 'generate --model' in result.stdout and 'My <extra_id_0> is Juliet."' in result.stdout
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_target_accuracy" in r]
    assert [r["step"] for r in evals] == [30, 60] and evals[1]["val_loss"] < evals[0]["val_loss"]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    config = json.loads((root / "run" / "config.json").read_text())
    assert config["n_encoder_layers"] == 2 and config["vocab_size"] >= 512 + N_SENTINELS
    assert json.loads((root / "run" / "tokenizer.json").read_text())["added_tokens"][-1]["content"] == sentinel(99)
    # the engine generates from it: the source (a sentinel in it) is the prompt
    result = cli_in_process("generate", "--model", root / "run", "--max-new-tokens", "4", "--temperature", "0",
                            "ROMEO: My <extra_id_0> is Juliet.")
    # (the reply alone, not the prompt: it is no continuation) opens with the first sentinel, as T5's targets do
    assert result.returncode == 0 and result.stdout.startswith(sentinel(0)), (result.stdout, result.stderr)
    # the objective and the model's kind must agree
    result = cli_in_process("pretrain", "--out", root / "bad", *args[:5], "model=tiny", "max_steps=1")
    assert result.returncode == 2 and "objective=span needs an encoder-decoder" in result.stderr, result.stderr
