"""Distillation: the loss is T^2 * KL(teacher_T || student_T) (zero when the student is the teacher), and
a student trained on a teacher's distributions moves towards them on held-out text."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.train.distill import distillation_loss
from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)


def test_distillation_loss_is_scaled_kl_and_zero_for_the_teacher_itself():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, 0] = -100
    loss, metrics = distillation_loss(teacher.clone(), teacher, targets, temperature=2.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 5, 11, requires_grad=True)
    loss, metrics = distillation_loss(student, teacher, targets, temperature=2.0)
    valid = targets != -100
    p = F.softmax(teacher[valid] / 2, -1)
    kl = (p * (p.log() - F.log_softmax(student[valid] / 2, -1))).sum(-1).mean()
    assert loss.item() == pytest.approx(4 * kl.item(), rel=1e-5) and metrics["kl"] == pytest.approx(kl.item(), rel=1e-5)
    # hard_weight mixes in the ordinary cross-entropy
    mixed, metrics = distillation_loss(student, teacher, targets, temperature=2.0, hard_weight=0.25)
    ce = F.cross_entropy(student[valid], targets[valid])
    assert mixed.item() == pytest.approx(0.75 * 4 * kl.item() + 0.25 * ce.item(), rel=1e-5)


def test_student_learns_the_teachers_distributions(tmp_path, tiny_base, task_files):
    """A smaller student (1 layer, d_model 32) distilled from the tiny base on the task's conversations
    gets closer to the teacher's next-token distributions on held-out questions."""
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.train.chat_data import encode_conversation
    from llmkit.train.distill import run_distill
    from llmkit.train.post_config import DistillConfig

    out = tmp_path / "student"
    run_distill(config(DistillConfig, teacher=tiny_base, data=task_files["sft"], model="tiny", max_steps=80, lr=1e-2,
                       temperature=2.0, micro_batch=8, warmup_steps=5,
                       model_overrides={"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64}),
                out)
    teacher, student = load_model(tiny_base), load_model(out)
    assert student.num_params() < teacher.num_params() / 2
    assert load_tokenizer(out).vocab_size == load_tokenizer(tiny_base).vocab_size
    torch.manual_seed(0)
    untrained = Transformer(ModelConfig.preset("tiny", n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64))
    tok = load_tokenizer(tiny_base)
    import json

    texts = [json.loads(line) for line in task_files["heldout"].read_text().splitlines()[:20]]
    ids = [encode_conversation(tok, r["prompt"] + r["chosen"]).ids[:128] for r in texts]

    def kl_to_teacher(model):
        total = 0.0
        with torch.no_grad():
            for seq in ids:
                x = torch.tensor([seq])
                p = F.log_softmax(teacher(x), -1)
                total += (p.exp() * (p - F.log_softmax(model(x), -1))).sum(-1).mean().item()
        return total / len(ids)

    before, after = kl_to_teacher(untrained), kl_to_teacher(student)
    assert after < 0.5 * before, (before, after)
    assert math.isfinite(after)
