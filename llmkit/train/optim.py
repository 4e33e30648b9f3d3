"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch

from llmkit.errors import ConfigError
from llmkit.train.config import TrainConfig


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear weights, embeddings) only; never on norms or biases, whose
    decay only shrinks the scale the model needs (as in GPT-3 / nanoGPT)."""
    decay, no_decay = [], []
    for p in _unique_trainable(model):
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _unique_trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]  # parameters() yields tied weights once


def build_optimizers(model: torch.nn.Module, config: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon (Jordan et al. 2024) for the hidden matrices plus AdamW for the
    embeddings, output head, norms and biases, which Muon is not meant for."""
    adam_kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8)
    # Fused AdamW (one kernel for all parameters) exists for CUDA and, since PyTorch 2.4, CPU.
    adam_kwargs["fused"] = True
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(parameter_groups(model, config.weight_decay), **adam_kwargs)]
    embeddings = {id(p) for name, p in model.named_parameters() if "emb" in name or "lm_head" in name}
    hidden = [p for p in _unique_trainable(model) if p.dim() == 2 and id(p) not in embeddings]
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in _unique_trainable(model) if id(p) not in hidden_ids]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # PyTorch's Muon (Newton-Schulz orthogonalised Nesterov momentum); its default LR adjustment scales
    # each update by sqrt(max(1, rows / cols)) as in Jordan et al.'s reference implementation.
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"optimizer=muon needs PyTorch's Muon (torch >= 2.9; this is {torch.__version__}); "
                          "upgrade torch or use optimizer=adamw")
    muon = torch.optim.Muon(hidden, lr=config.muon_lr, weight_decay=config.weight_decay, momentum=0.95)
    return [muon, torch.optim.AdamW(groups, **adam_kwargs)]


def lr_multiplier(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warmup, then cosine decay to
    min_lr_ratio (Loshchilov & Hutter 2017), or warmup-stable-decay: constant, then a linear decay
    over the last decay_fraction of training (MiniCPM, Hu et al. 2024)."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    decay_start = int(total_steps * (1 - config.decay_fraction))
    if step < max(decay_start, warmup):
        return 1.0
    progress = (step - decay_start) / max(total_steps - decay_start, 1)
    return 1.0 - (1 - floor) * min(progress, 1.0)
