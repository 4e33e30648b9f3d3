"""`llmkit scaling`: the fits recover known laws, a sweep resumes without retraining, bad run files are named."""

import json

import numpy as np
import pytest

from conftest import SHAKESPEARE, cli_in_process
from llmkit.errors import ConfigError, DataError
from llmkit.scaling.fit import (compute_optimal, fit_runs, huber_objective, isoflop_profile, predicted_loss)

# Besiroglu et al. 2024's refit of Chinchilla: the law the synthetic runs are drawn from.
TRUTH = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.35, "beta": 0.37}


def synthetic_runs(noise: float, seed: int = 1) -> list[dict]:
    """5 budgets x 7 sizes around each budget's optimum, losses from TRUTH times exp(N(0, noise))."""
    rng = np.random.default_rng(seed)
    runs = []
    for budget in (1e15, 1e16, 1e17, 1e18, 1e19):
        n_opt = compute_optimal(TRUTH, budget)[0]
        for factor in np.geomspace(1 / 8, 8, 7):
            params = n_opt * factor
            tokens = budget / (6 * params)
            loss = float(predicted_loss(TRUTH, params, tokens)) * float(np.exp(rng.normal(0, noise)))
            runs.append({"params": params, "tokens": tokens, "flops": budget, "val_loss": loss})
    return runs


def test_both_approaches_recover_a_known_law_from_noisy_losses():
    fit = fit_runs(synthetic_runs(noise=0.003), bootstrap=6)
    law = fit.approach3
    assert abs(law["alpha"] - 0.35) < 0.02 and abs(law["beta"] - 0.37) < 0.02
    assert abs(law["E"] - 1.82) < 0.05
    assert 0.8 < law["A"] / 482 < 1.25 and 0.8 < law["B"] / 2085 < 1.25
    true_a = 0.37 / (0.35 + 0.37)
    assert abs(law["a"] - true_a) < 0.02
    # approach 2 (budgets grouped by flops: no `budget` field), from the parabolas' minima alone
    assert len(fit.approach2["profiles"]) == 5
    assert abs(fit.approach2["a"] - true_a) < 0.04 and abs(fit.approach2["b"] - (1 - true_a)) < 0.04
    lo, hi = fit.approach2["a_ci95"]
    assert lo <= fit.approach2["a"] <= hi
    out = fit.to_json()
    assert {"E", "A", "B", "alpha", "beta", "a", "b", "alpha_ci95", "a_ci95"} <= out.keys()
    json.dumps(out)  # fit.json is plain JSON


def test_noise_free_law_is_recovered_exactly():
    fit = fit_runs(synthetic_runs(noise=0.0), bootstrap=0)
    for key, value in TRUTH.items():
        assert fit.approach3[key] == pytest.approx(value, rel=2e-3), key


def test_isoflop_parabola_finds_the_vertex_and_the_power_law_its_exponent():
    runs = []
    for budget in (1e12, 1e13, 1e14):
        n_star = 3.0 * budget ** 0.6
        for n in np.geomspace(n_star / 5, n_star * 3, 5):
            runs.append({"params": n, "tokens": budget / (6 * n), "flops": budget, "budget": budget,
                         "val_loss": 2.0 + 0.1 * np.log(n / n_star) ** 2})
    profile = isoflop_profile(runs[:5])
    assert profile.n_opt == pytest.approx(3.0 * 1e12 ** 0.6, rel=1e-6) and profile.inside
    assert profile.d_opt == pytest.approx(1e12 / (6 * profile.n_opt), rel=1e-6)
    fit = fit_runs(runs, bootstrap=0)
    assert fit.approach2["a"] == pytest.approx(0.6, abs=1e-6) and fit.approach2["b"] == pytest.approx(0.4, abs=1e-6)


def test_huber_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    ln_n, ln_d = np.log(rng.uniform(1e5, 1e8, 20)), np.log(rng.uniform(1e7, 1e10, 20))
    ln_loss = np.log(rng.uniform(2, 4, 20))
    theta = np.array([6.0, 7.5, 0.6, 0.4, 0.3])
    value, grad = huber_objective(theta, ln_n, ln_d, ln_loss)
    for i in range(5):
        step = np.zeros(5)
        step[i] = 1e-6
        numeric = (huber_objective(theta + step, ln_n, ln_d, ln_loss)[0]
                   - huber_objective(theta - step, ln_n, ln_d, ln_loss)[0]) / 2e-6
        assert numeric == pytest.approx(grad[i], rel=1e-4, abs=1e-6)


def test_fit_and_predict_from_a_hand_written_runs_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_runs(noise=0.002)))
    result = cli_in_process("scaling", "fit", path, "--bootstrap", 3)
    assert result.returncode == 0, result.stderr
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert abs(fit["alpha"] - 0.35) < 0.03 and fit["alpha_ci95"][0] <= fit["alpha_ci95"][1]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("isoflop.png", "frontier.png", "contours.png"))
    assert "approach 2" in result.stdout and "approach 3" in result.stdout
    result = cli_in_process("scaling", "predict", tmp_path, "--budget", 1e20, "--json")
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)["approach3"]
    n_true, d_true = compute_optimal(TRUTH, 1e20)
    assert 0.7 < prediction["n_opt"] / n_true < 1.4 and 0.7 < prediction["d_opt"] / d_true < 1.4
    lo, hi = prediction["loss_ci95"]
    assert lo < prediction["loss"] < hi and lo < float(predicted_loss(TRUTH, n_true, d_true)) < hi


@pytest.mark.parametrize("line, field", [
    ('{"params": 1e6, "tokens": 2e7, "flops": 1.2e14}', "val_loss"),
    ('{"params": -5, "tokens": 2e7, "flops": 1.2e14, "val_loss": 3}', "params"),
    ('{"params": 1e6, "tokens": "many", "flops": 1.2e14, "val_loss": 3}', "tokens"),
    ('{"params": 1e6, "tokens": 2e7, "flops": 1.2e14, "val_loss": 3, "epochs": NaN}', "epochs"),
])
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "runs.jsonl"
    good = '{"params": 1e6, "tokens": 2e7, "flops": 1.2e14, "val_loss": 3.0}'
    path.write_text(good + "\n\n" + line + "\n")
    result = cli_in_process("scaling", "fit", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert "\n" not in message and f"{path}:3:" in message and f"'{field}'" in message


def test_a_line_that_is_not_json_and_a_missing_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"params": 1e6, "tokens"\n')
    result = cli_in_process("scaling", "fit", path)
    assert result.returncode == 2 and f"{path}:1: not valid JSON" in result.stderr
    result = cli_in_process("scaling", "predict", tmp_path / "nowhere", "--budget", 1e15)
    assert result.returncode == 2 and "llmkit scaling fit" in result.stderr


# --- the sweep, in this process, with tiny models on tiny shards ------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling-shards")
    files = [SHAKESPEARE / "train" / "as_you_like_it_gut.txt"]
    assert cli_in_process("tokenizer", "train", "--input", *files, "--vocab-size", 512, "--out", root / "tok").returncode == 0
    for split, inputs in (("train", files), ("val", [SHAKESPEARE / "val" / "macbeth_gut.txt"])):
        result = cli_in_process("data", "prepare", "--input", *inputs, "--tokenizer", root / "tok", "--out", root / split)
        assert result.returncode == 0, result.stderr
    return root


def tiny_overrides(shards) -> list[str]:
    return [f"data={shards / 'train'}", f"val_data={shards / 'val'}", "seq_len=32", "micro_batch=2", "dtype=fp32",
            "threads=1", "eval_tokens=512", "sample_tokens=4", "log_every=1"]


def test_a_resumed_sweep_trains_only_the_runs_not_yet_recorded(tmp_path, shards, one_thread):
    from llmkit.scaling.runs import read_runs
    from llmkit.scaling.shapes import parse_sizes
    from llmkit.scaling.sweep import run_sweep

    shapes = parse_sizes("1x16,1x32", None, 16, 16)
    out = tmp_path / "sweep"
    lines = []
    first = run_sweep(out, [1e8], shapes, overrides=tiny_overrides(shards), say=lines.append)
    assert [r["name"] for r in first] == ["C1e08-L1-d16", "C1e08-L1-d32"]
    for record in first:  # D = C / flops_per_token, in whole steps of 64 tokens
        assert record["tokens"] % 64 == 0 and abs(record["flops"] - 1e8) <= 32 * record["flops_per_token"]
        assert record["epochs"] == pytest.approx(record["tokens"] / json.loads(
            (shards / "train" / "manifest.json").read_text())["tokens"])
        assert record["val_loss"] > 0 and record["val_bpb"] > 0
    before = (out / "runs.jsonl").read_text()
    # a run begun but never recorded (the sweep was killed during it) is trained again from scratch
    stale = out / "runs" / "C2e08-L1-d16" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "latest").write_text("step_0000005\n")
    second = run_sweep(out, [1e8, 2e8], shapes, overrides=tiny_overrides(shards), say=lines.append)
    assert [r["name"] for r in second] == ["C2e08-L1-d16", "C2e08-L1-d32"]
    assert (out / "runs.jsonl").read_text().startswith(before)  # the finished runs are untouched
    assert [r["name"] for r in read_runs(out)] == [r["name"] for r in first + second]
    assert run_sweep(out, [1e8, 2e8], shapes, overrides=tiny_overrides(shards), say=lines.append) == []
    assert any("4 runs planned, 4 already in" in line for line in lines)
    with pytest.raises(ConfigError, match="other settings"):  # another learning rate: not the same sweep
        run_sweep(out, [1e8, 5e8], shapes, overrides=tiny_overrides(shards) + ["lr=0.01"], say=lines.append)
    with pytest.raises(ConfigError, match="max_tokens"):
        run_sweep(out, [1e8], shapes, overrides=["max_tokens=5"], say=lines.append)


def test_pretrain_takes_its_token_budget_from_a_fitted_law(tmp_path, shards):
    from llmkit.scaling.predict import scaled_pretrain_config
    from llmkit.scaling.shapes import model_costs
    from llmkit.train.config import TrainConfig

    (tmp_path / "fit.json").write_text(json.dumps({"approach2": {}, "approach3": {
        **TRUTH, "a": 0.37 / 0.72, "b": 0.35 / 0.72}}))
    overrides = tiny_overrides(shards) + ["model=tiny"]
    config = TrainConfig.preset("shakespeare-cpu", overrides + ["model=tiny"])
    scaled, message = scaled_pretrain_config(config, tmp_path, overrides)
    params = model_costs(config.model_config().__class__.preset("tiny", vocab_size=512), 32)[0]
    n_opt, d_opt = compute_optimal(TRUTH, 6 * params * scaled.max_tokens)
    assert n_opt == pytest.approx(params, rel=1e-3) and scaled.max_steps == 0
    assert "per parameter" in message and str(tmp_path / "fit.json") in message
    with pytest.raises(ConfigError, match="max_tokens"):
        scaled_pretrain_config(config, tmp_path, overrides + ["max_tokens=1000"])
    with pytest.raises(DataError, match="llmkit scaling fit"):
        scaled_pretrain_config(config, tmp_path / "none", overrides)


@pytest.mark.parametrize("args, expected", [
    (["--budgets", "1e12", "--sizes", "2x128", "--depths", "1,2"], "not both"),
    (["--budgets", "1e12", "--sizes", "2by128"], "'2by128' is not LAYERSxWIDTH"),
    (["--budgets", "1e12,-3", "--depths", "1,2"], "positive FLOP counts"),
    (["--budgets", "1e12", "--depths", "1,x"], "'x' is not a positive whole number"),
    (["--budgets", "1e12", "--depths", "1,2", "max_steps=5"], "sets max_steps for each run itself"),
])
def test_sweep_usage_errors_are_one_line(tmp_path, args, expected):
    result = cli_in_process("scaling", "sweep", "--out", tmp_path / "s", *args)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_pretrain_scaling_with_its_own_budget_is_refused(tmp_path):
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "--scaling", tmp_path, "max_tokens=1000")
    assert result.returncode == 2 and "give one of them" in result.stderr and not (tmp_path / "run").exists()


def test_runs_whose_loss_does_not_fall_are_one_clear_error(tmp_path):
    runs = synthetic_runs(noise=0.0)
    for run in runs:
        run["val_loss"] = 3.0  # neither size nor data helps: the law has no exponent to fit
    (tmp_path / "flat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    result = cli_in_process("scaling", "fit", tmp_path / "flat.jsonl", "--bootstrap", 3)
    assert result.returncode == 2 and "the fitted law has no exponent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- right-size: the model for a time budget on this machine ----------------------------------------------
def _sweep_dir(path, shards, law) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "fit.json").write_text(json.dumps({"approach2": {}, "approach3": {**law, "a": 0.5, "b": 0.5}}))
    (path / "sweep.json").write_text(json.dumps({
        "preset": "shakespeare-cpu", "overrides": tiny_overrides(shards), "vocab_size": 512, "seq_len": 32,
        "model": "llama-cpu", "model_overrides": {}, "rule": {"width_per_layer": 16, "head_dim": 16}}))
    (path / "runs.jsonl").write_text(json.dumps({"params": 2e5, "tokens": 1e6, "flops": 1.2e12, "val_loss": 5.0}) + "\n")


def preset_label(shards) -> str:
    """The preset's own shape on this machine (shakespeare-cpu has a smaller one for CPUs training in fp32)."""
    from llmkit.train.config import TrainConfig

    shape = TrainConfig.preset("shakespeare-cpu", tiny_overrides(shards)).model_overrides
    return f"L{shape['n_layers']}-d{shape['d_model']}"


def test_right_size_ranks_measured_speeds_by_the_fitted_law(tmp_path, shards):
    """With a law where data is worth more than size, a fast small model beats a slow big one; with the
    speeds swapped the big one wins. The predicted loss is the law's at D = tokens/s x seconds, capped at
    MAX_EPOCHS passes over the training data."""
    from llmkit.scaling.fit import MAX_EPOCHS
    from llmkit.scaling.right_size import right_size
    from llmkit.scaling.shapes import parse_sizes

    law = {"E": 1.0, "A": 10.0, "B": 500.0, "alpha": 0.3, "beta": 0.4}
    _sweep_dir(tmp_path, shards, law)
    settings = json.loads((tmp_path / "sweep.json").read_text())
    extra = parse_sizes("1x16,4x64", None, 16, 16)
    train_tokens = json.loads((shards / "train" / "manifest.json").read_text())["tokens"]

    def run(speeds):
        return right_size(law, settings, 30.0, "shakespeare-cpu", tiny_overrides(shards), extra,
                          measure=lambda preset, overrides, shape: speeds.get(shape.label, 50.0), say=lambda _: None)

    fast_small = run({"L1-d16": 2000.0, "L4-d64": 50.0})
    assert fast_small["best"]["shape"]["label"] == "L1-d16"
    for row in fast_small["candidates"]:
        tokens = min(row["tokens_per_s"] * 30.0, MAX_EPOCHS * train_tokens)
        assert row["loss"] == pytest.approx(float(predicted_loss(law, row["params"], tokens)))
    assert any(row["preset_shape"] and row["shape"]["label"] == preset_label(shards) for row in fast_small["candidates"])
    fast_big = run({"L1-d16": 50.0, "L4-d64": 2000.0})
    assert fast_big["best"]["shape"]["label"] == "L4-d64"
    assert "time_limit_s=30" in fast_big["command"] and "model.d_model=64" in fast_big["command"]
    # a size beyond the largest swept model is timed and shown but never chosen: the law is extrapolated there
    in_range = right_size(law, settings, 30.0, "shakespeare-cpu", tiny_overrides(shards), extra, say=lambda _: None,
                          measure=lambda preset, overrides, shape: {"L1-d16": 50.0, "L4-d64": 2000.0}.get(shape.label, 50.0),
                          max_params=1e5)
    assert in_range["best"]["params"] <= 1e5
    assert {r["shape"]["label"] for r in in_range["candidates"] if r["extrapolated"]} >= {"L4-d64", preset_label(shards)}


def test_right_size_times_real_training_steps(tmp_path, shards):
    _sweep_dir(tmp_path, shards, {"E": 1.0, "A": 10.0, "B": 500.0, "alpha": 0.3, "beta": 0.4})
    result = cli_in_process("scaling", "right-size", tmp_path, "--seconds", 0.01, "--sizes", "1x16", "--json",
                            *tiny_overrides(shards), "threads=1")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    labels = [row["shape"]["label"] for row in out["candidates"]]
    assert "L1-d16" in labels and preset_label(shards) in labels  # the extra size and the preset's own
    for row in out["candidates"]:
        # tokens come from the unrounded rate; the JSON rate is rounded to 0.1 tok/s, so allow that rounding
        assert row["tokens_per_s"] > 0
        assert int((row["tokens_per_s"] - 0.05) * 0.01) <= row["tokens"] <= int((row["tokens_per_s"] + 0.05) * 0.01)
    assert "timing candidate shapes" in result.stderr
    assert out["best"]["params"] <= 2e5 and "not chosen" in result.stderr  # the preset's 4x256 is beyond the sweep
    missing = cli_in_process("scaling", "right-size", tmp_path / "none", "--seconds", 10)
    assert missing.returncode == 2 and "llmkit scaling fit" in missing.stderr
    bad = cli_in_process("scaling", "right-size", tmp_path, "--seconds", 0)
    assert bad.returncode == 2 and "--seconds" in bad.stderr


def test_predict_chooses_no_shape_that_would_repeat_the_data_beyond_the_fitted_range():
    """The fit leaves out runs beyond MAX_EPOCHS, so the shape predict offers stays within them too."""
    from llmkit.scaling.fit import MAX_EPOCHS
    from llmkit.scaling.predict import best_shape

    settings = {"model": "llama-cpu", "model_overrides": {}, "vocab_size": 512, "seq_len": 32,
                "rule": {"width_per_layer": 16, "head_dim": 16}}
    free = best_shape(TRUTH, settings, 1e13)
    limited = best_shape(TRUTH, {**settings, "train_tokens": free["tokens"] / MAX_EPOCHS / 3}, 1e13)
    assert limited["tokens"] <= MAX_EPOCHS * free["tokens"] / MAX_EPOCHS / 3
    assert limited["params"] > free["params"] and limited["loss"] > free["loss"]
