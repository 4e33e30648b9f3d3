"""Reward modelling: the Transformer plus a scalar head, trained on preference pairs.

InstructGPT's reward model (Ouyang et al. 2022, section 3.5): r(x, y) is a linear head on the final
hidden state of the last token of prompt + reply, trained with the Bradley-Terry loss
-log sigmoid(r(x, y_w) - r(x, y_l)) on (chosen y_w, rejected y_l) pairs. Pairwise accuracy on
held-out pairs is reported with a Wilson 95% interval. Both replies of a pair are packed into the
same rows with no attention across them.

On disk: the backbone in the one checkpoint format (merged if it was trained with LoRA; the adapter
beside it as usual) plus `reward_head.safetensors` (score.weight, score.bias). `load_reward_model(DIR)`
rebuilds it; `score(...)` rates replies (RLHF rewards, win rates).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save

from llmkit.atomic import atomic_write_bytes
from llmkit.eval.stats import wilson_interval
from llmkit.errors import CheckpointError, first_line
from llmkit.train.chat_data import EncodedPair, encode_completion, encode_prompt, truncate_pair
from llmkit.train.head_model import HeadOnTransformer
from llmkit.train.packing import model_inputs, pack, sequence_item
from llmkit.train.peft import apply_peft, load_peft, prompt_prefix_ids, save_peft
from llmkit.device import autocast_context
from llmkit.train.post_common import encode_train_and_held_out_pairs, items_for, stage_records, start_model
from llmkit.train.post_config import RewardConfig
from llmkit.train.trainer import Trainer, TrainResult, weighted_by

HEAD_FILE = "reward_head.safetensors"


class RewardModel(HeadOnTransformer):
    """A Transformer wrapped with a scalar head on the last token's final hidden state."""

    def __init__(self, transformer: nn.Module, seed: int = 0):
        super().__init__()
        self.transformer = transformer
        d = transformer.config.d_model
        p = transformer.tok_emb.weight
        self.score = nn.Linear(d, 1, device=p.device, dtype=p.dtype)
        # std 1/sqrt(d + 1) as in Stiennon et al. 2020's reward head (and TRL): unit-scale rewards at init;
        # drawn from the run's seed, not torch's global generator: the same seed trains the same model
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=generator) / math.sqrt(d + 1))
        nn.init.zeros_(self.score.bias)

    def forward(self, input_ids, last_index, positions=None, doc_ids=None) -> torch.Tensor:
        """Rewards (n,) of the sequences whose last tokens sit at flat indices last_index."""
        hidden = self.transformer(input_ids, positions=positions, doc_ids=doc_ids, return_hidden=True)
        return self.score(hidden.flatten(0, 1)[last_index]).squeeze(-1).float()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """-log sigmoid(r_chosen - r_rejected), mean over pairs (Ouyang et al. 2022, eq. 1)."""
    margin = chosen - rejected
    return -F.logsigmoid(margin).mean(), {"accuracy": (margin > 0).float().mean().item(),
                                          "margin": margin.mean().item()}


def reward_batch(pairs: list[EncodedPair], row_len: int, pad_id: int) -> dict:
    """A packed batch of the sequences [chosen_0, rejected_0, chosen_1, ...]."""
    return sequence_batch([s for p in pairs for s in (p.prompt + p.chosen, p.prompt + p.rejected)], row_len, pad_id)


def sequence_batch(sequences: list[list[int]], row_len: int, pad_id: int) -> dict:
    batch = pack([sequence_item(s) for s in sequences], row_len, pad_id)
    for key in ("targets", "seq_index"):
        batch.pop(key)
    return batch


def reward_forward(model: RewardModel, batch: dict) -> torch.Tensor:
    return model(batch["input_ids"], batch["last_index"], **model_inputs(batch))


@torch.no_grad()
def sequence_rewards(model: RewardModel, sequences: list[list[int]], row_len: int, pad_id: int, per_batch: int,
                     device, autocast) -> torch.Tensor:
    """Rewards (n,) of token sequences, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(sequences), per_batch):
        batch = {k: v.to(device) for k, v in sequence_batch(sequences[start:start + per_batch], row_len, pad_id).items()}
        with autocast:
            out.append(reward_forward(model, batch).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pair_rewards(model: RewardModel, pairs: list[EncodedPair], row_len: int, pad_id: int, per_batch: int, device,
                 autocast) -> torch.Tensor:
    """(n_pairs, 2) rewards [chosen, rejected], in eval mode."""
    sequences = [s for p in pairs for s in (p.prompt + p.chosen, p.prompt + p.rejected)]
    return sequence_rewards(model, sequences, row_len, pad_id, 2 * per_batch, device, autocast).view(-1, 2)


def pairwise_accuracy(rewards: torch.Tensor) -> dict:
    """Accuracy of (n, 2) [chosen, rejected] rewards with its Wilson 95% interval; ties count half."""
    wins = (rewards[:, 0] > rewards[:, 1]).float() + 0.5 * (rewards[:, 0] == rewards[:, 1]).float()
    n, k = len(wins), float(wins.sum())
    low, high = wilson_interval(round(k), n)
    return {"accuracy": k / max(n, 1), "ci95_low": low, "ci95_high": high, "n": n}


def save_reward_model(directory: str | Path, model: RewardModel, state: dict, tokenizer, base_model: str | None) -> None:
    directory = Path(directory)
    save_peft(directory, model, state, tokenizer, base_model, prefix="transformer.")
    head = {k.removeprefix("score."): v.detach().contiguous().cpu() for k, v in state.items() if k.startswith("score.")}
    atomic_write_bytes(directory / HEAD_FILE, save(head, metadata={"kind": "reward_head"}))


def load_reward_model(directory: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None) -> tuple[RewardModel, object]:
    """(reward model in eval mode, tokenizer) of a `llmkit reward` output directory."""
    directory = Path(directory)
    if not (directory / HEAD_FILE).exists():
        raise CheckpointError(f"{directory / HEAD_FILE}: missing; {directory} is not a reward model "
                              "(train one with `llmkit reward`)")
    transformer, tokenizer = load_peft(directory, device=device, dtype=dtype)
    model = RewardModel(transformer)
    try:
        head = load_file(directory / HEAD_FILE)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error for a damaged file
        raise CheckpointError(f"{directory / HEAD_FILE}: cannot be read ({first_line(e)}); the reward model "
                              "was not saved completely: train it again with `llmkit reward`") from None
    try:
        model.score.load_state_dict({k: v.to(model.score.weight.dtype) for k, v in head.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{directory / HEAD_FILE}: does not fit the backbone ({e})") from None
    return model.to(device).eval(), tokenizer


def score(model: RewardModel, tokenizer, prompts: list, completions: list, max_len: int = 0,
          batch_size: int = 16, autocast=None) -> list[float]:
    """Rewards of replies to prompts (records' prompts: text or messages); a reply is text (for a
    conversation: the assistant's message) or a message list. Sequences longer than max_len (at most the
    model's context: RLHF passes the policy's seq_len, which may be longer) lose the beginning of their prompt."""
    prefix = prompt_prefix_ids(model)
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    sequences = []
    for prompt, completion in zip(prompts, completions):
        if isinstance(prompt, list) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        reply = encode_completion(tokenizer, prompt, completion)
        pair = truncate_pair(EncodedPair(prefix + encode_prompt(tokenizer, prompt), reply, reply), max_len, len(prefix))
        sequences.append(pair.prompt + pair.chosen)
    device = model.score.weight.device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    autocast = autocast or autocast_context(device, None)
    return sequence_rewards(model, sequences, max_len, pad, batch_size, device, autocast).tolist()


def run_reward(config: RewardConfig, out: str | Path, resume: bool = False) -> TrainResult:
    transformer, tokenizer, base_dir = start_model(config)
    model = RewardModel(transformer, seed=config.seed)
    summary = apply_peft(model, config)
    prefix = prompt_prefix_ids(model)
    train_records, val_records = stage_records(config, "preference")
    pairs, val_pairs, dropped_note = encode_train_and_held_out_pairs(tokenizer, train_records, val_records,
                                                                     config.seq_len, prefix)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    mean_len = sum(len(p.prompt) * 2 + len(p.chosen) + len(p.rejected) for p in pairs) / len(pairs)

    def batch_fn(step: int, micro: int):
        index = items_for(step, micro, trainer.micro_batches_per_step, config.micro_batch, len(pairs), config.seed)
        return reward_batch([pairs[i] for i in index], config.seq_len, pad)

    @weighted_by(lambda batch: len(batch["last_index"]) // 2)  # a mean over pairs (two sequences each)
    def objective(model, batch):
        rewards = reward_forward(model, batch).view(-1, 2)
        return bradley_terry_loss(rewards[:, 0], rewards[:, 1])

    def evaluate(runner) -> dict:
        device = next(runner.parameters()).device
        rewards = pair_rewards(runner, val_pairs, config.seq_len, pad, config.micro_batch * 2, device,
                               trainer.autocast())
        result = pairwise_accuracy(rewards)
        loss, _ = bradley_terry_loss(rewards[:, 0], rewards[:, 1])
        return {"val_loss": loss.item(), "val_accuracy": result["accuracy"], "val_ci95_low": result["ci95_low"],
                "val_ci95_high": result["ci95_high"]}

    def save(directory: Path, state: dict) -> None:
        save_reward_model(directory, model, state, tokenizer, base_dir)

    # tokens of a micro-batch: an estimate from the mean pair (each pair is its prompt twice and both replies)
    trainer = Trainer(model, config, out, batch_fn, max(1, int(config.micro_batch * mean_len)), objective=objective,
                      evaluate=evaluate if val_pairs else None, tokenizer=tokenizer, epoch_items=len(pairs),
                      save_model=save, stage="reward", starting_models={"init_from": base_dir})
    print(f"reward: {len(pairs)} pairs ({len(val_pairs)} held out){dropped_note}, mean {mean_len / 2:.0f} tokens a sequence; "
          f"{summary}; {trainer.total_steps} steps", flush=True)
    return trainer.fit(resume=resume)
