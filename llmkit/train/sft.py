"""Supervised fine-tuning: next-token cross-entropy on what the assistant says, through the one Trainer.

Conversations are rendered with the tokenizer's chat template and only assistant turns (content and
end-of-turn marker) are learned; prompt-completion records learn the completion. Examples are packed
into rows of seq_len with no attention across them (llmkit/train/packing.py), so no compute is spent
on padding and no example sees another. Full fine-tuning, LoRA or prompt tuning (`peft=`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmkit.errors import DataError
from llmkit.train.chat_data import encode_sft
from llmkit.train.packing import Item, collate, lm_item, model_inputs, pack_rows
from llmkit.train.peft import apply_peft, peft_saver, prompt_prefix_ids
from llmkit.train.post_common import (generate, items_for, reply_text, stage_records, start_model, task_accuracy,
                                      task_records)
from llmkit.train.post_config import SFTConfig
from llmkit.train.trainer import Trainer, TrainResult, learned_tokens, weighted_by


@weighted_by(lambda batch: learned_tokens(batch["targets"]))
def sft_objective(model, batch):
    """Mean cross-entropy over the learned tokens of a packed batch: the Trainer weights micro-batches by
    their learned tokens (their number varies with the replies' lengths), so a step's loss is the mean over
    all its learned tokens."""
    loss = model(batch["input_ids"], batch["targets"], **model_inputs(batch))
    return loss, {}


def encode_items(tokenizer, records, max_len: int, prefix_ids: list[int] = ()) -> tuple[list[Item], int]:
    """(training items (inputs, targets) of SFT records, each cut to max_len input tokens; the number
    of records dropped because their prompt alone fills max_len)."""
    items, dropped = [], 0
    for record in records:
        enc = encode_sft(tokenizer, record, prefix_ids)
        item = lm_item(enc.ids[:max_len + 1], enc.mask[:max_len + 1])
        if all(t == -100 for t in item.targets):
            dropped += 1
            continue
        items.append(item)
    if records and not items:
        raise DataError(f"{records[0].where}: every record's prompt fills seq_len={max_len} tokens, leaving nothing "
                        "to learn; raise seq_len")
    return items, dropped


@torch.no_grad()
def token_loss(model, items: list[Item], row_len: int, rows_per_batch: int, device, autocast) -> float:
    """Mean cross-entropy per learned token over items (packed, in eval mode)."""
    was_training = model.training
    model.eval()
    rows = pack_rows([len(it.inputs) for it in items], row_len)
    total, count = 0.0, 0
    for start in range(0, len(rows), rows_per_batch):
        batch = collate(items, rows[start:start + rows_per_batch])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            per_token = model(batch["input_ids"], batch["targets"], reduction="none", **model_inputs(batch))
        total += per_token.sum().item()
        count += int((batch["targets"] != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def run_sft(config: SFTConfig, out: str | Path, resume: bool = False) -> TrainResult:
    model, tokenizer, base_dir = start_model(config)
    summary = apply_peft(model, config)
    prefix = prompt_prefix_ids(model)
    train_records, val_records = stage_records(config, "sft")
    items, dropped = encode_items(tokenizer, train_records, config.seq_len, prefix)
    val_items = encode_items(tokenizer, val_records, config.seq_len, prefix)[0] if val_records else []
    heldout = task_records(config, val_records)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    rows = (pack_rows([len(it.inputs) for it in items], config.seq_len) if config.packing
            else [[i] for i in range(len(items))])
    learned = sum(sum(t != -100 for t in it.targets) for it in items)

    def batch_fn(step: int, micro: int):
        chosen = [rows[i] for i in items_for(step, micro, trainer.micro_batches_per_step, config.micro_batch,
                                             len(rows), config.seed)]
        batch = collate(items, chosen, config.seq_len if config.packing else None, pad)
        batch.pop("last_index")
        return batch

    def evaluate(runner) -> dict:
        device = next(runner.parameters()).device
        results = {}
        if val_items:
            results["val_loss"] = token_loss(runner, val_items, config.seq_len, config.micro_batch * 2, device,
                                             trainer.autocast())
        if heldout:
            acc = task_accuracy(runner, tokenizer, heldout, config.eval_max_new_tokens)
            results["task_accuracy"] = acc["accuracy"]
            results.update({f"acc_{k}": v for k, v in acc["by_kind"].items()})
        return results

    def sample(model, step: int) -> str:
        record = (heldout or val_records or train_records)[0]
        return reply_text(tokenizer, generate(model, tokenizer, [record.prompt], config.eval_max_new_tokens)[0])

    trainer = Trainer(model, config, out, batch_fn, config.micro_batch * config.seq_len, objective=sft_objective,
                      evaluate=evaluate if (val_items or heldout) else None, sample=sample, tokenizer=tokenizer,
                      epoch_items=len(rows),
                      save_model=peft_saver(model, tokenizer, base_dir) if config.peft != "none" else None,
                      stage="sft", starting_models={"init_from": base_dir})
    print(f"sft: {len(items)} examples ({learned:,} learned tokens) in {len(rows)} rows of {config.seq_len}"
          + (f" ({dropped} dropped: prompt longer than seq_len)" if dropped else "") + "; "
          f"{summary}; {trainer.total_steps} steps", flush=True)
    return trainer.fit(resume=resume)
