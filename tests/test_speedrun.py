"""The speedrun end to end at its `tiny` size: every stage runs, writes its checkpoint, and the report
card (table, plots, timings, sample chat) and report.json come out. The real sizes are measured in
BENCHMARKS.md; this checks the wiring, not the accuracy."""

import json

import pytest

from llmkit.errors import ConfigError
from llmkit.speedrun import MODELS, load_plan, speedrun
from conftest import cli_in_process


@pytest.mark.slow
def test_tiny_speedrun_writes_every_stage_and_the_report_card(tmp_path, cache_dir):
    import os
    import shutil

    from conftest import SHAKESPEARE

    # the built-in corpus, placed where fetch_shakespeare looks, so the test needs no download
    corpus = cache_dir / "data" / "shakespeare"
    for split in ("train", "val"):
        (corpus / split).mkdir(parents=True, exist_ok=True)
        for f in (SHAKESPEARE / split).glob("*.txt"):
            shutil.copy(f, corpus / split / f.name)
    assert os.environ["LLMKIT_CACHE"] == str(cache_dir)
    out = tmp_path / "run"
    results = speedrun(out, size="tiny", overrides=["sft.max_steps=6"])
    for stage in ("base", "sft", "reward", "dpo", "rlhf"):
        assert (out / stage / "model.safetensors").exists(), stage
    assert (out / "reward" / "reward_head.safetensors").exists()
    assert results["stages"]["sft"]["steps"] == 6
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) == set(MODELS)
    for result in report["accuracy"].values():
        assert result["n"] == 20 and 0 <= result["accuracy"] <= 1 and set(result["by_kind"]) == {
            "play", "speaker", "continue", "passage"}
    assert {"pretrain", "sft", "collect", "reward", "dpo", "rlhf", "evaluate"} <= set(report["timings_s"])
    # the reward model and DPO learn from pairs collected from the SFT model: one or more per question
    collect = report["stages"]["collect"]
    pairs = (out / "task" / "preference_on_policy.jsonl").read_text().splitlines()
    assert collect["pairs"] == len(pairs) >= collect["prompts"] > 0 and "Preference pairs: the SFT model" in \
        (out / "report.md").read_text()
    assert set(report["paired"]) == {"sft vs base", "dpo vs sft", "rlhf vs sft"}
    for c in report["paired"].values():
        assert c["gained"] + c["lost"] <= 20 and 0 < c["p_value"] <= 1
    assert "correct" not in report["accuracy"]["sft"]  # per-question lists stay out of the report
    assert len(report["chat"]) == 3
    text = (out / "report.md").read_text()
    assert "| base |" in text and "| rlhf |" in text and "| dpo vs sft |" in text and "![accuracy](accuracy.png)" in text
    assert "Reproduce: `llmkit speedrun --out DIR sft.max_steps=6`" in text  # the overrides the run was given
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "training.png").stat().st_size > 1000


def test_speedrun_overrides_are_checked():
    assert load_plan("cpu", ["sft.epochs=3"])["sft"]["epochs"] == 3
    with pytest.raises(ConfigError, match="STAGE.field=value"):
        load_plan("cpu", ["epochs=3"])
    with pytest.raises(ConfigError, match="unknown speedrun size"):
        load_plan("huge")
    result = cli_in_process("speedrun", "--out", "/tmp/never", "nostage.x=1")
    assert result.returncode == 2 and "STAGE.field=value" in result.stderr


def test_every_plan_is_checked_before_the_first_stage(tmp_path):
    """Each size's plan builds every stage's config (the GPU plan included, which CI cannot run); a
    misspelt field stops the run before any stage starts, naming the stage and the field."""
    from llmkit.speedrun import check_plan

    for size in ("tiny", "cpu", "gpu"):
        check_plan(load_plan(size), tmp_path)
    for override, stage in (("dpo.lrr=1", "dpo-assistant"), ("collect.max_new_token=3", "collect"),
                            ("task.train_per_kin=5", "task"), ("pretrain.lr=fast", "shakespeare-cpu")):
        with pytest.raises(ConfigError, match=stage):
            check_plan(load_plan("cpu", [override]), tmp_path)
    result = cli_in_process("speedrun", "--out", tmp_path / "run", "dpo.lrr=1")
    assert result.returncode == 2 and "lrr" in result.stderr and not (tmp_path / "run").exists()
    # a misspelt preset is the same one-line error as `llmkit sft --preset` gives, not a traceback
    with pytest.raises(ConfigError, match="speedrun stage sft .*unknown training preset 'sft-asistant'"):
        check_plan(load_plan("cpu", ["sft.preset=sft-asistant"]), tmp_path)
