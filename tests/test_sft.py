import pytest
"""Supervised fine-tuning: packed rows with a document mask compute what the documents compute alone,
the loss covers assistant tokens only, and `llmkit sft` trains a checkpoint that then answers in the
chat format (run through the CLI as a user would)."""

import json
import math

import torch

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.train.packing import Item, collate, pack, pack_rows, per_sequence_sum
from conftest import cli_in_process, run_cli
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def test_packed_rows_with_document_mask_equal_documents_run_alone():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny")).eval()
    docs = [torch.randint(0, 512, (n,)).tolist() for n in (30, 7, 18, 25, 11)]
    items = [Item(d[:-1], [t if i % 3 else -100 for i, t in enumerate(d[1:])]) for d in docs]
    batch = pack(items, row_len=48)
    assert batch["input_ids"].shape[0] < len(docs)  # several documents share a row
    per_token = model(batch["input_ids"], batch["targets"], reduction="none", positions=batch["positions"],
                      doc_ids=batch["doc_ids"])
    logits = model(batch["input_ids"], positions=batch["positions"], doc_ids=batch["doc_ids"])
    packed_sums = per_sequence_sum(per_token, batch["seq_index"], len(items))
    for i, item in enumerate(items):
        alone = model(torch.tensor([item.inputs]))[0]
        where = (batch["seq_index"] == i).nonzero()
        assert torch.allclose(logits[where[:, 0], where[:, 1]], alone, atol=1e-5)
        targets = torch.tensor(item.targets)
        alone_loss = torch.nn.functional.cross_entropy(alone, targets, ignore_index=-100, reduction="sum")
        assert torch.allclose(packed_sums[i], alone_loss, atol=1e-4)
    # without the mask the documents would see each other: the test can tell the difference
    leaky = model(batch["input_ids"], positions=batch["positions"])
    assert not torch.allclose(leaky, logits, atol=1e-3)


def test_first_fit_decreasing_fills_rows():
    lengths = [60, 10, 50, 40, 30, 20, 5]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 4  # 215 tokens: the minimum is ceil(215 / 64) = 4
    batch = collate([Item([1] * n, [-100] * n) for n in lengths], rows, 64)
    assert (batch["doc_ids"] >= 0).sum() == sum(lengths)


@pytest.mark.slow
def test_sft_through_the_cli_learns_the_chat_format(tmp_path, tiny_base, task_files):
    out = tmp_path / "sft"
    result = run_cli("sft", "--out", out, f"init_from={tiny_base}", f"data={task_files['sft']}",
                     f"val_data={task_files['heldout']}", "seq_len=256", "micro_batch=8", "max_steps=60", "lr=1e-2",
                     "dtype=fp32", "eval_every=30", "threads=1", "plot=true", "warmup_steps=5")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [30, 60] and evals[1]["val_loss"] < evals[0]["val_loss"]
    assert "task_accuracy" in evals[-1] and {"acc_play", "acc_speaker", "acc_continue", "acc_passage"} <= set(evals[-1])
    assert evals[-1]["val_loss"] < math.log(512) - 1.5  # far below a uniform guess over the vocabulary
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss.png"):
        assert (out / name).exists()
    # the fine-tuned model has learned to end its reply: after a held-out answer, <|end|> is likely
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.train.chat_data import encode_conversation

    tok = load_tokenizer(out)
    end = tok.backend.token_to_id("<|end|>")

    def p_end(model):
        probs = []
        for line in task_files["heldout"].read_text().splitlines()[:20]:
            record = json.loads(line)
            ids = encode_conversation(tok, record["prompt"] + record["chosen"]).ids
            cut = ids.index(end, len(ids) - 3)  # the reply's end marker
            with torch.no_grad():
                probs.append(torch.softmax(model(torch.tensor([ids[:cut]]))[0, -1], -1)[end].item())
        return sum(probs) / len(probs)

    assert p_end(load_model(tiny_base)) < 0.01 and p_end(load_model(out)) > 0.2  # ~1/512 before


def test_sft_errors_are_one_line_with_file_and_line(tmp_path, tiny_base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n')
    result = cli_in_process("sft", "--out", tmp_path / "x", f"init_from={tiny_base}", f"data={bad}")
    assert result.returncode == 2 and f"{bad}:2: field 'messages': message 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli_in_process("sft", "--out", tmp_path / "x", f"data={bad}")
    assert result.returncode == 2 and "init_from is required" in result.stderr
    result = cli_in_process("sft", "--out", tmp_path / "x", f"init_from={tiny_base}", f"data={bad}", "peft=qlora")
    assert result.returncode == 2 and "peft must be none, lora or prompt" in result.stderr
