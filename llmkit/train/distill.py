"""Knowledge distillation: a student trained on a teacher's token distributions, through the one Trainer.

Hinton et al. 2015: soften both distributions with a temperature T and minimise the forward KL from the
teacher's to the student's, scaled by T^2 so that its gradients keep their size as T changes (section 2):

    loss = (1 - hard_weight) * T^2 * KL(softmax(t / T) || softmax(s / T)) + hard_weight * CE(s, next token)

averaged over the positions that have a next token. The student shares the teacher's tokenizer (its
vocabulary is the teacher's), so it can serve as the teacher's speculative-decoding draft
(`llmkit generate --model TEACHER --speculative STUDENT_DIR`). Data: "shakespeare" (the built-in corpus,
tokenized with the teacher's tokenizer), a token-shard directory, or post-training JSONL or "assistant" (the
built-in task's conversations): the teacher's distributions on the assistant tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit.checkpoint import load_model, load_tokenizer
from llmkit.config import ModelConfig
from llmkit.device import resolve_device
from llmkit.errors import ConfigError
from llmkit.eval.bpb import evaluate_shards
from llmkit.model import Transformer
from llmkit.train.packing import collate, model_inputs, pack_rows
from llmkit.train.peft import apply_peft, peft_saver
from llmkit.train.post_common import check_language_model, items_for, stage_records
from llmkit.train.post_config import DistillConfig
from llmkit.train.pretrain import check_model_fits, resolve_data
from llmkit.train.trainer import Trainer, TrainResult, learned_tokens, weighted_by


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, hard_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """T^2 * KL(teacher_T || student_T) (+ hard_weight * cross-entropy) over positions with a target."""
    valid = targets != -100
    s = student_logits[valid].float()
    t = teacher_logits[valid].float()
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()
    loss = (1 - hard_weight) * temperature**2 * kl
    metrics = {"kl": kl.item()}
    if hard_weight:
        ce = F.cross_entropy(s, targets[valid])
        loss = loss + hard_weight * ce
        metrics["ce"] = ce.item()
    return loss, metrics


def packed_batch(items, rows, row_len: int, pad: int) -> dict:
    batch = collate(items, rows, row_len, pad)
    batch.pop("last_index")
    batch.pop("seq_index")
    return batch


@torch.no_grad()
def held_out_distillation(student, teacher, items, config: DistillConfig, pad: int, device, autocast) -> dict:
    """The objective on held-out records (val_data or val_fraction of a JSONL file), every learned token
    weighted alike: val_kl (KL(teacher_T || student_T), unscaled) and val_loss (the student's cross-entropy)."""
    was_training = student.training
    student.eval()
    rows = pack_rows([len(it.inputs) for it in items], config.seq_len)
    kl_sum = ce_sum = n = 0.0
    for start in range(0, len(rows), config.micro_batch * 2):
        batch = {k: v.to(device) for k, v in packed_batch(items, rows[start:start + config.micro_batch * 2],
                                                           config.seq_len, pad).items()}
        with autocast:
            s = student(batch["input_ids"], **model_inputs(batch))
            t = teacher(batch["input_ids"], **model_inputs(batch))
        _, metrics = distillation_loss(s, t, batch["targets"], config.temperature, hard_weight=1.0)
        count = int((batch["targets"] != -100).sum())
        kl_sum, ce_sum, n = kl_sum + metrics["kl"] * count, ce_sum + metrics["ce"] * count, n + count
    student.train(was_training)
    return {"val_kl": kl_sum / max(n, 1), "val_loss": ce_sum / max(n, 1)}


def build_student(config: DistillConfig, teacher: Transformer, tokenizer=None) -> Transformer:
    """The student: config.init_from (which must share the teacher's tokenizer), or a new model of
    config.model's shape on the teacher's vocabulary."""
    if config.init_from:
        from llmkit.convert import resolve_model

        student_dir = resolve_model(config.init_from)
        check_language_model(student_dir, "init_from")
        student = load_model(student_dir, dtype=torch.float32)
    else:
        shape = ModelConfig.preset(config.model, **{"vocab_size": teacher.config.vocab_size,
                                                    "max_seq_len": config.seq_len, **config.model_overrides})
        check_model_fits(shape, resolve_device(config.device), f"the student {config.model}")
        torch.manual_seed(config.seed)
        student = Transformer(shape)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ConfigError(f"the student's vocabulary ({student.config.vocab_size}) must be the teacher's "
                          f"({teacher.config.vocab_size}): distillation compares their distributions token by token")
    if config.init_from and tokenizer is not None:
        check_same_tokenizer(student_dir, tokenizer, config.teacher)
    if config.seq_len > student.config.max_seq_len:
        raise ConfigError(f"seq_len {config.seq_len} is longer than the student's max_seq_len {student.config.max_seq_len}")
    return student.train()


def check_same_tokenizer(student_dir: Path, tokenizer, teacher) -> None:
    """A student from init_from must share the teacher's tokenizer, not only its vocabulary's size: the
    KL compares the two distributions id by id, and two tokenizers of one size give their ids to
    different strings (the student would learn the teacher's predictions under the wrong names)."""
    if not (Path(student_dir) / "tokenizer.json").is_file():
        return  # (a checkpoint saved without its tokenizer: only its vocabulary's size can be compared)
    if load_tokenizer(student_dir).backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(f"init_from={student_dir} has another tokenizer than the teacher {teacher} (same size, "
                          "different tokens): distillation compares their distributions token by token; start the "
                          "student from a model with the teacher's tokenizer, or leave init_from out for a new student")


def check_shards_tokenizer(shards: Path, tokenizer, teacher_dir: Path) -> None:
    """Token shards hold ids of the tokenizer they were made with: distilling on another tokenizer's ids
    would teach the student the teacher's distributions over unrelated text."""
    from llmkit.tokenizer import Tokenizer

    if not (Path(shards) / "tokenizer.json").is_file():
        return  # (TokenShards checked the manifest; a folder without its tokenizer cannot be compared)
    if Tokenizer.load(shards).backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(f"{shards} was tokenized with another tokenizer than the teacher {teacher_dir}'s; "
                          f"prepare the shards with `llmkit data prepare --tokenizer {teacher_dir}`")


def run_distill(config: DistillConfig, out: str | Path, resume: bool = False) -> TrainResult:
    if not config.teacher:
        raise ConfigError("teacher is required: a checkpoint directory or named model (smollm2)")
    from llmkit.convert import resolve_model

    if config.peft == "prompt":  # said, not ignored: the soft prompt would never reach the student's inputs
        raise ConfigError("peft=prompt does not apply to distill: the teacher reads no soft prompt, so the two "
                          "would see different inputs; use peft=lora or peft=none")
    teacher_dir = resolve_model(config.teacher)
    check_language_model(teacher_dir, "teacher")
    teacher = load_model(teacher_dir, dtype=torch.float32).requires_grad_(False)  # to the run's device below
    if config.seq_len > teacher.config.max_seq_len:  # the teacher reads every window the student does
        raise ConfigError(f"seq_len {config.seq_len} is longer than the teacher's context of "
                          f"{teacher.config.max_seq_len}; lower seq_len")
    tokenizer = load_tokenizer(teacher_dir)
    student = build_student(config, teacher, tokenizer)
    student_dir = resolve_model(config.init_from) if config.init_from else None
    summary = apply_peft(student, config)
    val = None
    val_items: list = []
    dropped_note = ""
    if config.data == "assistant" or config.data.endswith((".jsonl", ".jsonl.gz", ".json")):
        from llmkit.train.sft import encode_items

        records, val_records = stage_records(config, "sft")
        # records whose prompt fills seq_len leave no token to match the teacher on: dropped and counted
        # (as SFT does), never a batch of them whose empty mean is a NaN loss
        items, dropped = encode_items(tokenizer, records, config.seq_len)
        val_items = encode_items(tokenizer, val_records, config.seq_len)[0] if val_records else []
        dropped_note = f" ({dropped} records dropped: prompt longer than seq_len)" if dropped else ""
        rows = pack_rows([len(it.inputs) for it in items], config.seq_len)
        epoch_items = len(rows)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0

        def batch_fn(step: int, micro: int):
            chosen = [rows[i] for i in items_for(step, micro, trainer.micro_batches_per_step, config.micro_batch,
                                                 len(rows), config.seed)]
            return packed_batch(items, chosen, config.seq_len, pad)
    else:
        if config.data == "shakespeare":  # the built-in corpus, tokenized with the teacher's tokenizer
            config.tokenizer = str(teacher_dir)
        train, val = resolve_data(config, True)
        check_shards_tokenizer(train.directory, tokenizer, teacher_dir)
        epoch_items = math.ceil(train.tokens / config.seq_len)  # windows of seq_len tokens in the training shards

        def batch_fn(step: int, micro: int):
            x, y = train.random_batch(config.micro_batch, config.seq_len, config.seed, step, micro)
            return {"input_ids": x, "targets": y}

    @weighted_by(lambda batch: learned_tokens(batch["targets"]))  # KL and CE: means over the positions with a target
    def objective(model, batch):
        kwargs = model_inputs(batch) if "doc_ids" in batch else {}
        with torch.no_grad():
            teacher_logits = teacher(batch["input_ids"], **kwargs)
        student_logits = model(batch["input_ids"], **kwargs)
        return distillation_loss(student_logits, teacher_logits, batch["targets"], config.temperature,
                                 config.hard_weight)

    def evaluate(runner) -> dict:
        if val_items:
            return held_out_distillation(runner, teacher, val_items, config, pad, trainer.device, trainer.autocast())
        result = evaluate_shards(runner, val, config.seq_len, config.micro_batch * 2, trainer.device,
                                 trainer.autocast(), max_tokens=config.eval_tokens or 65536)
        return {"val_loss": result.loss, "val_bpb": result.bpb}

    trainer = Trainer(student, config, out, batch_fn, config.micro_batch * config.seq_len, objective=objective,
                      evaluate=evaluate if (val is not None or val_items) else None, tokenizer=tokenizer,
                      epoch_items=epoch_items,
                      save_model=peft_saver(student, tokenizer, student_dir and str(student_dir))
                      if config.peft != "none" else None,
                      stage="distill", starting_models={"teacher": teacher_dir, "init_from": student_dir})
    teacher.to(trainer.device)
    print(f"distill: teacher {teacher_dir} ({teacher.num_params() / 1e6:.1f}M parameters) -> student "
          f"{student.num_params() / 1e6:.1f}M{dropped_note}; {summary}; temperature {config.temperature}; {trainer.total_steps} steps",
          flush=True)
    return trainer.fit(resume=resume)
