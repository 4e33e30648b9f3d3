"""Configuration of the post-training stages: TrainConfig plus each stage's own fields.

Every stage config is a TrainConfig (the one Trainer reads the fields it knows), so presets are YAML
files in `llmkit/presets/train/` and any field can be overridden as `field=value` on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.errors import ConfigError
from llmkit.train.config import TrainConfig


@dataclass
class PostTrainConfig(TrainConfig):
    """The fields every post-training stage shares."""

    # -- what to start from: a checkpoint directory or a named model (smollm2); its tokenizer is used
    init_from: str | None = None  # checkpoint directory or named model (smollm2) to start from
    # -- data: a JSONL / JSON file in one of TRL's formats (llmkit/train/chat_data.py), or "assistant":
    # the built-in Shakespeare question task (llmkit/data/assistant_task.py)
    data: str = "assistant"  # training records: a .jsonl / .json file, or "assistant" (the built-in task)
    data_records: list | None = None  # [start, stop]: use these records of the file only
    val_data: str | None = None  # held-out file; for "assistant" its held-out questions
    val_records: list | None = None  # [start, stop]: use these records of val_data only
    val_fraction: float = 0.0  # without val_data: hold out this fraction of the records (the last ones)
    task_seed: int = 0  # the built-in task: question sampling seed
    task_train_per_kind: int = 1000  # the built-in task: training questions of each kind
    task_heldout_per_kind: int = 100  # the built-in task: held-out questions of each kind
    eval_task: bool = True  # with the built-in task: answer accuracy on held-out questions at evaluations
    eval_max_new_tokens: int = 24  # longest reply generated when scoring held-out answers and samples
    epochs: float = 1.0  # when max_steps is 0: passes over the training data
    packing: bool = True  # several sequences per row, with no attention across them
    # -- PEFT (llmkit/train/peft.py): none = full fine-tuning; lora (Hu et al. 2021); prompt (Lester et al. 2021)
    peft: str = "none"  # none (every weight trains), lora or prompt
    lora_rank: int = 8  # rank r of LoRA's update B @ A
    lora_alpha: float = 16.0  # LoRA's update is scaled by alpha / r
    lora_dropout: float = 0.05  # dropout on LoRA's input
    # the Linear layers LoRA adapts (q/k/v and gate/up are fused, so these four are all of them)
    lora_targets: list = field(default_factory=lambda: ["attn.qkv", "attn.out", "mlp.gate_up", "mlp.down"])
    prompt_tokens: int = 20  # prompt tuning: learned soft-prompt vectors put before every prompt
    # -- defaults for fine-tuning rather than pretraining
    lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    micro_batch: int = 8
    seq_len: int = 512
    eval_every: int = 0
    log_every: int = 5

    RANGES = {  # (with TrainConfig's; see llmkit.yaml_config)
        "val_fraction": "[0, 1)", "task_seed": "[0, 2^63)", "task_train_per_kind": "[1, 2^31)",
        "task_heldout_per_kind": "[0, 2^31)", "eval_max_new_tokens": "[1, 2^31)", "epochs": "(0, 1e6]",
        "lora_rank": "[1, 2^16)", "lora_alpha": "(0, inf)", "lora_dropout": "[0, 1)", "prompt_tokens": "[1, 2^16)",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.peft not in ("none", "lora", "prompt"):
            raise ConfigError(f"peft must be none, lora or prompt, not {self.peft!r}")


@dataclass
class SFTConfig(PostTrainConfig):
    """Supervised fine-tuning: cross-entropy on assistant tokens (messages) or completions."""


@dataclass
class RewardConfig(PostTrainConfig):
    """A reward model: the Transformer + a scalar head, Bradley-Terry loss on chosen vs rejected."""

    lr: float = 1e-4


@dataclass
class DPOConfig(PostTrainConfig):
    """Direct Preference Optimization (Rafailov et al. 2023) or IPO (Azar et al. 2023)."""

    # -- DPO
    beta: float = 0.1  # DPO's beta: 0.1 in Rafailov et al. 2023 (section 6) and TRL
    loss: str = "sigmoid"  # "sigmoid" (DPO) or "ipo"
    # + rpo_alpha x cross-entropy of the chosen replies (RPO, Pang et al. 2024; TRL's rpo_alpha): keeps the
    # chosen reply's own likelihood from falling while the margin grows
    rpo_alpha: float = 0.0
    lr: float = 5e-6
    # dropout off in the policy (the model's and LoRA's), as TRL's DPOConfig does by default: the reference's
    # log-probabilities are taken without it, so with it the implicit rewards start as noise, not at 0
    disable_dropout: bool = True

    RANGES = {"beta": "(0, inf)", "rpo_alpha": "[0, inf)"}

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in ("sigmoid", "ipo"):
            raise ConfigError(f"loss must be sigmoid or ipo, not {self.loss!r}")


@dataclass
class RLConfig(PostTrainConfig):
    """RLHF with a critic-free group baseline (RLOO / GRPO) against a reward model, KL to the reference."""

    # -- RLHF
    reward_model: str | None = None  # a `llmkit reward` output directory, or "answers" (the records' answer key)
    group_size: int = 4  # completions sampled per prompt (RLOO: Ahmadian et al. 2024 use k = 4)
    baseline: str = "rloo"  # "rloo": leave-one-out mean; "grpo": group mean and std (Shao et al. 2024)
    kl_coef: float = 0.05  # beta of the KL penalty to the frozen reference
    clip_eps: float = 0.2  # PPO's clip range (Schulman et al. 2017) for updates_per_batch > 1
    updates_per_batch: int = 1  # optimizer steps on each batch of rollouts (1: purely on-policy)
    missing_eos_penalty: float = 1.0  # subtracted from the reward of a completion cut off by max_new_tokens
    max_new_tokens: int = 32  # longest sampled completion
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling of the rollouts (1 = off)
    micro_batch: int = 8  # prompts per micro-batch (times group_size completions)
    lr: float = 1e-5
    # dropout off in the policy, as TRL's RL trainers do: the rollouts' and the reference's log-probabilities are
    # taken without it, so with it the ratio and the KL would start away from 1 and 0 by noise alone
    disable_dropout: bool = True
    epochs: float = 1.0

    # group_size: at least 2, since the baseline comes from the group
    RANGES = {"group_size": "[2, 2^16)", "kl_coef": "[0, inf)", "clip_eps": "(0, inf)", "updates_per_batch": "[1, 2^16)",
              "missing_eos_penalty": "[0, inf)", "max_new_tokens": "[1, 2^31)", "temperature": "[0.0001, 100]",
              "top_p": "(0, 1]"}

    def __post_init__(self):
        super().__post_init__()
        if self.baseline not in ("rloo", "grpo"):
            raise ConfigError(f"baseline must be rloo or grpo, not {self.baseline!r}")


@dataclass
class DistillConfig(PostTrainConfig):
    """Knowledge distillation (Hinton et al. 2015): a student matches a teacher's token distributions."""

    # -- distillation
    teacher: str | None = None  # checkpoint directory or named model
    temperature: float = 2.0  # softens both distributions; the loss is scaled by T^2 (Hinton et al., section 2)
    hard_weight: float = 0.0  # weight of the ordinary cross-entropy on the data's next tokens (1 - this on the KL)
    data: str = "shakespeare"  # "shakespeare" (in the teacher's tokens), token shards, JSONL, or "assistant"
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    model: str = "tiny"  # model preset of the student (its vocabulary becomes the teacher's)
    eval_every: int = 100

    RANGES = {"temperature": "[0.01, 100]", "hard_weight": "[0, 1]"}  # (t / T overflows for a tiny T)
