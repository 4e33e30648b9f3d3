"""The one training loop. A stage (pretraining, SFT, reward modelling, DPO, ...) is an objective plus
its data; the Trainer owns everything else: optimizer and LR schedule, gradient accumulation and
clipping, bf16 autocast, torch.compile, DDP / FSDP2, evaluation, checkpoints and exact resume,
metrics.jsonl, the progress bar and the loss curve. A feature added here works for every stage.

    objective(model, batch) -> (loss, metrics)     a differentiable scalar and floats to log
    objective.units(batch) -> int                  optional (set by @weighted_by): how many units (learned
                                                   tokens, pairs) the loss is a mean over, from the batch alone
    batch_fn(step, micro) -> batch                 deterministic in (step, micro): resume is exact;
                                                   micro < trainer.micro_batches_per_step (all processes')
    evaluate(model) -> dict                        e.g. {"val_loss": ..., "val_bpb": ...}
    save_model(directory, state) -> None           optional: how the model directory is written (default:
                                                   the one checkpoint format); PEFT and reward models write
                                                   merged weights + adapter / head files through it

A run directory belongs to one run of one stage: its checkpoints record the stage (and PEFT method) and a
sha256 of each starting model (init_from, a teacher), and a resume by another stage, or after a starting
model changed on disk, is refused before anything is loaded. An --out holding files no training run wrote
is refused. The final model files are written under a marker (FINAL_SAVE_MARKER) that loaders refuse,
so a run killed while writing them leaves a folder that says so, not a mix of two steps; --resume
writes them again from the last checkpoint.

A step's loss is that of one large batch, however it is split into micro-batches and processes. An objective
whose loss is a mean over units that vary between micro-batches (SFT's assistant tokens, MLM's masked ones)
says so with `units`: the Trainer draws all of a step's micro-batches first, counts their units, sums the
count over the processes (one all_reduce) and backpropagates loss_i * n_i * world_size / N (DDP and FSDP
average the processes' gradients: the world_size undoes that), so the gradient is sum(n_i loss_i) / N,
the mean over all N units of the step, as Hugging Face's num_items_in_batch fix (2024). A micro-batch of
no units gets weight 0. The logged loss is the same weighted mean; the objective's metrics stay the plain
mean of the micro-batches'. An objective without `units` keeps equal weights (loss / micro-batches, a
mean of means), right where every micro-batch holds as many units (classification: one per example).

Only parameters with requires_grad are optimised (LoRA, prompt tuning: the rest is frozen); the model
may be a module wrapping the Transformer (a reward model's head) if it offers num_params(),
flops_per_token() and config. With save_model set, a resumable checkpoint also holds the trainable
tensors alone (trainable.safetensors), and resume restores those onto the model as constructed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from llmkit.atomic import make_output_dir
from llmkit.checkpoint import model_from_state
from llmkit.device import autocast_context, resolve_device, training_autocast_dtype
from llmkit.errors import OutputError, TrainingError
from llmkit.model import Transformer
from llmkit.train import distributed as D
from llmkit.train.config import TrainConfig
from llmkit.train.optim import build_optimizers, lr_multiplier
from llmkit.train.progress import MetricsLog, ProgressDisplay, measure_peak_flops, plot_losses
from llmkit.train.trainer_checkpoints import TRAINING_STATE, TrainerCheckpoints, read_training_state

CALIBRATION_STEPS = 10  # steps timed (after 5 warm-up steps) before the plan is fitted to time_limit_s
# what a run writes in its --out before its first checkpoint or metrics line (DPO's reference cache)
RUN_FILES = ("checkpoints", "metrics.jsonl", "loss.png", "reference_logprobs.safetensors")
MODEL_FILES = ("config.json", "model.safetensors")


def is_training_output(out: Path) -> bool:
    """Is `out` a training run's directory (or empty)? A run's checkpoints, metrics or DPO's reference
    cache say so; anything else (a user's tokenizer, notes, a model no run wrote) is not."""
    entries = _visible_entries(out)
    return not entries or any(name in entries for name in RUN_FILES)


def _visible_entries(out: Path) -> list[str]:
    """The names in `out`, less hidden ones: another process's write probe or temporary file (the ranks of
    a distributed run check the folder at once), never a user's model or notes."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []


def check_training_out(out: str | Path) -> Path:
    """`out` created for a training run, or refused in one line when it holds files no training run wrote:
    the run would write its model files (config.json, tokenizer.json, ...) over them."""
    out = Path(out)
    if out.is_dir() and not is_training_output(out):
        entries = _visible_entries(out)
        models = [name for name in MODEL_FILES if name in entries]
        if models:  # a model no run wrote here: someone's own
            raise OutputError(f"{out}: holds a model ({', '.join(models)}) that no training run wrote "
                              "(no metrics.jsonl or checkpoints); training would replace it: choose another --out")
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise OutputError(f"{out}: holds files that no training run wrote ({shown}); training writes its model, "
                          "checkpoints and metrics there: choose a new or empty --out")
    return make_output_dir(out)


def weighted_by(units: Callable[[object], int]):
    """Decorator of an objective whose loss is a mean over `units(batch)` things of its batch (learned tokens,
    pairs): the Trainer then weights each micro-batch by its share of the step's units (module docstring)."""
    def mark(objective):
        objective.units = units
        return objective
    return mark


def learned_tokens(targets: torch.Tensor) -> int:
    """Positions with a target (not -100): what a cross-entropy with ignore_index=-100 averages over."""
    return int((targets != -100).sum())


@weighted_by(lambda batch: learned_tokens(batch[1]))
def causal_lm_objective(model, batch):
    """Next-token prediction (pretraining), or masked language modelling (targets only at the masked tokens):
    mean cross-entropy of the targets given the inputs."""
    inputs, targets = batch
    return model(inputs, targets), {}


@dataclass
class TrainResult:
    steps: int
    tokens: int
    train_time_s: float
    final_loss: float
    eval: dict
    peak_flops: float  # the bf16 (or fp32) matmul peak measured at the start: MFU's denominator
    flops_per_token: float  # the model's training FLOPs per token (6N + attention): MFU's numerator
    params: int


class Trainer(TrainerCheckpoints):
    def __init__(self, model: Transformer, config: TrainConfig, out_dir: str | Path,
                 batch_fn: Callable[[int, int], object], tokens_per_micro_batch: int,
                 objective: Callable = causal_lm_objective, evaluate: Callable[[torch.nn.Module], dict] | None = None,
                 sample: Callable[[Transformer, int], str] | None = None, tokenizer=None, epoch_items: int | None = None,
                 save_model: Callable[[Path, dict], None] | None = None, stage: str = "pretrain",
                 starting_models: dict[str, str | Path | None] | None = None, checkpoint_multiple: int = 1):
        """tokens_per_micro_batch: what one micro-batch of one process holds (for packed pairs, an
        estimate); the Trainer turns config.batch_tokens into a number of accumulated micro-batches from
        it, here and nowhere else. epoch_items: a stage's training items (rows, pairs, prompts), of which
        each micro-batch takes config.micro_batch; with max_steps 0 the plan is then config.epochs passes.
        stage: the verb (`sft`, `dpo`, ...), recorded in checkpoints: another verb cannot resume them.
        starting_models: {role: directory} of the models the run starts from (init_from, teacher), whose
        weights' sha256 a resume must find unchanged. checkpoint_multiple: periodic checkpoints only at
        steps that are multiples of it (RLHF: the first step of a batch of rollouts, which live in memory)."""
        self.config = config
        self.model = model
        self.out = Path(out_dir)
        self.batch_fn, self.objective, self.evaluate, self.sample = batch_fn, objective, evaluate, sample
        self.tokenizer = tokenizer
        self.save_model = save_model
        self.tokens_per_micro = tokens_per_micro_batch
        self.device = resolve_device(config.device)
        self.autocast_dtype = training_autocast_dtype(config.dtype, self.device)
        self.dist = D.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        world_micro = tokens_per_micro_batch * self.dist.world_size
        # The nearest whole number of micro-batches per process, at least one: batch_tokens need not be a
        # multiple of anything (a pair stage's micro-batch size is only an estimate); plan() says what it became.
        self.accum = max(1, round(config.batch_tokens / world_micro)) if config.batch_tokens else 1
        self.batch_tokens = self.accum * world_micro
        # micro-batches of one step over all processes: batch_fn(step, micro) is called with micro in
        # [0, micro_batches_per_step), each process taking its own (see fit), so a stage that indexes its
        # examples by (step, micro) gives every process different ones
        self.micro_batches_per_step = self.accum * self.dist.world_size
        self.epoch_items = epoch_items
        self.total_steps = self._planned_steps()
        self.planned_steps = self.total_steps  # the budget; time_limit_s may plan fewer
        self.budget_change: tuple[int, int] | None = None  # (saved, new) budget when a resume changes it
        self.config_changes: list[tuple[str, object, object]] = []  # (field, saved, now) found on resume
        self.step_size_change: tuple[int, int] | None = None  # (tokens per step, processes) saved, if a resume changes it
        self.stage, self.peft = stage, getattr(config, "peft", "none")
        self.starting_models = {role: Path(d) for role, d in (starting_models or {}).items() if d}
        self._fingerprints: dict[str, dict] | None = None
        self.checkpoint_multiple = max(1, checkpoint_multiple)
        self._output_ready = False
        self._resume_state: tuple[Path, dict] | None = None

    def autocast(self):
        """The mixed-precision context of this run's steps, for a stage's evaluation to run the same way."""
        return autocast_context(self.device, self.autocast_dtype)

    def step_size_message(self) -> str:
        saved, world = self.step_size_change  # (a resume on another number of processes: see _load_latest)
        said = f"tokens per step changed from {saved} ({world} process(es)) to {self.batch_tokens} ({self.dist.world_size})"
        if saved % (self.tokens_per_micro * self.dist.world_size) == 0:  # else batch_tokens=saved rounds back to now's
            return f"{said}: give batch_tokens={saved} to keep the checkpoint's batch"
        return f"{said}: no batch_tokens makes {saved} from {self.dist.world_size} process(es); resume with {world} to keep it"

    # -- planning
    def _planned_steps(self) -> int:
        c = self.config
        if c.max_steps:
            return c.max_steps
        if self.epoch_items is not None:  # a stage's epochs over its examples (PostTrainConfig.epochs)
            per_step = c.micro_batch * self.micro_batches_per_step
            return max(1, math.ceil(getattr(c, "epochs", 1.0) * self.epoch_items / per_step))
        tokens = c.max_tokens or 20 * self.model.num_params()  # Chinchilla: ~20 tokens/param (Hoffmann et al. 2022)
        return max(1, math.ceil(tokens / self.batch_tokens))

    def plan(self, peak_flops: float) -> str:
        c, n = self.config, self.model.num_params()
        tokens = self.total_steps * self.batch_tokens
        flops = self.model.flops_per_token(c.seq_len) * tokens
        rule = "max_steps" if c.max_steps else ("max_tokens" if c.max_tokens else "Chinchilla, 20 tokens/parameter")
        if self.epoch_items is not None and not c.max_steps:
            rule = f"{getattr(c, 'epochs', 1.0):g} epoch(s) of {self.epoch_items} examples"
        eta = flops / (0.4 * peak_flops)
        step_size = (f"steps of {self.batch_tokens} tokens ({self.accum} micro-batch(es) x {self.dist.world_size} "
                     "process(es))")
        if c.batch_tokens and c.batch_tokens != self.batch_tokens:
            step_size += f" (batch_tokens {c.batch_tokens} rounded to whole micro-batches)"
        if c.time_limit_s and eta > c.time_limit_s:
            return (f"plan: {n / 1e6:.2f}M parameters, {step_size}; as many steps as fit in "
                    f"{_duration(c.time_limit_s)} of training (fitted to the measured step time after "
                    f"{CALIBRATION_STEPS + 5} steps), at most {self.total_steps} = {tokens / 1e6:.2f}M tokens ({rule})")
        return (f"plan: {n / 1e6:.2f}M parameters, {tokens / 1e6:.2f}M tokens ({rule}) in {self.total_steps} "
                f"{step_size}, {flops:.3g} FLOPs, ~{_duration(eta)} at 40% of the measured "
                f"{peak_flops / 1e12:.2f} TFLOP/s peak"
                + (f", stopping after {_duration(c.time_limit_s)} of training" if c.time_limit_s else ""))

    def prepare_output(self, resume: bool = False) -> None:
        """Everything that can refuse the run directory, before a stage writes or computes anything there
        (fit calls it; DPO first, before its reference cache): a folder of someone else's files, an
        earlier run's checkpoints without --resume, and on --resume checkpoints of another stage or PEFT
        method, or of a starting model that has changed since."""
        if self._output_ready:
            return
        check_training_out(self.out)
        self._check_checkpoint_folder(resume)
        # hashed now, at the start: the starting models may be moved or replaced while the run trains
        self.starting_fingerprints()
        if resume:
            directory = self._latest_checkpoint()
            self._resume_state = (directory, read_training_state(directory / TRAINING_STATE))  # read once
            self._check_same_run(*self._resume_state)
        self._output_ready = True

    # -- the loop
    def fit(self, resume: bool = False) -> TrainResult:
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        self.prepare_output(resume)
        model = self.model.to(self.device)
        model.train()
        wrapped = D.wrap_model(model, self.dist, c.fsdp, self.device)
        runner = torch.compile(wrapped) if c.compile else wrapped
        optimizers = build_optimizers(wrapped, c, self.device.type)
        for opt in optimizers:
            for group in opt.param_groups:
                group["peak_lr"] = group["lr"]
        # Measured before a resume restores the RNG: the benchmark's random matrices must not shift the
        # random stream (dropout) of a resumed run against an uninterrupted one.
        peak = measure_peak_flops(self.device, self.autocast_dtype or torch.float32)
        start_step, tokens_seen, train_time = 0, 0, 0.0
        if resume:
            start_step, tokens_seen, train_time = self._load_latest(wrapped, optimizers)
        main = self.dist.is_main
        metrics = MetricsLog(self.out / "metrics.jsonl", resume_step=start_step if resume else None) if main else None
        flops_per_token = self.model.flops_per_token(c.seq_len)
        display = ProgressDisplay(self.total_steps, start_step, enabled=main)
        display.print(self.plan(peak))
        if resume:
            display.print(f"resumed from step {start_step} ({tokens_seen} tokens, {train_time:.1f} s of training)")
            if self.config_changes:  # said, not refused: a new lr or more evaluations are fair on resume
                display.print("settings changed since the checkpoint: " + ", ".join(
                    f"{k} {old!r} -> {new!r}" for k, old, new in self.config_changes))
            if self.step_size_change:  # no config field differs, yet each step now holds other tokens
                display.print(self.step_size_message())
            if self.budget_change:
                display.print(f"budget changed from {self.budget_change[0]} to {self.budget_change[1]} steps: "
                              "the learning-rate schedule follows the new plan from here")
        step_autocast = self.autocast()
        units_of = getattr(self.objective, "units", None)
        last_loss, last_eval = float("nan"), {}
        window_tokens, window_time = 0, 0.0
        step = start_step
        calibration_start, next_fit = train_time, start_step + CALIBRATION_STEPS + 5
        checkpoint_due = False  # ckpt_every passed, waiting for a step that is a multiple of checkpoint_multiple
        while step < self.total_steps:
            t0 = time.perf_counter()
            mult = lr_multiplier(step, self.total_steps, c)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["peak_lr"] * mult
            loss_sum = torch.zeros((), device=self.device)
            extra: dict[str, float] = {}  # the objective's own metrics (e.g. DPO's reward accuracy), mean of micro-batches
            batches = (self.batch_fn(step, micro * self.dist.world_size + self.dist.rank)
                       for micro in range(self.accum))  # drawn one by one, unless counted first (below)
            weights = None
            if units_of is not None:  # every micro-batch counted before the first forward (see the docstring)
                batches = list(batches)
                weights = self._unit_weights(step, [units_of(b) for b in batches])
            for micro, batch in enumerate(batches):
                batch = to_device(batch, self.device)
                with D.gradient_sync(wrapped, micro == self.accum - 1), step_autocast:
                    loss, objective_metrics = self.objective(runner, batch)
                if weights is None:
                    (loss / self.accum).backward()
                    loss_sum += loss.detach()
                else:  # weight 0 (no units): no gradient, yet it takes part in the sync; its 0/0 mean is not logged
                    (loss * weights[micro]).backward()
                    if weights[micro]:
                        loss_sum += loss.detach() * weights[micro]
                for key, value in (objective_metrics or {}).items():
                    extra[key] = extra.get(key, 0.0) + float(value) / self.accum
            grad_norm = (torch.nn.utils.clip_grad_norm_(wrapped.parameters(), c.grad_clip)
                         if c.grad_clip else torch.zeros(()))
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            # the mean of the micro-batches' losses, or with units their weighted sum: the step's mean per unit
            loss_value = D.mean_across_ranks(loss_sum / (self.accum if weights is None else 1), self.dist).item()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - t0
            if not math.isfinite(loss_value):
                # a user's error (lr, init_std, data), said in one line: hypothesis found model.init_std=7e37
                raise TrainingError(f"loss is {loss_value} at step {step}; lower lr (or model.init_std), or check "
                                    "the data; checkpoints written before this step are intact")
            step += 1
            train_time += elapsed
            tokens_seen += self.batch_tokens
            window_tokens += self.batch_tokens
            window_time += elapsed
            last_loss = loss_value
            log_now = step % c.log_every == 0 or step == self.total_steps
            if log_now:
                tok_s = window_tokens / window_time
                mfu = tok_s * flops_per_token / (peak * self.dist.world_size)  # peak is one process's
                if mfu > 1.0:
                    # The peak was measured while the machine was busier than now (another job shared the
                    # cores); no run outpaces the machine's matmul, so measure it again and keep the larger.
                    peak = max(peak, measure_peak_flops(self.device, self.autocast_dtype or torch.float32))
                    mfu = tok_s * flops_per_token / (peak * self.dist.world_size)
                record = {"step": step, "loss": round(loss_value, 6), "lr": mult * c.lr, "grad_norm": float(grad_norm),
                          "tokens": tokens_seen, "tokens_per_s": round(tok_s, 1), "mfu": round(mfu, 4),
                          "train_time_s": round(train_time, 3), **{k: round(v, 6) for k, v in extra.items()}}
                if metrics:
                    metrics.write(record)
                window_tokens, window_time = 0, 0.0
                status = f"loss {loss_value:.4f}  lr {mult * c.lr:.2e}  {tok_s:,.0f} tok/s  MFU {mfu:.1%}"
            else:
                status = f"loss {loss_value:.4f}"
            display.update(step, status, log_now)
            if c.time_limit_s and step >= next_fit and step < 0.9 * self.total_steps:
                # Re-fit 15 steps after the (re)start and then every fifth of the plan: the machine's speed
                # may drift, and a resumed run may be on another machine.
                step_time = (train_time - calibration_start) / (step - start_step - 5)
                self._fit_to_time_limit(step, train_time, step_time, display)
                next_fit = step + max(CALIBRATION_STEPS, self.total_steps // 5)
            if step == start_step + 5:
                calibration_start = train_time  # the first steps (compilation, warm caches) are not typical
            out_of_time = bool(c.time_limit_s) and self._agree(train_time >= c.time_limit_s)
            final = step == self.total_steps or out_of_time
            if self.evaluate and ((c.eval_every and step % c.eval_every == 0) or final):
                last_eval = self._run_evaluation(runner, wrapped, model, step, train_time, metrics, display)
            elif self.sample and c.sample_every and step % c.sample_every == 0:
                self._print_sample(wrapped, model, step, display)
            checkpoint_due = checkpoint_due or bool(c.ckpt_every and step % c.ckpt_every == 0)
            if (checkpoint_due and step % self.checkpoint_multiple == 0) or final:
                self._save(wrapped, model, optimizers, step, tokens_seen, train_time)
                checkpoint_due = False
            if out_of_time:
                display.print(f"time limit of {_duration(c.time_limit_s)} reached at step {step}")
                break
        display.close()
        self._save_final(wrapped, model)  # a collective under FSDP: every rank takes part
        if main and c.plot and metrics and metrics.path.exists():
            plot_losses(metrics.path, self.out / "loss.png")
        return TrainResult(step, tokens_seen, train_time, last_loss, last_eval, peak, flops_per_token,
                           self.model.num_params())

    def _fit_to_time_limit(self, step: int, train_time: float, step_time: float, display) -> None:
        """Fit the plan to end within time_limit_s, from the mean step time so far: the LR schedule
        then decays fully in the time given instead of being cut off mid-way. The clock decides, so a
        time-limited run (resumed or not) is not step-for-step reproducible; a step or token budget is."""
        remaining = self.config.time_limit_s - train_time
        fitted = step + int(0.97 * remaining / step_time)  # 3% margin for timing noise
        fitted = max(int(self._agree_min(fitted)), step + 1)
        fitted = min(fitted, self.planned_steps)  # never more than the step or token budget
        if fitted != self.total_steps:
            self.total_steps = fitted
            display.set_total(self.total_steps)
            tokens = self.total_steps * self.batch_tokens
            flops = self.model.flops_per_token(self.config.seq_len) * tokens
            display.print(f"time limit {_duration(self.config.time_limit_s)}: {step_time * 1000:.0f} ms/step measured, "
                          f"planning {self.total_steps} steps ({tokens / 1e6:.2f}M tokens, {flops:.3g} FLOPs)")

    def _unit_weights(self, step: int, counts: list) -> list[float]:
        """Each micro-batch's weight: its share of the units of the whole step (all micro-batches of all
        processes), times world_size because DDP and FSDP average the processes' gradients."""
        counts = [float(n) for n in counts]
        total = sum(counts)
        if self.dist.enabled:
            t = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            total = t.item()
        if total <= 0:  # every process sees the same total: all stop together
            raise TrainingError(f"step {step}: no micro-batch of the step has anything to learn (0 units: e.g. no "
                                "token with a target); check the data")
        return [n * self.dist.world_size / total for n in counts]

    def _agree_min(self, value: float) -> float:
        if not self.dist.enabled:
            return value
        t = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.item()

    def _agree(self, flag: bool) -> bool:
        """All ranks stop together: any rank over its time limit stops every rank."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _run_evaluation(self, runner, wrapped, model, step, train_time, metrics, display) -> dict:
        results = self.evaluate(runner if self.config.fsdp else model)
        if self.dist.is_main:
            record = {"step": step, "train_time_s": round(train_time, 3), **{k: round(v, 6) for k, v in results.items()}}
            if metrics:
                metrics.write(record)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
            display.print(f"step {step}  {shown}  ({_duration(train_time)} of training)")
        if self.sample:
            self._print_sample(wrapped, model, step, display)
        return results

    def _print_sample(self, wrapped, model, step, display) -> None:
        """Rank 0 prints a sample. Under FSDP every rank must call this: the sharded weights are
        gathered (as for a checkpoint) into a plain copy of the model on the CPU, which rank 0 samples."""
        if self.config.fsdp:
            if self.save_model is not None:
                return  # a post-training model (e.g. with adapters) is not a plain Transformer to rebuild
            state = D.full_model_state(wrapped, True)
            if not self.dist.is_main:
                return
            if model.config.tie_embeddings:
                state.pop("lm_head.weight", None)  # tok_emb.weight again, as save_checkpoint leaves it out
            model = model_from_state(model.config, state, weights="the gathered FSDP state",
                                     described_by="the run's model config")
        if self.dist.is_main:
            display.print(f"sample: {self.sample(model, step)!r}")


def to_device(batch, device):
    """A batch (a tensor, or tuples, lists and dicts of them) moved to `device` (also pretrain's memory probe)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
