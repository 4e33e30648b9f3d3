"""Training configuration: one dataclass for every stage, presets in `llmkit/presets/train/*.yaml`.

Any field can be overridden on the command line as `field=value`; model fields as `model.field=value`.
Each field's comment is its documentation: `llmkit pretrain --help` (and every training verb's) prints
it beside the default (llmkit/config_help.py).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmkit.config import ModelConfig
from llmkit.errors import ConfigError
from llmkit.yaml_config import (Located, build_dataclass, check_ranges, checked_fields, load_preset, merged, origin,
                                parse_overrides)


@dataclass
class TrainConfig:
    # -- model: a preset of llmkit/presets/models plus field overrides, or an existing checkpoint to continue
    model: str = "llama-cpu"  # model preset (llmkit/presets/models) of a new, randomly initialised model
    model_overrides: dict = field(default_factory=dict)  # its fields changed; on the command line model.FIELD=value
    init_from: str | None = None  # checkpoint directory (or named model) to start from instead of random init
    # -- data: "shakespeare" (fetched, tokenized and cached automatically) or a token-shard directory
    data: str = "shakespeare"  # training data: "shakespeare" or a token-shard directory (llmkit data prepare)
    val_data: str | None = None  # token-shard directory; for "shakespeare" the held-out plays
    anneal_data: str | None = None  # token shards of a high-quality subset (`llmkit data clean` writes one)
    anneal_fraction: float = 0.1  # the last fraction of the steps, which train on anneal_data
    tokenizer: str | None = None  # for the built-in data: a tokenizer dir; null = train one of vocab_size
    vocab_size: int = 4096  # size of the BPE tokenizer trained for the built-in data
    seq_len: int = 256  # tokens per training sequence
    micro_batch: int = 8  # sequences per forward/backward on each process
    # tokens per optimizer step over all processes: the Trainer accumulates the nearest whole number of
    # micro-batches (at least one per process); 0 = one micro-batch per process
    batch_tokens: int = 0
    # pretraining objective: "next_token" (a decoder), "mlm", masked language modelling (an encoder: BERT), or
    # "span", span corruption (an encoder-decoder: T5)
    objective: str = "next_token"
    mlm_probability: float = 0.15  # mlm: the fraction of non-special tokens chosen (Devlin et al. 2019)
    span_density: float = 0.15  # span: the fraction of each window's tokens corrupted (Raffel et al. 2020)
    span_mean_length: float = 3.0  # span: the mean length of a corrupted span (Raffel et al. 2020)
    # -- optimisation
    optimizer: str = "adamw"  # "adamw", or "muon" (Muon for hidden matrices, AdamW for the rest)
    lr: float = 1e-3  # peak learning rate (AdamW's; after warmup, before decay)
    muon_lr: float = 0.02  # Muon's own learning rate (Jordan et al. 2024 use 0.02)
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay, Hu et al. 2024 MiniCPM)
    warmup_steps: int = 100  # steps of linear warmup from ~0 to the peak LR
    decay_fraction: float = 0.2  # WSD: the last fraction of steps decays linearly
    weight_decay: float = 0.1  # decoupled weight decay on matrices only (never norms or biases)
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay (0.95 as in GPT-3 and Llama)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    # -- budget: max_steps, else max_tokens, else the Chinchilla rule (20 tokens per parameter)
    max_steps: int = 0  # optimizer steps; 0 = from max_tokens (or, post-training, from epochs)
    max_tokens: int = 0  # training tokens; 0 = 20 per parameter (Chinchilla, Hoffmann et al. 2022)
    time_limit_s: float = 0.0  # stop (and save) after this much training time; 0 = no limit
    # -- precision and speed
    device: str = "auto"  # auto = cuda if available, else cpu
    dtype: str = "auto"  # autocast dtype: auto = bf16 where the hardware has it, else fp32
    compile: bool = False  # torch.compile the model (slow first steps, faster after)
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard) instead of DDP
    threads: int = 0  # CPU threads; 0 = all cores of this process's share
    # -- evaluation, logging, checkpoints
    eval_every: int = 200  # steps between evaluations on val_data; 0 = at the end only
    eval_tokens: int = 0  # validation tokens per evaluation; 0 = the whole validation set
    sample_every: int = 0  # steps between printed samples; 0 = at evaluations only
    sample_tokens: int = 64  # tokens of each printed sample
    log_every: int = 10  # steps between lines of metrics.jsonl (loss, lr, tokens/s, MFU)
    ckpt_every: int = 0  # steps between resumable checkpoints; 0 = at the end only
    keep_checkpoints: int = 2  # resumable checkpoints kept; older ones are deleted
    seed: int = 1337  # initialisation and data order
    plot: bool = True  # write loss.png at the end

    # The valid range of every numeric field (llmkit.yaml_config: checked where each value is read, with
    # its origin; a test holds that no numeric field lacks one). Counts of steps and tokens stop at 2^62
    # so that sums of them stay inside int64.
    RANGES = {
        "anneal_fraction": "[0, 1]", "mlm_probability": "(0, 1)", "span_density": "(0, 0.5]",
        "span_mean_length": "[1, 2^31)", "vocab_size": "[1, 2^21]", "seq_len": "[1, 2^31)",
        "micro_batch": "[1, 2^31)", "batch_tokens": "[0, 2^62)",
        "lr": "(0, inf)", "muon_lr": "(0, inf)", "min_lr_ratio": "[0, 1]", "warmup_steps": "[0, 2^62)",
        "decay_fraction": "(0, 1]", "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)",
        "grad_clip": "[0, inf)", "max_steps": "[0, 2^62)", "max_tokens": "[0, 2^62)", "time_limit_s": "[0, inf)",
        "threads": "[0, 2^16)", "eval_every": "[0, 2^62)", "eval_tokens": "[0, 2^62)", "sample_every": "[0, 2^62)",
        "sample_tokens": "[0, 2^31)", "log_every": "[1, 2^62)", "ckpt_every": "[0, 2^62)",
        "keep_checkpoints": "[1, 2^31)", "seed": "[0, 2^63)",
    }

    def __post_init__(self):
        check_ranges(self)
        checks = [
            (self.objective in ("next_token", "mlm", "span"),
             f"objective must be 'next_token', 'mlm' or 'span', not {self.objective!r}"),
            (self.optimizer in ("adamw", "muon"), f"optimizer must be 'adamw' or 'muon', not {self.optimizer!r}"),
            (self.schedule in ("cosine", "wsd"), f"schedule must be 'cosine' or 'wsd', not {self.schedule!r}"),
            (self.dtype in ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
             f"dtype must be auto, bf16, fp16 or fp32, not {self.dtype!r}"),
            # (torch also parses mps, xla, meta, ...: a run on one of those failed with a traceback mid-way)
            (isinstance(self.device, str) and re.fullmatch(r"auto|cpu(:0)?|cuda(:\d+)?", self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}"),
            (not self.anneal_data or self.anneal_fraction > 0,
             f"anneal_data={self.anneal_data} with anneal_fraction=0 trains on none of it; give anneal_fraction "
             "(e.g. 0.1, the last tenth of the steps) or leave anneal_data out"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "TrainConfig":
        """A config from a mapping of fields, each checked; model_overrides against the model config's
        fields too, so that a misspelt model.FIELD stops the run before any work."""
        model_overrides = data.get("model_overrides")
        if isinstance(model_overrides, Mapping):
            checked_fields(ModelConfig, model_overrides, source)
        return build_dataclass(cls, data, source)

    @classmethod
    def preset(cls, name: str, overrides: list[str] | Mapping[str, Any] | None = None,
               source: str = "command line") -> "TrainConfig":
        """A shipped preset (`llmkit/presets/train/NAME.yaml`) with fields overridden: `field=value` strings
        (from `source`) or a mapping (a Located one keeps the origin of each value); `model.FIELD` keys
        go to model_overrides."""
        data, path = load_preset("train", name, "training preset")
        data = for_this_machine(cls, data, path, overrides or {}, source)
        config = cls.from_dict(merge_overrides(data, overrides or {}, path, source), source=str(path))
        given = [pair.partition("=")[0].strip() for pair in overrides] if isinstance(overrides, list) else list(overrides or {})
        shaping = [key for key in given if key in ("model", "model_overrides") or key.startswith("model.")]
        if config.init_from and shaping:  # they were ignored: the run trained init_from's model as it is
            raise ConfigError(f"{source}: {', '.join(shaping)} shape a new model, but init_from={config.init_from} "
                              "starts from that model's own weights and shape; give one or the other")
        return config

    def model_config(self) -> ModelConfig:
        return ModelConfig.preset(self.model, **self.model_overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def merge_overrides(data: Mapping, overrides: list[str] | Mapping, path: str = "config",
                    source: str = "command line") -> Located:
    """`data` (a preset's fields, read from `path`) with `field=value` strings or a mapping (from `source`)
    on top; `model.FIELD` keys go into model_overrides. Each value keeps where it came from, for errors."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides, source)
    fields, model = Located(), Located()
    for key, value in overrides.items():
        target, name = (model, key.removeprefix("model.")) if key.startswith("model.") else (fields, key)
        target[name] = value
        target.sources[name] = origin(source, overrides, key)
    out = merged(data, path, fields, source)
    if "model" in fields and fields["model"] != data.get("model") and "model_overrides" not in fields:
        # The preset's model_overrides reshape the preset's own model; another model named on top of it
        # starts from that model's shape (only model.FIELD overrides given with it apply).
        out.pop("model_overrides", None)
    base = out.get("model_overrides") or {}
    if model and isinstance(base, Mapping):  # (a model_overrides that is not a mapping: the type check names it)
        out["model_overrides"] = merged(base, path, model, source)
    return out


# A preset may carry field overrides for machines that train in fp32 on a CPU (no AVX512-BF16 or AMX):
# there a step costs several times more, so the best size for the same minutes is smaller (BENCHMARKS.md,
# "Scaling laws": measured with `llmkit scaling right-size`). They go under the command line's fields, so
# anything given there still wins.
FP32_CPU_KEY = "fp32_cpu"


def for_this_machine(cls, data: Mapping, path, overrides, source: str) -> Mapping:
    """The preset's fields as this machine trains them: its `fp32_cpu:` block merged in where the run (with
    the given overrides) would train in fp32 on a CPU, and dropped elsewhere."""
    variant = data.get(FP32_CPU_KEY)
    if variant is None:
        return data
    base = Located({k: v for k, v in data.items() if k != FP32_CPU_KEY})
    if isinstance(data, Located):
        base.lines, base.line, base.sources = data.lines, data.line, data.sources
    if not isinstance(variant, Mapping):
        raise ConfigError(f"{path}: {FP32_CPU_KEY} must be a mapping of field: value (model.FIELD for the model's shape)")
    probe = cls.from_dict(merge_overrides(base, overrides, path, source), source=str(path))
    if not trains_in_fp32_on_cpu(probe.device, probe.dtype):
        return base
    return merge_overrides(base, dict(variant), path, f"{path} ({FP32_CPU_KEY}: this machine trains in fp32)")


def trains_in_fp32_on_cpu(device: str | None, dtype: str) -> bool:
    from llmkit.device import resolve_device, training_autocast_dtype

    resolved = resolve_device(device)
    return resolved.type == "cpu" and training_autocast_dtype(dtype, resolved) is None


def machine_note(preset_name: str, config) -> str | None:
    """The line a run prints when its preset's fp32_cpu fields shaped it: which of them the config holds
    (another model or a field on the command line replaces some or all) and why."""
    data, _ = load_preset("train", preset_name, "training preset")
    variant = data.get(FP32_CPU_KEY)
    if not isinstance(variant, Mapping) or not trains_in_fp32_on_cpu(config.device, config.dtype):
        return None

    def holds(key: str, value) -> bool:
        if key.startswith("model."):
            return config.model_overrides.get(key.removeprefix("model.")) == value
        return getattr(config, key, None) == value

    applied = [f"{k}={v}" for k, v in variant.items() if holds(k, v)]
    if not applied:
        return None
    fields = ", ".join(applied)
    return (f"preset {preset_name} on this machine: {fields} (its {FP32_CPU_KEY} fields: this CPU has no AVX512-BF16 "
            "or AMX, so training runs in fp32, several times slower a step, and a smaller model does better in the "
            "same minutes; measured in BENCHMARKS.md, 'Scaling laws'; fields given on the command line win)")
