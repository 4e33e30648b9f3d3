"""`llmkit scaling predict DIR --budget C`, and `llmkit pretrain --scaling DIR`: the fitted law put to use.

predict: the compute-optimal N and D for a budget by both approaches; where DIR is a sweep (sweep.json
beside fit.json), the model shape of the sweep's depth/width rule whose fitted loss at D = C /
flops_per_token is lowest (so the attention FLOPs and whole layers are accounted for), its predicted loss
with a 95% interval, and the `llmkit pretrain` command that trains it.

pretrain --scaling DIR: the model's token budget from the fitted law instead of Chinchilla's fixed 20
tokens per parameter: the D that the law's compute-optimal frontier pairs with the model's N.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from llmkit.errors import ConfigError, DataError
from llmkit.scaling.fit import MAX_EPOCHS, allocation, compute_optimal, loss_interval, predicted_loss
from llmkit.scaling.shapes import model_costs, shape_for_depth
from llmkit.scaling.sweep import SETTINGS_FILE

FIT_FILE = "fit.json"
MAX_DEPTH = 256


def load_fit(directory: str | Path) -> dict:
    path = Path(directory) / FIT_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file; run `llmkit scaling fit {directory}` first")
    try:
        fit = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not valid JSON; run `llmkit scaling fit {directory}` again") from None
    if not isinstance(fit, dict) or not isinstance(fit.get("approach2"), dict) or not isinstance(fit.get("approach3"), dict):
        raise DataError(f"{path}: not a fit written by `llmkit scaling fit`; run it again")
    read = {"approach3": ("E", "A", "B", "alpha", "beta", "a"), "approach2": ("a", "b", "n_coef", "d_coef")}
    for name, keys in read.items():
        for key in keys:
            value = fit[name].get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{path}: {name}.{key} must be a number, not {value!r}; run `llmkit scaling fit "
                                f"{directory}` again")
    return fit


def tokens_for_params(fit: dict, params: float) -> tuple[float, str]:
    """The D the fitted compute-optimal frontier pairs with N, and which fit said so."""
    a3, a2 = fit["approach3"], fit["approach2"]
    if a3.get("alpha", 0) > 0 and a3.get("beta", 0) > 0:
        # N_opt = G (C/6)^a: invert for C at this N, then D = (C/6) / N.
        g = (a3["alpha"] * a3["A"] / (a3["beta"] * a3["B"])) ** (1 / (a3["alpha"] + a3["beta"]))
        return (params / g) ** (1 / a3["a"]) / params, "the parametric law (approach 3)"
    if a2.get("a"):
        budget = (params / a2["n_coef"]) ** (1 / a2["a"])
        return a2["d_coef"] * budget ** a2["b"], "the IsoFLOP frontier (approach 2)"
    raise DataError("the fit has neither a parametric law nor an IsoFLOP frontier: sweep more sizes and budgets")


def _read_settings(directory: Path) -> dict | None:
    path = directory / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path}: not valid JSON; restore it, or remove it to predict without a model shape") from None
    if settings is None:
        return None
    kinds = {"preset": str, "model": str, "overrides": list, "seq_len": int, "vocab_size": int}
    wrong = ([] if isinstance(settings, dict) else ["the whole file (an object)"]) or \
        [key for key, kind in kinds.items()
         if not isinstance(settings.get(key), kind) or isinstance(settings[key], bool)]
    if not wrong:  # optional (older sweeps have no train_tokens), but of their type when present
        wrong += [key for key in ("rule", "model_overrides") if not isinstance(settings.get(key) or {}, dict)]
        count = settings.get("train_tokens")
        if count is not None and (isinstance(count, bool) or not isinstance(count, (int, float))):
            wrong.append("train_tokens")
    if wrong:
        raise DataError(f"{path}: {wrong[0]} is missing or of the wrong type; it was written by `llmkit scaling "
                        "sweep`: restore it, or remove it to predict without a model shape")
    return settings


def best_shape(law: dict, settings: dict, budget: float):
    """The depth-rule shape with the lowest fitted loss at D = budget / flops_per_token (None: none fits),
    among those whose D stays within MAX_EPOCHS passes over the sweep's training data."""
    from llmkit.config import ModelConfig

    rule = settings.get("rule") or {}
    best = None
    for depth in range(1, MAX_DEPTH + 1):
        shape = shape_for_depth(depth, rule.get("width_per_layer", 64), rule.get("head_dim", 64))
        cfg = ModelConfig.preset(settings["model"], **{**settings.get("model_overrides", {}), **shape.overrides(),
                                                       "vocab_size": settings["vocab_size"]})
        params, per_token, total = model_costs(cfg, settings["seq_len"])
        tokens = budget / per_token
        if tokens < 1:
            break
        if settings.get("train_tokens") and tokens > MAX_EPOCHS * settings["train_tokens"]:
            continue  # the law was fitted on runs within MAX_EPOCHS passes over the data: no prediction beyond
        loss = float(predicted_loss(law, params, tokens))
        if best is None or loss < best["loss"]:
            best = {"shape": shape, "params": params, "params_total": total, "tokens": tokens, "loss": loss}
        elif depth > best["shape"].n_layers + 3:
            break  # past the minimum along the rule
    return best


def predict(directory: str | Path, budget: float, out: str = "RUN") -> dict:
    if not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"--budget {budget}: must be a positive number of FLOPs")
    directory = Path(directory)
    fit = load_fit(directory)
    result = {"budget": budget, **allocation(fit, budget)}
    law = fit["approach3"]
    settings = _read_settings(directory)
    if settings and law.get("alpha", 0) > 0:
        chosen = best_shape(law, settings, budget)
        if chosen:
            shape = chosen["shape"]
            chosen["loss_ci95"] = loss_interval(law, chosen["params"], chosen["tokens"])
            tokens = int(chosen["tokens"])
            args = ["llmkit", "pretrain", "--preset", settings["preset"], "--out", out, *settings["overrides"],
                    *(f"model.{k}={v}" for k, v in shape.overrides().items()), f"max_tokens={tokens}", "max_steps=0",
                    "time_limit_s=0", f"warmup_steps={max(1, round(settings.get('warmup_fraction', 0.05) * tokens / _step_tokens(settings)))}"]
            chosen["command"] = " ".join(shlex.quote(a) for a in args)
            chosen["shape"] = {"label": shape.label, **shape.overrides()}
            result["model"] = chosen
    return result


def _step_tokens(settings: dict) -> int:
    from llmkit.train.config import TrainConfig

    config = TrainConfig.preset(settings["preset"], settings["overrides"])
    per_micro = config.micro_batch * config.seq_len
    return max(1, round(config.batch_tokens / per_micro)) * per_micro if config.batch_tokens else per_micro


def scaled_pretrain_config(config, directory: str | Path, overrides: list[str]):
    """`llmkit pretrain --scaling DIR`: config with max_tokens from the fitted law for its model's N, and a
    line saying so. A budget given on the command line as well is a contradiction, refused."""
    from dataclasses import replace

    from llmkit.config import ModelConfig
    from llmkit.scaling.sweep import data_facts

    given = [item.split("=", 1)[0] for item in overrides if item.split("=", 1)[0] in ("max_tokens", "max_steps")]
    if given:
        raise ConfigError(f"--scaling sets the token budget from the fitted law; {given[0]}= on the command line "
                          "sets it too: give one of them")
    fit = load_fit(directory)
    if config.init_from:
        from llmkit.checkpoint import load_config
        from llmkit.convert import resolve_model

        model_config = load_config(resolve_model(config.init_from))
    else:
        vocab, _ = data_facts(config)
        model_config = ModelConfig.preset(config.model, **{**config.model_overrides, "vocab_size": vocab})
    params, per_token, _ = model_costs(model_config, config.seq_len)
    tokens, source = tokens_for_params(fit, params)
    tokens = max(1, int(tokens))
    message = (f"scaling: {tokens:,} tokens ({tokens / params:.1f} per parameter, {per_token * tokens:.3g} FLOPs) for "
               f"N = {params:,} from {source} in {Path(directory) / FIT_FILE}, instead of 20 tokens per parameter")
    if config.time_limit_s:
        message += f"; time_limit_s={config.time_limit_s:g} may stop it sooner"
    return replace(config, max_tokens=tokens, max_steps=0), message


__all__ = ["compute_optimal", "load_fit", "predict", "scaled_pretrain_config", "tokens_for_params"]
