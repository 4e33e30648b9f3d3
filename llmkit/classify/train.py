"""Fine-tuning a sequence classifier on the one Trainer: cross-entropy of the head's logits against the
labels, full fine-tuning or LoRA / prompt tuning (llmkit/train/peft.py; the head always trains), held-out
accuracy with its Wilson 95% interval at each evaluation, the classifier saved in the one checkpoint format.

    llmkit classify train --model smollm2 --data train.tsv --dev dev.tsv --out DIR --lora
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit.classify.data import Example, label_indices, label_names, read_examples, subsample
from llmkit.classify.head import (SequenceClassifier, classification_batch, classify_sequences, encode_texts,
                                  resolve_pooling, save_classifier)
from llmkit.errors import ConfigError, DataError
from llmkit.eval.stats import wilson_interval
from llmkit.train.peft import apply_peft, prompt_prefix_ids
from llmkit.train.post_common import check_held_out, items_for, start_model
from llmkit.train.post_config import PostTrainConfig
from llmkit.train.trainer import Trainer, TrainResult


@dataclass
class ClassifyConfig(PostTrainConfig):
    """A sequence classifier: the Transformer + a pooled linear head, cross-entropy on the labels."""

    data: str | None = None  # training examples: a TSV (text<TAB>label) or JSONL ({"text", "label"}) file
    val_data: str | None = None  # held-out examples (same formats): accuracy with a 95% interval at evaluations
    labels: list | None = None  # the label names in the head's order; default: those of the data, sorted
    pooling: str = "auto"  # last (causal models' last token), cls (first token), mean; auto: by the model
    train_examples: int = 0  # a seeded random sample of this many training examples; 0 = all of them
    eval_task: bool = False  # (the built-in task's answer accuracy: not for classification)
    seq_len: int = 128  # longest text in tokens (longer texts lose their end)
    micro_batch: int = 16
    lr: float = 5e-5  # full fine-tuning: BERT's 2e-5..5e-5 (Devlin et al. 2019, appendix A.3); --lora sets 5e-4
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0  # one epoch: little to regularise; on CPU the dropout masks cost ~20% of a step
    log_every: int = 10

    RANGES = {"train_examples": "[0, 2^31)"}

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in ("auto", "last", "cls", "mean"):
            raise ConfigError(f"pooling must be auto, last, cls or mean, not {self.pooling!r}")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(logits, labels)
    return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}


def accuracy_with_interval(probs: torch.Tensor, labels: list[int] | torch.Tensor) -> dict:
    """Accuracy of the argmax of probs (n, k) with its Wilson 95% interval (Wilson 1927; llmkit.eval.stats)."""
    labels = torch.as_tensor(labels)
    correct = int((probs.argmax(-1) == labels).sum()) if len(labels) else 0
    low, high = wilson_interval(correct, len(labels))
    return {"accuracy": correct / max(len(labels), 1), "correct": correct, "n": len(labels),
            "ci95_low": low, "ci95_high": high}


def training_examples(config: ClassifyConfig) -> tuple[list[Example], list[Example]]:
    if not config.data or config.data == "assistant":
        raise ConfigError("data is required: a TSV (text<TAB>label) or JSONL ({\"text\", \"label\"}) file "
                          "(`llmkit classify train --data FILE`)")
    train = read_examples(config.data)
    if config.data_records:
        start, stop = config.data_records
        train = train[start:stop]
    train = subsample(train, config.train_examples, config.seed)
    if config.val_data:
        val = read_examples(config.val_data)
        if config.val_records:
            start, stop = config.val_records
            val = val[start:stop]
        return train, val
    if config.val_fraction:
        n_val = max(1, int(len(train) * config.val_fraction))
        check_held_out(config.data, len(train), n_val, config.val_fraction)
        return train[:-n_val], train[-n_val:]
    return train, []


def run_classify(config: ClassifyConfig, out: str | Path, resume: bool = False) -> TrainResult:
    train, val = training_examples(config)
    labels = [str(x) for x in config.labels] if config.labels else label_names(train)
    if len(labels) < 2:
        raise DataError(f"{config.data}: every example has the label {labels[0]!r}; a classifier needs two or more")
    train_y, val_y = label_indices(train, labels), label_indices(val, labels)
    transformer, tokenizer, base_dir = start_model(config)
    model = SequenceClassifier(transformer, labels, resolve_pooling(config.pooling, transformer.config),
                               seed=config.seed)
    model.max_len = config.seq_len  # saved with the head: prediction cuts texts as training did
    summary = apply_peft(model, config)
    prefix = prompt_prefix_ids(model)
    causal = model.config.causal
    train_ids = encode_texts(tokenizer, [e.text for e in train], config.seq_len, prefix, causal)
    val_ids = encode_texts(tokenizer, [e.text for e in val], config.seq_len, prefix, causal)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    mean_len = sum(map(len, train_ids)) / len(train_ids)
    targets = torch.tensor(train_y)

    def batch_fn(step: int, micro: int) -> dict:
        index = items_for(step, micro, trainer.micro_batches_per_step, config.micro_batch, len(train_ids), config.seed)
        batch = classification_batch([train_ids[i] for i in index], config.seq_len, pad)
        batch["labels"] = targets[index]
        return batch

    def objective(runner, batch):
        return classification_loss(runner(batch), batch["labels"])

    def evaluate(runner) -> dict:
        probs = classify_sequences(runner, val_ids, config.seq_len, pad, config.micro_batch * 2, trainer.autocast())
        result = accuracy_with_interval(probs, val_y)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(val_y)).item()
        return {"val_loss": loss, "val_accuracy": result["accuracy"], "val_ci95_low": result["ci95_low"],
                "val_ci95_high": result["ci95_high"]}

    def save(directory: Path, state: dict) -> None:
        save_classifier(directory, model, state, tokenizer, base_dir)

    trainer = Trainer(model, config, out, batch_fn, max(1, int(config.micro_batch * mean_len)), objective=objective,
                      evaluate=evaluate if val_ids else None, tokenizer=tokenizer, epoch_items=len(train_ids),
                      save_model=save, stage="classify train", starting_models={"init_from": base_dir})
    counts = ", ".join(f"{name} {train_y.count(i)}" for i, name in enumerate(labels))
    print(f"classify: {len(train)} examples ({counts}), {len(val)} held out, mean {mean_len:.0f} tokens; "
          f"pooling {model.pooling}; {summary}; {trainer.total_steps} steps", flush=True)
    return trainer.fit(resume=resume)
