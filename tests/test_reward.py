"""Reward model: a scalar head on the last token of each packed sequence, the Bradley-Terry loss and its
gradient sign, held-out pairwise accuracy with a Wilson interval, and save / load of the head with a
LoRA backbone."""

import json
import math

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.eval.stats import wilson_interval
from llmkit.model import Transformer
from llmkit.train.reward import (RewardModel, bradley_terry_loss, load_reward_model, pairwise_accuracy, score,
                                 sequence_batch)
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def test_bradley_terry_loss_and_gradient_sign():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.3, 2.0], requires_grad=True)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    expected = (math.log(2) + math.log(1 + math.exp(3.0))) / 2  # -log sigmoid(r_w - r_l), mean
    assert loss.item() == pytest.approx(expected, rel=1e-6) and metrics["accuracy"] == 0.0
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    assert torch.allclose(chosen.grad, -rejected.grad)


def test_reward_is_read_at_each_sequence_last_token_of_packed_rows():
    torch.manual_seed(0)
    model = RewardModel(Transformer(ModelConfig.preset("tiny"))).eval()
    sequences = [torch.randint(0, 512, (n,)).tolist() for n in (9, 20, 5, 14)]
    batch = sequence_batch(sequences, row_len=32, pad_id=0)
    assert batch["input_ids"].shape[0] < len(sequences)
    packed = model(batch["input_ids"], batch["last_index"], positions=batch["positions"], doc_ids=batch["doc_ids"])
    alone = torch.stack([model(torch.tensor([s]), torch.tensor([len(s) - 1]))[0] for s in sequences])
    assert torch.allclose(packed, alone, atol=1e-5)
    # a different last token changes the reward; tokens of another sequence in the row do not
    changed = [s[:-1] + [(s[-1] + 1) % 512] for s in sequences[:1]] + sequences[1:]
    batch2 = sequence_batch(changed, row_len=32, pad_id=0)
    packed2 = model(batch2["input_ids"], batch2["last_index"], positions=batch2["positions"], doc_ids=batch2["doc_ids"])
    assert packed2[0] != packed[0] and torch.allclose(packed2[1:], packed[1:], atol=1e-5)


def test_wilson_interval_and_pairwise_accuracy():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(240, 400)  # 60% of 400 pairs: the interval excludes 50%
    assert low > 0.5
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, -1.0]])
    result = pairwise_accuracy(rewards)
    assert result["accuracy"] == pytest.approx(2.5 / 4) and result["n"] == 4


def test_reward_model_learns_training_pairs(tmp_path, tiny_base, task_files):
    """48 of the task's pairs seen 10 times: the reward model ranks them right, also once reloaded."""
    from llmkit.train.post_config import RewardConfig
    from llmkit.train.reward import run_reward

    out = tmp_path / "rm"
    result = run_reward(config(RewardConfig, init_from=tiny_base, data=task_files["preference"], data_records=[0, 48],
                               val_data=task_files["heldout"], max_steps=60, micro_batch=8, lr=3e-3, eval_every=30), out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "accuracy" in r]
    assert sum(r["accuracy"] for r in train[-10:]) / 10 > 0.9 > sum(r["accuracy"] for r in train[:3]) / 3
    assert [r["step"] for r in records if "val_accuracy" in r] == [30, 60]
    assert 0 <= result.eval["val_ci95_low"] <= result.eval["val_accuracy"] <= result.eval["val_ci95_high"] <= 1
    model, tokenizer = load_reward_model(out)
    rows = [json.loads(line) for line in task_files["preference"].read_text().splitlines()[:48]]
    chosen = score(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], max_len=256)
    rejected = score(model, tokenizer, [r["prompt"] for r in rows], [r["rejected"] for r in rows], max_len=256)
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) > 0.9


def test_reward_model_with_lora_saves_merged_backbone_head_and_adapter(tmp_path, tiny_base, task_files):
    from llmkit.checkpoint import load_model
    from llmkit.train.peft import load_adapter
    from llmkit.train.post_config import RewardConfig
    from llmkit.train.reward import HEAD_FILE, run_reward

    out = tmp_path / "rm-lora"
    run_reward(config(RewardConfig, init_from=tiny_base, data=task_files["preference"], max_steps=8, micro_batch=8,
                      lr=1e-2, peft="lora"), out)
    for name in ("config.json", "model.safetensors", HEAD_FILE, "adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).exists(), name
    merged, tokenizer = load_reward_model(out)
    unmerged = RewardModel(load_adapter(load_model(tiny_base), out))
    from safetensors.torch import load_file

    unmerged.score.load_state_dict(load_file(out / HEAD_FILE))
    unmerged.eval()
    rows = [json.loads(line) for line in task_files["heldout"].read_text().splitlines()[:8]]
    args = ([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    a, b = score(merged, tokenizer, *args), score(unmerged, tokenizer, *args)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    assert len(set(round(x, 4) for x in a)) > 1  # different replies, different rewards
