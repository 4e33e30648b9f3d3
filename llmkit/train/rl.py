"""RLHF: policy optimisation against a reward model, with a KL penalty to the frozen SFT reference.

Each step samples `group_size` completions for each prompt with the one engine (llmkit.infer.Engine,
the policy's current weights), scores them with the reward model (`llmkit reward`; or, with
reward_model=answers, with the records' answer key), and takes a policy gradient step with a critic-free
group baseline:

    rloo  (default; Ahmadian et al. 2024, "Back to Basics"): the KL enters the reward,
          R_i = r_RM(x, y_i) - kl_coef * sum_t [log pi(y_t) - log ref(y_t)],
          and the advantage is R_i minus the mean R of the other k - 1 completions of the same prompt
          (leave-one-out: an unbiased baseline that needs no value network).
    grpo  (Shao et al. 2024, DeepSeekMath eq. 3-4): A_i = (r_i - mean r) / std r over the group, and
          kl_coef * KL(pi || ref) per token (the k3 estimator, Schulman 2020) is added to the loss.

The loss is PPO's clipped surrogate (Schulman et al. 2017, eq. 7), -min(rho A, clip(rho, 1 +- eps) A)
per completion token, averaged over the tokens of the step's batch (all its micro-batches: the Trainer
weights them by their tokens); rho = pi / pi_old is exactly 1 with one
update per batch of rollouts (plain REINFORCE with a baseline) and matters when `updates_per_batch` > 1
reuses rollouts. Completions that never reach a stop token get `missing_eos_penalty` off their reward.
A batch's rollouts live in memory, so periodic checkpoints fall on a batch's first step and resume is
exact; a final or time-limit save in the middle of a batch samples that batch again when resumed.
Prompts that leave no room for a completion in seq_len are dropped (and counted) before training, as SFT does.

Why critic-free rather than PPO with a value head and GAE: a value head is a second network to train on
the same few rollouts, and for a reward given once at the end of a short completion GAE's per-token
credit assignment buys little; the group baseline needs no value model, no GAE parameters and half the
memory, and RLOO matches or beats PPO on RLHF benchmarks (Ahmadian et al. 2024, Table 2). The frozen
reference costs no copy of the model: it is the policy with its trainable tensors put back to their
starting values (torch.func.functional_call), which for LoRA is the base model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from llmkit.errors import ConfigError, DataError
from llmkit.train.chat_data import encode_prompt
from llmkit.train.packing import completion_item, model_inputs, pack
from llmkit.train.peft import apply_peft, peft_saver, prompt_prefix_ids
from llmkit.train.post_common import (disable_dropout, eval_mode, generate, items_for, reply_text, stage_records,
                                      start_model, task_accuracy, task_records)
from llmkit.train.post_config import RLConfig
from llmkit.train.reward import load_reward_model, score
from llmkit.train.trainer import Trainer, TrainResult, learned_tokens, weighted_by


def group_advantages(rewards: torch.Tensor, baseline: str) -> torch.Tensor:
    """rewards (prompts, k) -> advantages (prompts, k): leave-one-out (RLOO) or group-normalised (GRPO)."""
    k = rewards.shape[1]
    if baseline == "rloo":
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-4)


def policy_loss(logp: torch.Tensor, batch: dict, clip_eps: float, kl_coef: float, kl_in_loss: bool) -> tuple:
    """Clipped surrogate over the completion tokens of a packed batch (+ per-token KL for GRPO)."""
    mask = (batch["targets"] != -100).float()
    old = batch.get("old_logp")
    ratio = torch.exp(logp - (old if old is not None else logp.detach()))
    advantage = batch["advantages"][batch["seq_index"].clamp(min=0)] * mask
    surrogate = -torch.min(ratio * advantage, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantage)
    metrics = {"clip_fraction": (((ratio - 1).abs() > clip_eps).float() * mask).sum().item() / mask.sum().item()}
    if kl_in_loss:
        delta = batch["ref_logp"] - logp
        kl = torch.exp(delta) - delta - 1  # k3: an unbiased, always positive estimate of KL(pi || ref)
        surrogate = surrogate + kl_coef * kl
        metrics["kl"] = ((kl.detach() * mask).sum() / mask.sum()).item()
    return (surrogate * mask).sum() / mask.sum().clamp(min=1), metrics


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log pi_T of each target token (rows x len), 0 where there is no target: pi_T = softmax(logits / T),
    the distribution the rollouts were sampled from at `temperature` T. The ratio, the KL and the gradient
    must be of that policy, not the untempered one (which made the estimate biased at T != 1); TRL's GRPO
    divides the logits by T alike. At T != 1 the whole logits are made (rows x len x vocab), not only the
    targets' cross-entropy."""
    if temperature == 1.0:
        return -model(batch["input_ids"], batch["targets"], reduction="none", **model_inputs(batch))
    targets = batch["targets"]
    valid = targets != -100
    logits = model(batch["input_ids"], **model_inputs(batch))[valid].float() / temperature
    chosen = -F.cross_entropy(logits, targets[valid], reduction="none")
    return torch.zeros(targets.shape, device=logits.device, dtype=torch.float32).masked_scatter(valid, chosen)


def reward_function(config: RLConfig, device, autocast):
    """rewards(records, replies) -> list of floats. reward_model=DIR: a `llmkit reward` model's scores.
    reward_model=answers: a verifiable reward (RLVR; Lambert et al. 2024, "Tulu 3"): 1 where the reply
    matches the record's "answer" (exact match after normalisation, the built-in task's metric), else 0 -
    no learned judge for the policy to exploit."""
    if config.reward_model == "answers":
        from llmkit.data.assistant_task import is_correct

        return lambda records, texts: [float(is_correct(t, r.extra["answer"])) for r, t in zip(records, texts)]
    reward_model, reward_tokenizer = load_reward_model(config.reward_model, device=device)
    reward_model.requires_grad_(False)
    return lambda records, texts: score(reward_model, reward_tokenizer, [r.prompt for r in records], texts,
                                        max_len=config.seq_len, autocast=autocast)


class Rollouts:
    """Sampling, scoring and the per-token reference / old log-probabilities of one batch of prompts."""

    def __init__(self, model, tokenizer, rewards, records, config: RLConfig, autocast):
        self.model, self.tokenizer, self.rewards = model, tokenizer, rewards
        self.records, self.config, self.autocast = records, config, autocast
        # the frozen reference: the starting values of the trainable tensors
        self.reference = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        self.prefix = prompt_prefix_ids(model)
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.stops = set(tokenizer.stop_token_ids)

    @torch.no_grad()
    def make(self, index: list[int], seed: int) -> dict:
        c = self.config
        records = [self.records[i] for i in index]
        prompts = [encode_prompt(self.tokenizer, r.prompt) for r in records]  # the engine adds the soft prompt
        prompt_ids = [self.prefix + p for p in prompts]  # ... which the policy's forward reads too
        room = c.seq_len - max(len(p) for p in prompt_ids)
        if room < 1:
            raise ConfigError(f"a prompt of {max(len(p) for p in prompt_ids)} tokens leaves no room in seq_len "
                              f"{c.seq_len}; raise seq_len")
        k = c.group_size
        outputs = generate(self.model, self.tokenizer, [p for p in prompts for _ in range(k)],
                           min(c.max_new_tokens, room), temperature=c.temperature, top_p=c.top_p, seed=seed)
        texts = [reply_text(self.tokenizer, o) for o in outputs]
        finished = torch.tensor([bool(o) and o[-1] in self.stops for o in outputs])
        rm_scores = torch.tensor(self.rewards([r for r in records for _ in range(k)], texts), dtype=torch.float)
        rewards = rm_scores - c.missing_eos_penalty * (~finished).float()
        items = [completion_item(prompt_ids[j // k], outputs[j]) for j in range(len(outputs))]
        batch = pack(items, c.seq_len, self.pad)
        batch.pop("last_index")
        device = next(self.model.parameters()).device
        on_device = {key: v.to(device) for key, v in batch.items()}
        with eval_mode(self.model), self.autocast:
            logp = token_logprobs(self.model, on_device, c.temperature).float()
            ref_logp = token_logprobs(_Reference(self.model, self.reference), on_device, c.temperature).float()
        mask = (on_device["targets"] != -100).float()
        seq_kl = torch.zeros(len(items), device=device).index_add(
            0, on_device["seq_index"][mask.bool()], (logp - ref_logp)[mask.bool()])
        grouped = rewards.view(-1, k).to(device)
        if c.baseline == "rloo":
            grouped = grouped - c.kl_coef * seq_kl.view(-1, k)
        batch["advantages"] = group_advantages(grouped, c.baseline).flatten().cpu()
        batch["ref_logp"] = ref_logp.cpu()
        if c.updates_per_batch > 1:
            batch["old_logp"] = logp.cpu()
        lengths = torch.tensor([len(o) for o in outputs], dtype=torch.float)
        batch["stats"] = torch.tensor([rm_scores.mean(), (seq_kl.cpu().mean()), lengths.mean(),
                                       finished.float().mean()])
        return batch


class _Reference(torch.nn.Module):
    """The policy with its trainable tensors at their starting values (the frozen reference)."""

    def __init__(self, model, reference: dict):
        super().__init__()
        self.model, self.reference = model, reference

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.reference, args, kwargs, tie_weights=True, strict=False)


def fitting_prompts(records: list, tokenizer, prefix: list[int], seq_len: int) -> tuple[list, int]:
    """(records whose prompt leaves room for a completion in seq_len, how many were dropped): checked
    before training, as SFT does, rather than at the step whose batch holds a long prompt."""
    kept = [r for r in records if len(prefix) + len(encode_prompt(tokenizer, r.prompt)) < seq_len]
    if records and not kept:
        raise DataError(f"{records[0].where}: every record's prompt fills seq_len={seq_len} tokens, leaving no "
                        "room for a completion; raise seq_len")
    return kept, len(records) - len(kept)


def run_rl(config: RLConfig, out: str | Path, resume: bool = False) -> TrainResult:
    if not config.reward_model:
        raise ConfigError("reward_model is required: a `llmkit reward` output directory, or `answers` for a "
                          "verifiable reward from the records' \"answer\" field")
    model, tokenizer, base_dir = start_model(config)
    summary = apply_peft(model, config)
    if config.disable_dropout:
        disable_dropout(model)
    train_records, val_records = stage_records(config, "prompt")
    train_records, dropped = fitting_prompts(train_records, tokenizer, prompt_prefix_ids(model), config.seq_len)
    val_records, val_dropped = fitting_prompts(val_records, tokenizer, prompt_prefix_ids(model), config.seq_len)
    heldout = task_records(config, val_records)
    if config.reward_model == "answers":
        from llmkit.data.assistant_task import require_answers

        require_answers(train_records + val_records, "reward_model=answers",
                        "or train a reward model with `llmkit reward` and pass its directory")
    cache: dict = {}

    def batch_fn(step: int, micro: int):
        rollout_step = step // config.updates_per_batch
        key = (rollout_step, micro)
        if key not in cache:
            for old in [k for k in cache if k[0] != rollout_step]:
                del cache[old]  # rollouts of an earlier batch are not used again
            index = items_for(rollout_step, micro, trainer.micro_batches_per_step, config.micro_batch,
                              len(train_records), config.seed)
            cache[key] = rollouts.make(index, seed=config.seed * 1_000_003 + rollout_step * 1009 + micro * 101)
        return cache[key]

    # a mean over completion tokens (policy_loss), whose number varies with the sampled lengths: weighted by
    # them, a step's loss is the token mean over all its rollouts, as one batch of them computes it
    @weighted_by(lambda batch: learned_tokens(batch["targets"]))
    def objective(model, batch):
        logp = token_logprobs(model, batch, config.temperature).float()
        loss, metrics = policy_loss(logp, batch, config.clip_eps, config.kl_coef, config.baseline == "grpo")
        reward, kl, length, finished = batch["stats"].tolist()
        metrics.update(reward=reward, seq_kl=kl, completion_tokens=length, finished=finished)
        return loss, metrics

    def evaluate(runner) -> dict:
        results = {}
        records = heldout or val_records[:64]
        if records:
            outputs = generate(runner, tokenizer, [r.prompt for r in records], config.max_new_tokens)
            texts = [reply_text(tokenizer, o) for o in outputs]
            val_rewards = rewards(records, texts)
            results["val_reward"] = sum(val_rewards) / len(val_rewards)
        if heldout:
            acc = task_accuracy(runner, tokenizer, heldout, config.eval_max_new_tokens)
            results["task_accuracy"] = acc["accuracy"]
            results.update({f"acc_{k}": v for k, v in acc["by_kind"].items()})
        return results

    # tokens of a micro-batch: its prompts' group_size completions, each at most max_new_tokens after a
    # prompt of (for the estimate) 64 tokens
    tokens_per_micro = config.micro_batch * config.group_size * (config.max_new_tokens + 64)
    trainer = Trainer(model, config, out, batch_fn, tokens_per_micro, objective=objective,
                      evaluate=evaluate if (heldout or val_records) else None, tokenizer=tokenizer,
                      epoch_items=len(train_records) * config.updates_per_batch,
                      save_model=peft_saver(model, tokenizer, base_dir) if config.peft != "none" else None,
                      stage="rlhf", starting_models={"init_from": base_dir, "reward_model":
                                                     None if config.reward_model == "answers" else config.reward_model},
                      # a batch's rollouts live in memory: checkpoints fall on the first step of a batch
                      checkpoint_multiple=config.updates_per_batch)
    rewards = reward_function(config, trainer.device, trainer.autocast())
    model.to(trainer.device)
    rollouts = Rollouts(model, tokenizer, rewards, train_records, config, trainer.autocast())
    dropped_note = "".join(f" ({n} {what}dropped: prompt longer than seq_len)"
                           for n, what in ((dropped, ""), (val_dropped, "held-out ")) if n)
    print(f"rlhf: {len(train_records)} prompts{dropped_note} x {config.group_size} samples, reward {config.reward_model}, baseline "
          f"{config.baseline}, kl_coef {config.kl_coef}; {summary}; {trainer.total_steps} steps", flush=True)
    return trainer.fit(resume=resume)
