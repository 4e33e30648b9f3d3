"""`llmkit scaling sweep`: for each compute budget C and model shape, one pretraining run through the one
Trainer (llmkit.train.pretrain, in this process) with D = C / flops_per_token(seq_len) tokens (see
shapes.py for how N and C are counted). Each run has its own schedule fitted to its length: warmup over
warmup_fraction of its steps, then cosine decay to min_lr_ratio ending exactly at its last step
(Hoffmann et al. 2022 found a schedule longer than the run overestimates the loss of small budgets).

Every finished run is appended to DIR/runs.jsonl; a sweep started again with the same DIR skips the runs
already there (so an interrupted sweep resumes, and more budgets or sizes extend it) and restarts an
unfinished one from scratch. DIR/sweep.json holds the settings every run shares (preset, overrides, data,
shape rule): extending a sweep with other settings is refused, as its runs would not be comparable.
Under torchrun every process trains each run and rank 0 records it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmkit.atomic import atomic_write_text, make_output_dir
from llmkit.errors import ConfigError
from llmkit.scaling.runs import RUNS_FILE, append_run, read_runs
from llmkit.scaling.shapes import Shape, model_costs

SETTINGS_FILE = "sweep.json"
# Fields each run sets itself: given as overrides they would silently change every run's budget or shape.
SWEEP_FIELDS = ("max_tokens", "max_steps", "time_limit_s", "warmup_steps", "eval_every", "ckpt_every",
                "model.n_layers", "model.d_model", "model.n_heads", "model.n_kv_heads", "model.d_ff", "init_from")
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")  # set by each run's shape
MIN_STEPS = 8  # a run of fewer optimizer steps measures its warmup, not a model size: planned, not run


@dataclass
class PlannedRun:
    name: str
    budget: float
    shape: Shape
    params: int  # N, the FLOP rule's (shapes.py)
    params_total: int
    flops_per_token: float
    tokens: int  # D planned: whole steps of batch_tokens nearest C / flops_per_token
    steps: int
    epochs: float  # passes over the training tokens


def run_name(budget: float, shape: Shape, with_heads: bool = False) -> str:
    """with_heads: the sweep has shapes of one layer count and width with different heads, which the
    label alone would give one name (sweeps without such shapes keep the names they always had)."""
    return f"C{budget:.3g}".replace("+", "") + f"-{shape.label}" + (f"-h{shape.n_heads}" if with_heads else "")


def base_config(preset: str, overrides: list[str]):
    from llmkit.train.config import TrainConfig

    for item in overrides:
        if item.split("=", 1)[0].strip() in SWEEP_FIELDS:
            raise ConfigError(f"{item}: the sweep sets {item.split('=', 1)[0]} for each run itself (budgets and "
                              "sizes come from --budgets and --sizes/--depths); leave it out")
    return TrainConfig.preset(preset, overrides)


def data_facts(config) -> tuple[int, int]:
    """(embedding rows, training tokens) of the run's data: the built-in corpus is made (once) if needed."""
    from llmkit.train.pretrain import padded_vocab_size, resolve_data

    train, _ = resolve_data(config, is_main=os.environ.get("RANK", "0") == "0")
    return padded_vocab_size(train.manifest["vocab_size"]), int(train.lengths.sum())


def plan_sweep(config, budgets: list[float], shapes: list[Shape], vocab: int, train_tokens: int,
               world_size: int = 1) -> tuple[list[PlannedRun], list[str]]:
    """Every (budget, shape) run, and a line for each left out (fewer than MIN_STEPS steps)."""
    from llmkit.config import ModelConfig
    from llmkit.device import resolve_device
    from llmkit.train.pretrain import check_model_fits

    per_micro = config.micro_batch * config.seq_len * world_size
    step_tokens = max(1, round(config.batch_tokens / per_micro)) * per_micro if config.batch_tokens else per_micro
    planned, left_out = [], []
    heads = {}
    for shape in shapes:
        heads.setdefault((shape.n_layers, shape.d_model), set()).add(shape.n_heads)
    for budget in budgets:
        for shape in shapes:
            name = run_name(budget, shape, len(heads[shape.n_layers, shape.d_model]) > 1)
            cfg = ModelConfig.preset(config.model, **{**config.model_overrides, **shape.overrides(), "vocab_size": vocab})
            # priced by arithmetic before model_costs builds it (on the meta device, but a layer at a time)
            check_model_fits(cfg, resolve_device(config.device), f"the sweep's model {name}")
            params, per_token, total = model_costs(cfg, config.seq_len)
            steps = round(budget / per_token / step_tokens)
            if steps < MIN_STEPS:
                left_out.append(f"{name}: C={budget:.3g} buys {budget / per_token:,.0f} tokens, "
                                f"under {MIN_STEPS} steps of {step_tokens} tokens: left out")
                continue
            tokens = steps * step_tokens
            planned.append(PlannedRun(name, budget, shape, params, total, per_token, tokens,
                                      steps, tokens / train_tokens))
    check_unique_names(planned)
    return planned, left_out


def check_unique_names(planned: list[PlannedRun]) -> None:
    """A run is known by its name (its folder, its line in runs.jsonl, what a resumed sweep skips), and the
    name keeps 3 digits of the budget: two runs of one name would train into one folder, the second
    deleting the first's, and a resumed sweep would count both as done."""
    seen: dict[str, PlannedRun] = {}
    for p in planned:
        other = seen.setdefault(p.name, p)
        if other is not p:
            raise ConfigError(f"two runs of the sweep would both be named {p.name}: budgets {other.budget:g} and "
                              f"{p.budget:g} differ beyond the 3 significant digits of the name: give budgets "
                              "that differ in their first 3 digits")


def check_settings(out: Path, settings: dict) -> None:
    """A sweep's runs share their settings: DIR/sweep.json is written by the first sweep and must match later."""
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path}: not valid JSON; it records the sweep's shared settings: restore it or "
                              "remove the folder to start a new sweep") from None
        differ = [k for k in settings if saved.get(k) != settings[k]]
        if differ:
            shown = "; ".join(f"{k}: {saved.get(k)!r} there, {settings[k]!r} now" for k in differ)
            raise ConfigError(f"{out}: its runs were made with other settings ({shown}); extend it with the same "
                              "preset and overrides, or choose another --out")
    elif os.environ.get("RANK", "0") == "0":
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


SWEEP_ENTRIES = {RUNS_FILE, SETTINGS_FILE, "runs", "fit.json", "isoflop.png", "frontier.png", "contours.png"}


def _is_sweep_dir(out: Path) -> bool:
    """A folder `llmkit scaling sweep` (or fit) made: its settings file, or nothing but a sweep's entries
    (a hand-written runs.jsonl being extended; hidden files such as a killed write's leftovers aside)."""
    return (out / SETTINGS_FILE).is_file() or all(
        entry.name in SWEEP_ENTRIES or entry.name.startswith(".") for entry in out.iterdir())


def run_sweep(out: str | Path, budgets: list[float], shapes: list[Shape], preset: str = "shakespeare-cpu",
              overrides: list[str] | None = None, warmup_fraction: float = 0.05, rule: dict | None = None,
              dry_run: bool = False, say=print) -> list[dict]:
    """Train every planned run not yet in DIR/runs.jsonl; returns the records added. `rule` (the depth/width
    rule's knobs) is kept in sweep.json for `predict` to build shapes of other sizes the same way."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.pretrain import pretrain

    if not 0 <= warmup_fraction < 1:
        raise ConfigError(f"--warmup-fraction {warmup_fraction}: must be in [0, 1)")
    out = Path(out)
    overrides = list(overrides or [])
    config = base_config(preset, overrides)
    vocab, train_tokens = data_facts(config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    planned, left_out = plan_sweep(config, budgets, shapes, vocab, train_tokens, world)
    for line in left_out:
        say(line)
    runs_path = out / RUNS_FILE
    done = {r.get("name") for r in read_runs(runs_path)} if runs_path.exists() else set()
    todo = [p for p in planned if p.name not in done]
    total_flops = sum(p.flops_per_token * p.tokens for p in todo)
    say(f"sweep: {len(planned)} runs planned, {len(planned) - len(todo)} already in {runs_path}, {len(todo)} to train "
        f"({total_flops:.3g} FLOPs); data: {train_tokens:,} training tokens")
    for p in planned:
        flag = f", {p.epochs:.1f} epochs (repeats data)" if p.epochs > 1 else f", {p.epochs:.2f} epochs"
        say(f"  {p.name:<22} N={p.params:>11,}  D={p.tokens:>12,}  {p.steps:>6} steps{flag}"
            + ("  (done)" if p.name in done else ""))
    if dry_run or not todo:
        return []
    # a sweep writes runs/ and deletes unrecorded run folders there: never among a user's own files
    make_output_dir(out, ours=_is_sweep_dir, what="a scaling sweep (runs.jsonl, sweep.json, runs/)")
    check_settings(out, {"preset": preset, "overrides": overrides, "vocab_size": vocab, "seq_len": config.seq_len,
                         "train_tokens": train_tokens, "model": config.model,
                         "model_overrides": {k: v for k, v in config.model_overrides.items() if k not in SHAPE_FIELDS}, "warmup_fraction": warmup_fraction,
                         **({"rule": rule} if rule else {})})
    added = []
    for index, p in enumerate(todo, 1):
        run_dir = out / "runs" / p.name
        if run_dir.exists() and os.environ.get("RANK", "0") == "0":
            shutil.rmtree(run_dir)  # begun but never recorded: started again from scratch
        warmup = max(1, round(warmup_fraction * p.steps)) if warmup_fraction else 0
        run_overrides = overrides + [f"model.{k}={v}" for k, v in p.shape.overrides().items()] + [
            f"max_tokens={p.tokens}", "max_steps=0", "time_limit_s=0", f"warmup_steps={warmup}", "eval_every=0",
            "ckpt_every=0", "plot=false"]
        run_config = TrainConfig.preset(preset, run_overrides)
        say(f"[{index}/{len(todo)}] {p.name}: N={p.params:,}, D={p.tokens:,} ({p.epochs:.2f} epochs), "
            f"C={p.flops_per_token * p.tokens:.3g} FLOPs, warmup {warmup} of {p.steps} steps")
        start = time.perf_counter()
        result = pretrain(run_config, run_dir)
        wall = time.perf_counter() - start
        if "val_loss" not in result.eval:
            raise ConfigError(f"{p.name}: the run has no validation loss; the sweep needs val_data (the built-in "
                              "corpus has it; for your own shards pass val_data=DIR)")
        record = {"name": p.name, "budget": p.budget, "params": p.params, "params_total": p.params_total,
                  "tokens": result.tokens, "flops": p.flops_per_token * result.tokens,
                  "flops_per_token": p.flops_per_token, "val_loss": result.eval["val_loss"],
                  "val_bpb": result.eval.get("val_bpb"), "epochs": result.tokens / train_tokens,
                  "repeats_data": result.tokens > train_tokens, "steps": result.steps, "warmup_steps": warmup,
                  "wall_s": round(wall, 2), "train_s": round(result.train_time_s, 2), **p.shape.overrides()}
        if os.environ.get("RANK", "0") == "0":
            append_run(runs_path, record)
        added.append(record)
        say(f"[{index}/{len(todo)}] {p.name}: val_loss {record['val_loss']:.4f}, "
            f"{wall:.0f} s; recorded in {runs_path}")
    return added
