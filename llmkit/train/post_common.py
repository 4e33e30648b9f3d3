"""What the post-training stages share: the starting model and its tokenizer, the data files (a user's
JSONL or the built-in assistant task), which examples each micro-batch takes, generation through the
one engine, and the held-out accuracy of the built-in task."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from llmkit.checkpoint import load_model, load_tokenizer
from llmkit.errors import ConfigError, DataError, GenerationError
from llmkit.infer import Engine, SamplingParams
from llmkit.tokenizer import Tokenizer
from llmkit.train.chat_data import Record, encode_pair, encode_prompt, load_records, truncate_pair
from llmkit.train.post_config import PostTrainConfig


def start_model(config: PostTrainConfig) -> tuple[torch.nn.Module, Tokenizer, str]:
    """(model, tokenizer, resolved directory) of config.init_from, in fp32 (the Trainer autocasts)."""
    if not config.init_from:
        raise ConfigError("init_from is required: the checkpoint directory or named model (smollm2) to start from")
    from llmkit.convert import resolve_model

    directory = resolve_model(config.init_from)
    check_language_model(directory, "init_from")
    model = load_model(directory, dtype=torch.float32)
    if config.seq_len > model.config.max_seq_len:
        raise ConfigError(f"seq_len {config.seq_len} is longer than the model's context of "
                          f"{model.config.max_seq_len}; lower seq_len")
    model.train()
    return model, load_tokenizer(directory), str(directory)


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of the model off, its own (residual, attention) and LoRA's, in train mode too. DPO and RL
    compare the policy's log-probabilities with ones taken in eval mode (the reference's, the rollouts'):
    TRL turns dropout off for them (`disable_dropout`) so that the policy equals the reference at the start."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # attention's dropout probability (model.py)
            module.dropout = 0.0


def check_language_model(directory, field: str) -> None:
    """A directory read as a language model (init_from, a teacher) must be one. A reward model's or a
    classifier's backbone loads as a Transformer too, but its next-token head was never what was trained;
    a prompt-tuned run's model.safetensors is its base without the soft prompt (adapter_model.safetensors).
    Either would train, or teach, a model other than the one named, with no sign of it."""
    from llmkit.train.peft import soft_prompt_tokens

    directory = Path(directory)
    for head, what in (("reward_head.safetensors", "a reward model (for `llmkit rlhf reward_model=...`)"),
                       ("classifier_head.safetensors", "a classifier")):
        if (directory / head).exists():
            raise ConfigError(f"{field}={directory} is {what}, not a language model ({head}); give the model "
                              "it was trained from (e.g. the SFT run)")
    if soft_prompt_tokens(directory):
        raise ConfigError(f"{field}={directory} is prompt-tuned: its model.safetensors is the base model without the "
                          "soft prompt (adapter_model.safetensors), which a new run cannot carry on; give the base "
                          "model, or train the earlier stage with peft=lora (merged into model.safetensors)")


def stage_records(config: PostTrainConfig, kind: str) -> tuple[list[Record], list[Record]]:
    """(training records, held-out records) of the kind a stage needs (sft / preference / prompt).
    data "assistant": the built-in task's files (SFT: its conversations; others: its preference pairs;
    held out: its held-out questions, which carry "kind" and "answer" for the accuracy metric)."""
    data, val_data, val_records = config.data, config.val_data, config.val_records
    if data == "assistant":
        from llmkit.data.assistant_task import builtin_task

        files = builtin_task(config.task_seed, config.task_train_per_kind, config.task_heldout_per_kind)
        data = files["sft"] if kind == "sft" else files["preference"]
        val_data, val_records = val_data or files["heldout"], None if val_data is None else val_records
    train = load_records(data, kind, config.data_records)
    if val_data:
        return train, load_records(val_data, kind, val_records)
    if config.val_fraction:
        n_val = max(1, int(len(train) * config.val_fraction))
        check_held_out(data, len(train), n_val, config.val_fraction)
        return train[:-n_val], train[-n_val:]
    return train, []


def encode_pairs(tokenizer, records: list[Record], seq_len: int, prefix: list[int] = ()) -> tuple[list, int]:
    """(encoded preference pairs, how many were dropped) for DPO and the reward model. A record whose
    chosen and rejected replies are the same holds no preference (its loss is log 2 whatever the model,
    and it counted against the accuracies): left out, with a warning naming the first (public preference
    sets have a few such pairs, so refusing the file would refuse them). A pair that only the cut to
    seq_len makes identical (the replies differ after it), or whose prompt leaves no room for a reply, is
    dropped and counted, as SFT drops prompts that fill seq_len."""
    pairs, dropped, same = [], 0, []
    for record in records:
        whole = encode_pair(tokenizer, record, 1 << 62, prefix)  # not cut yet
        if whole.chosen == whole.rejected:
            same.append(record.where)
            dropped += 1
            continue
        pair = truncate_pair(whole, seq_len, len(prefix))
        if len(pair.prompt) >= seq_len or pair.chosen == pair.rejected:
            dropped += 1
            continue
        pairs.append(pair)
    if same:
        print(f"warning: {len(same)} record(s) have the same reply as 'chosen' and 'rejected' (first: {same[0]}); "
              "left out: they prefer nothing", file=sys.stderr)
    if records and not pairs:
        raise DataError(f"{records[0].where}: no pair keeps two different replies within seq_len={seq_len} tokens "
                        "(the prompt fills it, or the replies differ only after the cut); raise seq_len")
    return pairs, dropped



def encode_train_and_held_out_pairs(tokenizer, train_records: list[Record], val_records: list[Record], seq_len: int,
                                    prefix: list[int] = ()) -> tuple[list, list, str]:
    """(training pairs, held-out pairs, a note of what was dropped for the stage's summary line): encode_pairs
    of both, for DPO and the reward model."""
    pairs, dropped = encode_pairs(tokenizer, train_records, seq_len, prefix)
    val_pairs, val_dropped = encode_pairs(tokenizer, val_records, seq_len, prefix) if val_records else ([], 0)
    note = "".join(f" ({n} {what}dropped: no two different replies within seq_len)"
                   for n, what in ((dropped, ""), (val_dropped, "held-out ")) if n)
    return pairs, val_pairs, note

def check_held_out(data, n_records: int, n_val: int, val_fraction: float) -> None:
    """val_fraction holds out at least one record: of one record (or a fraction near 1) none would be left."""
    if n_val >= n_records:
        raise ConfigError(f"{data}: val_fraction={val_fraction:g} holds out {n_val} of its {n_records} record(s), "
                          "leaving none to train on; lower val_fraction, use more records, or give val_data")


def task_records(config: PostTrainConfig, val_records: list[Record]) -> list[Record]:
    """Held-out records with a reference answer (the built-in task's): scored by answer accuracy."""
    if not config.eval_task:
        return []
    return [r for r in val_records if "answer" in r.extra]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends on (seed, epoch) alone: resume stays exact."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def items_for(step: int, micro: int, micro_batches_per_step: int, per_micro: int, n: int, seed: int) -> list[int]:
    """Indices of the items of (step, micro): consecutive slices of per-epoch permutations, so the
    micro-batches of a step (Trainer.micro_batches_per_step, over all processes) never share an item."""
    first = (step * micro_batches_per_step + micro) * per_micro
    out = []
    for k in range(first, first + per_micro):
        epoch, at = divmod(k, n)
        out.append(epoch_order(n, seed, epoch)[at])
    return out


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def generate(model, tokenizer: Tokenizer, prompts: list, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, top_p: float = 1.0, max_batch_size: int = 64,
             skip_too_long: bool = False) -> list[list[int]]:
    """Generated token ids (a final stop token included) for each prompt (token ids, or a Record
    prompt: text or messages), through the one engine; it puts a soft prompt's virtual tokens first.
    skip_too_long: a prompt that fills the model's context gets no tokens ([]) instead of an error (a
    task's long passage and a small model's context: the caller counts it)."""
    ids = [p if isinstance(p, list) and (not p or isinstance(p[0], int)) else encode_prompt(tokenizer, p)
           for p in prompts]
    transformer = getattr(model, "transformer", model)
    with eval_mode(transformer):
        # a fresh engine (and prefix cache) per call: the weights change between calls during training;
        # within a call the prefix cache serves the repeated prompts of RL's groups
        engine = Engine(transformer, tokenizer.stop_token_ids, tokenizer=tokenizer, max_batch_size=max_batch_size,
                        prefix_cache_mib=64)
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 seed=seed + i) for i in range(len(ids))]
        fits = [not skip_too_long or engine.fits(p) for p in ids]
        done = iter(engine.generate_batch([p for p, ok in zip(ids, fits) if ok],
                                          [sp for sp, ok in zip(params, fits) if ok]))
        completions = [next(done) if ok else None for ok in fits]
    failed = [(i, c) for i, c in enumerate(completions) if c is not None and c.finish_reason == "error"]
    if failed:  # e.g. NaN logits once training diverged: a rollout must not pass on as partial tokens
        i, c = failed[0]
        raise GenerationError(f"generating for prompt {i} failed ({c.error}); {len(failed)} of {len(completions)} "
                              "failed. If training diverged, lower lr or resume from an earlier checkpoint")
    return [c.token_ids if c is not None else [] for c in completions]


def reply_text(tokenizer: Tokenizer, token_ids: list[int]) -> str:
    stops = set(tokenizer.stop_token_ids)
    kept = []
    for t in token_ids:
        if t in stops:
            break
        kept.append(t)
    return tokenizer.decode(kept, skip_special_tokens=True)


def last_text(text) -> str:
    """A plain string, or the content of a message list's last message."""
    return text[-1]["content"] if isinstance(text, list) else text


def task_accuracy(model, tokenizer: Tokenizer, heldout: list[Record], max_new_tokens: int = 24,
                  limit: int = 0) -> dict:
    """Greedy answers to the built-in task's held-out questions, scored by exact match."""
    from llmkit.data.assistant_task import accuracy, is_correct

    records = heldout[:limit] if limit else heldout
    # a question longer than the model's context is not answered: wrong, and counted
    outputs = generate(model, tokenizer, [r.prompt for r in records], max_new_tokens, skip_too_long=True)
    replies = [reply_text(tokenizer, out) for out in outputs]
    answers = [r.extra["answer"] for r in records]
    kinds = [r.extra.get("kind", "all") for r in records]
    correct = [is_correct(reply, answer) for reply, answer in zip(replies, answers)]
    result = accuracy(kinds, correct)
    result["correct"] = correct  # per question, for paired comparisons between models
    result["too_long"] = sum(not out for out in outputs)
    if all(r.rejected for r in records):  # two-option questions: how often the reply is neither option
        wrong = [last_text(r.rejected) for r in records]
        result["off_option"] = sum(not ok and not is_correct(reply, other)
                                   for ok, reply, other in zip(correct, replies, wrong)) / max(len(records), 1)
    result["examples"] = [{"prompt": last_text(r.prompt),
                           "reply": reply, "answer": answer} for r, reply, answer in zip(records[:5], replies, answers)]
    return result
