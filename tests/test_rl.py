"""RLHF with a critic-free group baseline: RLOO / GRPO advantages, the clipped surrogate's gradient
(== REINFORCE with a baseline at ratio 1; zero where the ratio is clipped), the frozen reference costs no
copy and equals the starting policy. (An end-to-end run that raises a reward model's score is not
demonstrated yet: see the issue notes.)"""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.model import Transformer
from llmkit.train.packing import completion_item, pack
from llmkit.train.rl import _Reference, group_advantages, policy_loss, token_logprobs


def test_group_advantages():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    rloo = group_advantages(rewards, "rloo")
    assert torch.allclose(rloo[0], torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3]))
    assert torch.allclose(rloo.sum(dim=1), torch.zeros(2), atol=1e-6) and torch.equal(rloo[1], torch.zeros(4))
    grpo = group_advantages(rewards, "grpo")
    assert torch.allclose(grpo[0].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(grpo[0].std(), torch.tensor(1.0), atol=1e-3) and torch.equal(grpo[1], torch.zeros(4))


def rollout_batch(model, seed=0):
    torch.manual_seed(seed)
    prompts = [torch.randint(0, 512, (5,)).tolist() for _ in range(2)]
    completions = [torch.randint(0, 512, (n,)).tolist() for n in (3, 6, 4, 2)]
    items = [completion_item(prompts[i // 2], c) for i, c in enumerate(completions)]
    batch = pack(items, 32)
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return batch


def test_surrogate_at_ratio_one_is_reinforce_with_a_baseline():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    batch = rollout_batch(model)
    logp = token_logprobs(model, batch)
    loss, _ = policy_loss(logp, batch, clip_eps=0.2, kl_coef=0.0, kl_in_loss=False)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    mask = batch["targets"] != -100
    per_seq = torch.zeros(4).index_add(0, batch["seq_index"][mask], logp[mask])
    reinforce = -(batch["advantages"] * per_seq).sum() / mask.sum()
    expected = torch.autograd.grad(reinforce, list(model.parameters()))
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected))


def test_clipped_tokens_get_no_gradient_and_grpo_adds_a_kl_term():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    batch = rollout_batch(model)
    logp = token_logprobs(model, batch)
    # the policy has moved far up on every token since the rollouts: ratio e^1 > 1.2, advantages > 0 clipped
    batch["advantages"] = torch.ones(4)
    batch["old_logp"] = (logp - 1.0).detach()
    loss, metrics = policy_loss(logp, batch, clip_eps=0.2, kl_coef=0.0, kl_in_loss=False)
    assert metrics["clip_fraction"] == 1.0
    assert all(g is None or g.abs().max() == 0 for g in torch.autograd.grad(loss, list(model.parameters()),
                                                                            allow_unused=True))
    # GRPO: k3 KL to the reference is 0 when policy == reference, positive otherwise
    del batch["old_logp"]
    batch["ref_logp"] = logp.detach()
    _, metrics = policy_loss(logp, batch, 0.2, kl_coef=0.1, kl_in_loss=True)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-7)
    batch["ref_logp"] = logp.detach() - 0.5
    _, metrics = policy_loss(logp, batch, 0.2, kl_coef=0.1, kl_in_loss=True)
    assert metrics["kl"] > 0


def test_frozen_reference_is_the_starting_policy_without_a_copy_of_the_model():
    from llmkit.train.peft import apply_lora

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny"))
    ids = torch.randint(0, 512, (2, 12))
    for lora in (False, True):
        if lora:  # (the base weights keep the first round's training: they are this round's start)
            apply_lora(model, rank=4, alpha=8)
        with torch.no_grad():
            start = model(ids)
        reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))  # training moved the policy
            assert not torch.allclose(model(ids), start, atol=1e-3)
            assert torch.allclose(_Reference(model, reference)(ids), start, atol=1e-5)
        if lora:
            assert sum(t.numel() for t in reference.values()) < sum(p.numel() for p in model.parameters()) / 5
