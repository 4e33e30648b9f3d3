"""Training configuration: one dataclass for every stage, presets in `llmkit/presets/train/*.yaml`.

Any field can be overridden on the command line as `field=value`; model fields as `model.field=value`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmkit.config import ModelConfig, _check_type, parse_overrides
from llmkit.errors import ConfigError

TRAIN_PRESET_DIR = Path(__file__).resolve().parents[1] / "presets" / "train"


@dataclass
class TrainConfig:
    # -- model: a preset of llmkit/presets/models plus field overrides, or an existing checkpoint to continue
    model: str = "llama-cpu"
    model_overrides: dict = field(default_factory=dict)
    init_from: str | None = None  # checkpoint directory (or named model) to start from instead of random init
    # -- data: "shakespeare" (fetched, tokenized and cached automatically) or a token-shard directory
    data: str = "shakespeare"
    val_data: str | None = None  # token-shard directory; for "shakespeare" the held-out plays
    anneal_data: str | None = None  # token shards of a high-quality subset (`llmkit data clean` writes one)
    anneal_fraction: float = 0.1  # ... trained on for this last fraction of the steps
    tokenizer: str | None = None  # for raw built-in data: a tokenizer dir; None = train one of vocab_size
    vocab_size: int = 4096
    seq_len: int = 256
    micro_batch: int = 8  # sequences per forward/backward on each process
    batch_tokens: int = 0  # tokens per optimizer step over all processes; 0 = one micro-batch per process
    # -- optimisation
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for hidden matrices, AdamW for the rest)
    lr: float = 1e-3
    muon_lr: float = 0.02  # Muon's own learning rate (Jordan et al. 2024 use 0.02)
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay, Hu et al. 2024 MiniCPM)
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: the last fraction of steps decays linearly
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    # -- budget: max_steps, else max_tokens, else the Chinchilla rule (20 tokens per parameter)
    max_steps: int = 0
    max_tokens: int = 0
    time_limit_s: float = 0.0  # stop (and save) after this much training time; 0 = no limit
    # -- precision and speed
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # autocast dtype: auto = bf16 where the hardware has it, else fp32
    compile: bool = False
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard) instead of DDP
    threads: int = 0  # CPU threads; 0 = all cores of this process's share
    # -- evaluation, logging, checkpoints
    eval_every: int = 200
    eval_tokens: int = 0  # validation tokens per evaluation; 0 = the whole validation set
    sample_every: int = 0  # steps between printed samples; 0 = at evaluations only
    sample_tokens: int = 64
    log_every: int = 10
    ckpt_every: int = 0  # steps between resumable checkpoints; 0 = at the end only
    keep_checkpoints: int = 2
    seed: int = 1337
    plot: bool = True

    def __post_init__(self):
        checks = [
            (self.optimizer in ("adamw", "muon"), f"optimizer must be 'adamw' or 'muon', not {self.optimizer!r}"),
            (self.schedule in ("cosine", "wsd"), f"schedule must be 'cosine' or 'wsd', not {self.schedule!r}"),
            (self.dtype in ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
             f"dtype must be auto, bf16, fp16 or fp32, not {self.dtype!r}"),
            (self.seq_len > 0 and self.micro_batch > 0, "seq_len and micro_batch must be positive"),
            (self.lr > 0, f"lr must be positive, not {self.lr}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}"),
            (0 < self.decay_fraction <= 1, f"decay_fraction must be in (0, 1], not {self.decay_fraction}"),
            (0 <= self.anneal_fraction <= 1, f"anneal_fraction must be in [0, 1], not {self.anneal_fraction}"),
            (self.eval_every >= 0 and self.log_every > 0, "eval_every must be >= 0 and log_every > 0"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, not {self.keep_checkpoints}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            _check_type(key, value, hints[key], source)
        return cls(**data)

    @classmethod
    def preset(cls, name: str, overrides: list[str] | None = None) -> "TrainConfig":
        path = TRAIN_PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown training preset {name!r}; available: {', '.join(list_train_presets())}")
        data = yaml.safe_load(path.read_text()) or {}
        source = f"{path} with the command-line overrides" if overrides else str(path)
        return cls.from_dict(merge_overrides(data, overrides or []), source=source)

    def model_config(self) -> ModelConfig:
        return ModelConfig.preset(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `field=value` and `model.field=value` strings to a preset's dict."""
    data = {**data, "model_overrides": dict(data.get("model_overrides") or {})}
    for key, value in parse_overrides(overrides, source="command line").items():
        if key.startswith("model."):
            data["model_overrides"][key.removeprefix("model.")] = value
        else:
            data[key] = value
    return data


def list_train_presets() -> list[str]:
    return sorted(p.stem for p in TRAIN_PRESET_DIR.glob("*.yaml"))
