"""batch_tokens on every stage: the Trainer alone turns it into a number of accumulated micro-batches,
and each stage's data and step plan follow that number. Half the micro-batch with batch_tokens equal to
the full micro-batch's tokens takes the same examples in each step (so for the pair losses, a mean over
pairs, the same losses step by step), and an epoch is the same number of steps."""

import json
import re

import pytest

from posttrain_fixtures import config, task_files, tiny_base  # noqa: F401 (fixtures)

STAGES = ["sft", "reward", "dpo", "rlhf", "distill"]


def run_stage(stage, out, tiny_base, task_files, **fields):
    from llmkit.train import post_config
    from llmkit.train.distill import run_distill
    from llmkit.train.dpo import run_dpo
    from llmkit.train.reward import run_reward
    from llmkit.train.rl import run_rl
    from llmkit.train.sft import run_sft

    common = dict(init_from=tiny_base, data=task_files["sft" if stage in ("sft", "distill") else "preference"],
                  data_records=[0, 16], epochs=1.0, eval_task=False, lr=1e-3)
    extra = {"rlhf": dict(reward_model="answers", data=task_files["heldout"], group_size=2, max_new_tokens=4),
             "distill": dict(init_from=None, teacher=tiny_base, model="tiny",
                             model_overrides={"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64})
             }.get(stage, {})
    classes = {"sft": (post_config.SFTConfig, run_sft), "reward": (post_config.RewardConfig, run_reward),
               "dpo": (post_config.DPOConfig, run_dpo), "rlhf": (post_config.RLConfig, run_rl),
               "distill": (post_config.DistillConfig, run_distill)}
    config_class, run = classes[stage]
    run(config(config_class, **{**common, **extra, **fields}), out)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("stage", STAGES)
def test_batch_tokens_accumulates_micro_batches_on_every_stage(stage, tmp_path, tiny_base, task_files, capsys):
    whole = run_stage(stage, tmp_path / "whole", tiny_base, task_files, micro_batch=4)
    plan = re.findall(r"(\d+) micro-batch\(es\)", capsys.readouterr().out)
    assert plan == ["1"]
    tokens_per_step = whole[0]["tokens"]
    halves = run_stage(stage, tmp_path / "halves", tiny_base, task_files, micro_batch=2, batch_tokens=tokens_per_step)
    plan = re.findall(r"(\d+) micro-batch\(es\)", capsys.readouterr().out)
    assert plan == ["2"]  # 2 micro-batches of 2 examples: as many tokens a step as one of 4
    assert len(whole) >= 2 and [r["step"] for r in halves] == [r["step"] for r in whole]  # an epoch: as many steps
    assert abs(halves[0]["tokens"] - tokens_per_step) <= 2
    if stage in ("reward", "dpo"):  # the mean over 4 pairs == the mean of two means over 2 pairs
        for a, b in zip(whole, halves):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)
