"""`llmkit scaling right-size DIR --seconds T`: the model size for a *time* budget on this machine.

The fitted law speaks in FLOPs; a user has minutes. The FLOPs a CPU delivers per second depend on the
model's size (a small model spends its step in Python and memory traffic, not in matmuls: 3 GFLOP/s for
a 34k-parameter model against 25 for a 475k one on a 2-core EPYC), so the compute-optimal N for
C = FLOP/s x T is not the time-optimal one. Here each candidate shape trains for a few real steps of the
preset (the one Trainer, the preset's own sequence length, batch and precision) to measure its tokens/s;
D = tokens/s x T, and the fitted law L(N, D) ranks the candidates. D beyond MAX_EPOCHS passes over the
training data counts only up to that (Muennighoff et al. 2023: up to about 4 epochs repeated data is
worth nearly as much as fresh; the law was fitted on runs within that).

Candidates: the sweep's depth/width rule from depth 1 to a size past the FLOP optimum, plus the
preset's own shape (the "before"), plus any --sizes given. Only sizes within the sweep's range of N can
win: beyond the largest swept model the law is an extrapolation, and a measured one went wrong (a 2-core
EPYC, BENCHMARKS.md: the law fitted up to 724k parameters ranked 2-4M-parameter shapes first; trained,
they lost to the in-range choice). Those rows are still timed and shown, marked.

The law's losses are those of the sweep's sequence length and batch: time the preset with the same
(`seq_len=`, `micro_batch=` overrides) for predictions in its units.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import tempfile
from pathlib import Path

from llmkit.errors import ConfigError, text_lines
from llmkit.scaling.fit import MAX_EPOCHS, compute_optimal, loss_interval, predicted_loss
from llmkit.scaling.shapes import Shape, model_costs, shape_for_depth

MEASURE_STEPS = 20  # training steps per candidate; the first WARM_STEPS are left out (allocation, caches)
WARM_STEPS = 5
GENEROUS_FLOPS = 60e9  # FLOP/s: above what 2 CPU cores sustain in fp32 training, so no good size is cut off


def measure_tokens_per_s(preset: str, overrides: list[str], shape: Shape | None, steps: int = MEASURE_STEPS) -> float:
    """Steady training tokens/s of the preset at this shape (None: the preset's own), through pretrain."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.pretrain import pretrain

    shape_overrides = [f"model.{k}={v}" for k, v in shape.overrides().items()] if shape else []
    with tempfile.TemporaryDirectory(prefix="llmkit-right-size-") as out:
        config = TrainConfig.preset(preset, list(overrides) + shape_overrides + [
            f"max_steps={steps}", "time_limit_s=0", "max_tokens=0", "warmup_steps=1", "log_every=1", "eval_every=0",
            "ckpt_every=0", "plot=false", "sample_every=0", "eval_tokens=1"])
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the table is the output
            pretrain(config, out)
        records = [json.loads(line) for line in text_lines((Path(out) / "metrics.jsonl").read_text()) if line.strip()]
    steady = [r for r in records if "tokens_per_s" in r and r["step"] > WARM_STEPS]
    if not steady:
        raise ConfigError(f"could not time the preset {preset}: no training steps were logged")
    # the harmonic mean of per-step rates = total tokens / total time of the steady steps
    return len(steady) / sum(1.0 / r["tokens_per_s"] for r in steady)


def candidate_shapes(law: dict, settings: dict, seconds: float, extra: list[Shape]) -> list[Shape]:
    """The rule's shapes from depth 1 to the first with more than twice the FLOP-optimal N of the budget a
    CPU would reach at a generous GENEROUS_FLOPS, and the extra ones."""
    rule = settings.get("rule") or {}
    n_opt, _ = compute_optimal(law, GENEROUS_FLOPS * seconds)
    shapes = []
    for depth in range(1, 257):
        shape = shape_for_depth(depth, rule.get("width_per_layer", 64), rule.get("head_dim", 64))
        shapes.append(shape)
        if _params(settings, shape) > 2 * n_opt:
            break
    return sorted(set(shapes) | set(extra), key=lambda s: _params(settings, s))


def _config(settings: dict, shape: Shape | None, preset_config=None):
    from llmkit.config import ModelConfig

    overrides = dict(preset_config.model_overrides) if preset_config else dict(settings.get("model_overrides", {}))
    if shape:
        overrides.update(shape.overrides())
    model = preset_config.model if preset_config else settings["model"]
    return ModelConfig.preset(model, **{**overrides, "vocab_size": settings["vocab_size"]})


def _params(settings: dict, shape: Shape) -> int:
    return model_costs(_config(settings, shape), settings["seq_len"])[0]


def right_size(law: dict, settings: dict, seconds: float, preset: str, overrides: list[str],
               extra: list[Shape] | None = None, measure=measure_tokens_per_s, say=print,
               max_params: float = math.inf) -> dict:
    """Measure each candidate's tokens/s, predict its loss after `seconds` of training; the best (among
    those with N <= max_params, the largest swept) and the table."""
    from llmkit.scaling.sweep import base_config, data_facts

    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"--seconds {seconds}: must be a positive number of seconds of training")
    preset_config = base_config(preset, overrides)
    vocab, train_tokens = data_facts(preset_config)
    if vocab != settings["vocab_size"]:
        raise ConfigError(f"the preset {preset} trains with a {vocab}-token vocabulary, the sweep's law was fitted "
                          f"at {settings['vocab_size']}: its losses are in other units; sweep with the same data")
    rows = []
    own = Shape(*(preset_config.model_overrides.get(k) for k in ("n_layers", "d_model", "n_heads", "d_ff"))) \
        if all(k in preset_config.model_overrides for k in ("n_layers", "d_model", "n_heads", "d_ff")) else None
    for shape in candidate_shapes(law, settings, seconds, list(extra or []) + ([own] if own else [])):
        cfg = _config(settings, shape, preset_config)
        params, per_token, total = model_costs(cfg, preset_config.seq_len)
        tokens_per_s = measure(preset, overrides, shape)
        tokens = tokens_per_s * seconds
        effective = min(tokens, MAX_EPOCHS * train_tokens)
        loss = float(predicted_loss(law, params, effective))
        row = {"shape": {"label": shape.label, **shape.overrides()}, "params": params, "params_total": total,
               "tokens_per_s": round(tokens_per_s, 1), "flops_per_s": tokens_per_s * per_token, "tokens": int(tokens),
               "epochs": tokens / train_tokens, "loss": loss, "loss_ci95": loss_interval(law, params, effective),
               "preset_shape": shape == own, "extrapolated": params > max_params}
        rows.append(row)
        say(f"  {shape.label:<10} N {params:>10,}  {tokens_per_s:>8,.0f} tok/s  {row['flops_per_s'] / 1e9:5.1f} GFLOP/s  "
            f"D {int(tokens):>11,} ({row['epochs']:.1f} epochs)  predicted loss {loss:.4f}"
            + ("  (the preset's shape)" if row["preset_shape"] else "")
            + ("  (larger than any swept model: not chosen)" if row["extrapolated"] else ""))
    best = min([r for r in rows if not r["extrapolated"]] or rows, key=lambda r: r["loss"])
    args = ["llmkit", "pretrain", "--preset", preset, "--out", "RUN", *overrides, f"time_limit_s={seconds:g}",
            *(f"model.{k}={v}" for k, v in best["shape"].items() if k != "label")]
    return {"seconds": seconds, "preset": preset, "candidates": rows, "best": best,
            "command": " ".join(shlex.quote(a) for a in args)}
