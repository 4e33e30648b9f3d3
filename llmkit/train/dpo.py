"""Direct Preference Optimization, through the one Trainer.

DPO (Rafailov et al. 2023, eq. 7) fits the policy to preference pairs without a reward model or
sampling: with h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)],

    sigmoid (DPO):  loss = -log sigmoid(beta * h)                       beta 0.1 by default
    ipo (IPO):      loss = (h' - 1 / (2 beta))^2     (Azar et al. 2023, eq. 17; h' from per-token mean
                                                       log-probabilities, as TRL does)

`rpo_alpha` adds that much of the chosen replies' per-token cross-entropy (RPO, Pang et al. 2024; the
mean over all of a step's chosen tokens, however it is split into micro-batches), which keeps DPO from
lowering the likelihood of the chosen replies themselves (Pal et al. 2024 show plain DPO can). At the
start the policy is the reference, h = 0 and the DPO loss is log 2. The reference is the starting model;
its log-probabilities of every training and held-out pair are computed once, before training (and kept in
reference_logprobs.safetensors in the run directory, so a resumed run does not redo them), so no second
model is held in memory. beta * (log pi - log ref) is the implicit reward:
`reward_accuracy` is how often it ranks the chosen reply first.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save

from llmkit.atomic import atomic_write_bytes
from llmkit.train.chat_data import EncodedPair
from llmkit.train.packing import completion_item, pack, sequence_logprobs
from llmkit.train.peft import apply_peft, peft_saver, prompt_prefix_ids
from llmkit.train.post_common import (disable_dropout, encode_train_and_held_out_pairs, generate, items_for, reply_text,
                                      stage_records, start_model, task_accuracy, task_records)
from llmkit.train.post_config import DPOConfig
from llmkit.train.trainer import Trainer, TrainResult, weighted_by

REFERENCE_FILE = "reference_logprobs.safetensors"


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, kind: str = "sigmoid",
             lengths: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """Mean DPO / IPO loss over pairs from summed sequence log-probabilities, and its metrics.
    lengths (chosen, rejected token counts) turn sums into per-token means for IPO."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if kind == "sigmoid":
        loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif kind == "ipo":
        if lengths is not None:
            chosen_ratio, rejected_ratio = chosen_ratio / lengths[0].clamp(min=1), rejected_ratio / lengths[1].clamp(min=1)
        loss = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}")
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {"reward_accuracy": (chosen_reward > rejected_reward).float().mean().item(),
               "reward_margin": (chosen_reward - rejected_reward).mean().item(),
               "chosen_reward": chosen_reward.mean().item(), "rejected_reward": rejected_reward.mean().item()}
    return loss.mean(), metrics


def pair_batch(pairs: list[EncodedPair], row_len: int, pad_id: int) -> dict:
    """A packed batch of [chosen_0, rejected_0, chosen_1, ...] with targets on the replies."""
    items = []
    for p in pairs:
        items += [completion_item(p.prompt, p.chosen), completion_item(p.prompt, p.rejected)]
    batch = pack(items, row_len, pad_id)
    batch.pop("last_index")
    return batch


@torch.no_grad()
def pair_logprobs(model, pairs: list[EncodedPair], row_len: int, pad_id: int, pairs_per_batch: int, device,
                  autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, token counts), each (n_pairs, 2) [chosen, rejected], in eval mode."""
    was_training = model.training
    model.eval()
    logps, counts = [], []
    for start in range(0, len(pairs), pairs_per_batch):
        chunk = pairs[start:start + pairs_per_batch]
        batch = {k: v.to(device) for k, v in pair_batch(chunk, row_len, pad_id).items()}
        with autocast:
            lp, n = sequence_logprobs(model, batch, 2 * len(chunk))
        logps.append(lp.float().view(-1, 2).cpu())
        counts.append(n.view(-1, 2).cpu())
    model.train(was_training)
    return torch.cat(logps), torch.cat(counts)


def reference_logprobs(model, pairs, val_pairs, config, pad_id, out: Path, device, autocast,
                       weights_sha256: str = "") -> tuple:
    """The starting model's log-probabilities of every pair, computed once (cached in the run dir). The
    cache is keyed on the starting weights' sha256, not only their path: another model put at the same
    path computes them again."""
    path = out / REFERENCE_FILE
    digest = hashlib.sha256(repr((config.init_from, weights_sha256, config.peft, config.dtype, [(p.prompt, p.chosen, p.rejected)
                                  for p in pairs + val_pairs])).encode()).hexdigest()
    if path.exists():
        try:
            with safe_open(path, "pt") as f:
                same = (f.metadata() or {}).get("fingerprint") == digest
            if same:
                saved = load_file(path)
                return saved["train"], saved["val"]
        except Exception:  # noqa: BLE001 - a damaged cache (an older run stopped mid-write): computed again
            pass
    model.to(device)
    batch = config.micro_batch * 2
    train = pair_logprobs(model, pairs, config.seq_len, pad_id, batch, device, autocast)[0]
    val = (pair_logprobs(model, val_pairs, config.seq_len, pad_id, batch, device, autocast)[0]
           if val_pairs else torch.zeros(0, 2))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"train": train.contiguous(), "val": val.contiguous()},
                                  metadata={"fingerprint": digest}))
    return train, val


def run_dpo(config: DPOConfig, out: str | Path, resume: bool = False) -> TrainResult:
    out = Path(out)
    model, tokenizer, base_dir = start_model(config)
    summary = apply_peft(model, config)
    if config.disable_dropout:
        disable_dropout(model)
    prefix = prompt_prefix_ids(model)
    train_records, val_records = stage_records(config, "preference")
    pairs, val_pairs, dropped_note = encode_train_and_held_out_pairs(tokenizer, train_records, val_records,
                                                                     config.seq_len, prefix)
    heldout = task_records(config, val_records)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    mean_len = sum(len(p.prompt) * 2 + len(p.chosen) + len(p.rejected) for p in pairs) / len(pairs)
    ref_train = ref_val = None  # computed below, once the Trainer has chosen the device and precision

    # RPO's NLL is a mean over the chosen tokens of the whole step (as one large batch computes it), and a
    # step's micro-batches hold different numbers of them: each micro-batch is told the step's count, over all
    # its micro-batches on every process (items_for gives them all, deterministically: no communication)
    chosen_tokens = [sum(t != -100 for t in completion_item(p.prompt, p.chosen).targets) for p in pairs] \
        if config.rpo_alpha else []
    step_chosen: dict[int, int] = {}

    def batch_fn(step: int, micro: int):
        index = items_for(step, micro, trainer.micro_batches_per_step, config.micro_batch, len(pairs), config.seed)
        batch = pair_batch([pairs[i] for i in index], config.seq_len, pad)
        batch["ref"] = ref_train[index]
        if config.rpo_alpha:
            if step not in step_chosen:  # (the step's items are its micro-batches' consecutive slices: one call)
                step_chosen.clear()
                step_chosen[step] = sum(chosen_tokens[i] for i in items_for(
                    step, 0, 1, config.micro_batch * trainer.micro_batches_per_step, len(pairs), config.seed))
            # the Trainer weighs this micro-batch by its share of the step's pairs; this scale turns its NLL sum
            # into its share of the step's per-token NLL: sum x (step pairs / its pairs) / step chosen tokens
            batch["nll_scale"] = torch.tensor(config.micro_batch * trainer.micro_batches_per_step
                                              / (len(index) * max(step_chosen[step], 1)))
        return batch

    # a mean over pairs (each micro-batch holds micro_batch of them: equal weights, said all the same), plus
    # RPO's NLL scaled as above, so that a step's loss is that of one large batch
    @weighted_by(lambda batch: batch["ref"].shape[0])
    def objective(model, batch):
        logps, counts = sequence_logprobs(model, batch, 2 * batch["ref"].shape[0])
        logps, counts = logps.view(-1, 2), counts.view(-1, 2)
        ref = batch["ref"]
        loss, metrics = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], config.beta, config.loss,
                                 (counts[:, 0], counts[:, 1]))
        if config.rpo_alpha:
            nll_sum = -logps[:, 0].sum()
            loss = loss + config.rpo_alpha * nll_sum * batch["nll_scale"]
            metrics["chosen_nll"] = (nll_sum / counts[:, 0].sum().clamp(min=1)).item()  # this micro-batch's per token
        return loss, metrics

    def evaluate(runner) -> dict:
        device = next(runner.parameters()).device
        results = {}
        if val_pairs:
            logps, counts = pair_logprobs(runner, val_pairs, config.seq_len, pad, config.micro_batch * 2, device,
                                          trainer.autocast())
            loss, metrics = dpo_loss(logps[:, 0], logps[:, 1], ref_val[:, 0], ref_val[:, 1], config.beta,
                                     config.loss, (counts[:, 0], counts[:, 1]))
            results.update(val_loss=loss.item(), val_reward_accuracy=metrics["reward_accuracy"],
                           val_reward_margin=metrics["reward_margin"])
        if heldout:
            acc = task_accuracy(runner, tokenizer, heldout, config.eval_max_new_tokens)
            results["task_accuracy"] = acc["accuracy"]
            results.update({f"acc_{k}": v for k, v in acc["by_kind"].items()})
        return results

    def sample(model, step: int) -> str:
        record = (heldout or val_records or train_records)[0]
        return reply_text(tokenizer, generate(model, tokenizer, [record.prompt], config.eval_max_new_tokens)[0])

    # tokens of a micro-batch: an estimate from the mean pair (each pair is its prompt twice and both replies)
    trainer = Trainer(model, config, out, batch_fn, max(1, int(config.micro_batch * mean_len)), objective=objective,
                      evaluate=evaluate if (val_pairs or heldout) else None, sample=sample, tokenizer=tokenizer,
                      epoch_items=len(pairs),
                      save_model=peft_saver(model, tokenizer, base_dir) if config.peft != "none" else None,
                      stage="dpo", starting_models={"init_from": base_dir})
    trainer.prepare_output(resume)  # refusals (another stage's checkpoints, a changed model) before the cache
    print(f"dpo: {len(pairs)} pairs ({len(val_pairs)} held out){dropped_note}; {summary}; computing reference "
          "log-probabilities", flush=True)
    ref_train, ref_val = reference_logprobs(model, pairs, val_pairs, config, pad, out, trainer.device,
                                            trainer.autocast(), trainer.starting_fingerprints()["init_from"]["sha256"])
    print(f"dpo: reference done; {trainer.total_steps} steps, loss {config.loss}, beta {config.beta} "
          f"(a loss of log 2 = {math.log(2):.4f} at the start)", flush=True)
    return trainer.fit(resume=resume)
