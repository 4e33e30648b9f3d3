"""Every numeric config field has a declared valid range, checked in one place (llmkit.yaml_config) with
the value's origin: `grad_clip=-1` (gradient ascent), `max_steps=-1` (an untrained model written as done),
`beta1=2`, `seed=1e30` or `lr=inf` stop before any work with one line naming the field, value and range."""

import dataclasses
import json
import re
import typing

import pytest

from llmkit.config import ModelConfig
from llmkit.data.clean.config import AnnealConfig, MixingConfig, PipelineConfig, load_config
from llmkit.data.clean.stages import STAGES
from llmkit.errors import ConfigError
from llmkit.train.config import TrainConfig
from llmkit.train.post_config import DistillConfig, DPOConfig, PostTrainConfig, RewardConfig, RLConfig, SFTConfig
from llmkit.yaml_config import check_ranges, field_ranges, interval, range_problem

from conftest import cli_in_process

CONFIG_CLASSES = [TrainConfig, PostTrainConfig, SFTConfig, RewardConfig, DPOConfig, RLConfig, DistillConfig, ModelConfig,
                  # the data-cleaning pipeline's YAML: its top level, mixing, and every stage's fields
                  PipelineConfig, MixingConfig, AnnealConfig,
                  *dict.fromkeys(info.config for info in STAGES.values())]


def numeric_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)

    def numeric(hint) -> bool:
        return hint in (int, float) or any(numeric(a) for a in typing.get_args(hint))

    return [f.name for f in dataclasses.fields(cls) if numeric(hints[f.name])]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_a_range_and_its_default_is_in_it(cls):
    """A new numeric field without a range fails here, so none can skip the check."""
    ranges = field_ranges(cls)
    assert [name for name in numeric_fields(cls) if name not in ranges] == []
    assert [name for name in ranges if name not in numeric_fields(cls)] == []  # no stale entries
    instance = cls() if cls is not PipelineConfig else cls(path="x")
    assert {name: range_problem(cls, name, getattr(instance, name)) for name in ranges} == dict.fromkeys(ranges)


@pytest.mark.parametrize("override, shown", [
    ("grad_clip=-1", "field 'grad_clip': -1 is out of range: must be in [0, inf)"),
    ("max_steps=-1", "field 'max_steps': -1 is out of range: must be in [0, 2^62)"),
    ("warmup_steps=-5", "field 'warmup_steps': -5 is out of range"),
    ("weight_decay=-0.1", "field 'weight_decay': -0.1 is out of range"),
    ("time_limit_s=-1", "field 'time_limit_s': -1 is out of range"),
    ("eval_tokens=-1", "field 'eval_tokens': -1 is out of range"),
    ("ckpt_every=-1", "field 'ckpt_every': -1 is out of range"),
    ("max_tokens=-1", "field 'max_tokens': -1 is out of range"),
    ("sample_every=-1", "field 'sample_every': -1 is out of range"),
    ("beta1=2", "field 'beta1': 2 is out of range: must be in [0, 1)"),
    ("threads=-1", "field 'threads': -1 is out of range"),
    ("seed=1000000000000000000000000000000", "field 'seed': 100000...(31 digits) is out of range: must be in [0, 2^63)"),
    ("seed=-3", "field 'seed': -3 is out of range"),
    ("lr=inf", "field 'lr': inf is out of range: must be in (0, inf)"),
    ("lr=.nan", "field 'lr': nan is out of range"),
    ("lr=0", "field 'lr': 0 is out of range"),
    ("micro_batch=0", "field 'micro_batch': 0 is out of range: must be in [1, 2^31)"),
    ("model.dropout=1.0", "field 'dropout': 1.0 is out of range: must be in [0, 1)"),
    ("model.norm_eps=-1e-5", "field 'norm_eps': -1e-05 is out of range"),
    ("model.n_layers=0", "field 'n_layers': 0 is out of range"),
])
def test_an_out_of_range_override_names_field_value_origin_and_range(override, shown):
    with pytest.raises(ConfigError) as e:
        TrainConfig.preset("shakespeare-cpu", [override])
    assert str(e.value).startswith(f"command line: {shown}")


@pytest.mark.parametrize("cls, override, name", [
    (DPOConfig, "beta=-0.1", "beta"), (RLConfig, "group_size=1", "group_size"), (RLConfig, "top_p=0", "top_p"),
    (DistillConfig, "temperature=1e-45", "temperature"), (DistillConfig, "hard_weight=2", "hard_weight"),
    (SFTConfig, "lora_dropout=1", "lora_dropout"), (SFTConfig, "epochs=-1", "epochs"),
    (SFTConfig, "val_fraction=1", "val_fraction"),
])
def test_post_training_fields_are_ranged_too(cls, override, name):
    preset = {DPOConfig: "dpo-assistant", RLConfig: "rlhf-assistant", DistillConfig: "distill-smollm2",
              SFTConfig: "sft-assistant"}[cls]
    with pytest.raises(ConfigError, match=rf"^command line: field '{name}': .* is out of range: must be in "):
        cls.preset(preset, [override])


def test_the_largest_legal_values_pass():
    config = TrainConfig.preset("shakespeare-cpu", [f"seed={2**63 - 1}", "beta1=0.999", "grad_clip=0"])
    assert config.seed == 2**63 - 1 and config.grad_clip == 0


def test_a_value_in_a_preset_file_names_its_line(tmp_path, monkeypatch):
    import llmkit.yaml_config as yaml_config

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.yaml").write_text("# a preset\nmodel: tiny\ngrad_clip: -1.0\n")
    monkeypatch.setattr(yaml_config, "PRESET_ROOT", tmp_path)
    with pytest.raises(ConfigError, match=re.escape("mine.yaml: line 3: field 'grad_clip': -1.0 is out of range: "
                                                    "must be in [0, inf)")):
        TrainConfig.preset("mine")


def test_a_model_file_s_config_is_ranged(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**ModelConfig.preset("tiny").to_dict(), "rope_theta": -10000.0}))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: field 'rope_theta': -10000.0 is out of range")):
        ModelConfig.from_json(path)


def test_instances_built_directly_are_checked():
    with pytest.raises(ConfigError, match=r"^field 'grad_clip': -1 is out of range"):
        TrainConfig(grad_clip=-1)
    with pytest.raises(ConfigError, match=r"^field 'd_model': -8 is out of range"):
        ModelConfig(d_model=-8)
    config = TrainConfig()
    config.warmup_steps = -1  # mutated after construction: check_ranges still sees it
    with pytest.raises(ConfigError, match="warmup_steps"):
        check_ranges(config)


def test_interval_notation():
    assert [v in interval("[0, 1)") for v in (-0.1, 0, 0.5, 1)] == [False, True, True, False]
    assert [v in interval("(0, inf)") for v in (0, 1e300, float("inf"))] == [False, True, False]
    assert 2**63 - 1 in interval("[0, 2^63)") and 2**63 not in interval("[0, 2^63)")
    with pytest.raises(ValueError):
        interval("0..1")


def test_the_cli_prints_one_line_and_exits_2(tmp_path):
    result = cli_in_process("pretrain", "--out", tmp_path / "run", "model=tiny", "max_steps=-1")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: command line: field 'max_steps': -1 is out of range: must be in [0, 2^62)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("yaml_text, shown", [
    ("stages:\n  - stage: gopher_quality\n    min_words: -5\n",
     "line 3: field 'min_words': -5 is out of range: must be in [0, 2^63)"),
    ("stages:\n  - stage: language\n    min_score: 2\n", "line 3: field 'min_score': 2 is out of range: must be in [0, 1]"),
    ("stages:\n  - stage: bad_words\n    max_ratio: -0.5\n", "line 3: field 'max_ratio': -0.5 is out of range"),
    ("stages:\n  - stage: near_dedup\n    bands: 0\n", "line 3: field 'bands': 0 is out of range: must be in [1, 2^16)"),
    ("stages:\n  - stage: gopher_repetition\n    dup_ngram_char_frac: {5: 1.5}\n",
     "line 3: field 'dup_ngram_char_frac': 5: 1.5 is out of range: must be in [0, 1]"),
    ("stages:\n  - stage: gopher_repetition\n    top_ngram_char_frac: {0: 0.2}\n", "n-gram size 0 is out of range"),
    ("mixing:\n  weights: {web: .nan}\nstages: [normalize]\n",
     "line 2: field 'weights': 'web': nan is out of range: must be in [0, inf)"),
    ("mixing:\n  seed: 100000000000000000000000000\nstages: [normalize]\n", "line 2: field 'seed': "),
    ("mixing:\n  anneal: {fraction_of_training: 2}\nstages: [normalize]\n", "field 'fraction_of_training': 2 is out"),
    ("task_mb: 0\nstages: [normalize]\n", "line 1: field 'task_mb': 0 is out of range: must be in (0, inf)"),
    ("workers: -1\nstages: [normalize]\n", "line 1: field 'workers': -1 is out of range"),
])
def test_a_cleaning_pipeline_s_numbers_are_ranged_with_their_line(tmp_path, yaml_text, shown):
    """`data clean --config`: a negative word count, a ratio above 1 or a NaN mixing weight used to pass and
    filter nothing (or everything) without a word."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(str(path)) and shown in str(e.value)
    assert load_config(None).stages  # the shipped pipeline is within every range


def test_a_presets_fp32_cpu_block_applies_only_where_training_runs_in_fp32_on_a_cpu(monkeypatch):
    """shakespeare-cpu carries a right-sized shape for CPUs without fast bf16: merged in there, under the
    command line's fields; ignored on a machine that trains in bf16 or on a GPU."""
    import llmkit.train.config as train_config
    from llmkit.yaml_config import load_preset

    variant = load_preset("train", "shakespeare-cpu", "training preset")[0]["fp32_cpu"]
    monkeypatch.setattr(train_config, "trains_in_fp32_on_cpu", lambda device, dtype: True)
    fp32 = TrainConfig.preset("shakespeare-cpu")
    assert fp32.model_overrides["d_model"] == variant["model.d_model"] and fp32.micro_batch == variant["micro_batch"]
    mine = TrainConfig.preset("shakespeare-cpu", ["model.d_model=96", "micro_batch=3"])
    assert mine.model_overrides["d_model"] == 96 and mine.micro_batch == 3  # the command line wins
    assert mine.model_overrides["n_layers"] == variant["model.n_layers"]
    monkeypatch.setattr(train_config, "trains_in_fp32_on_cpu", lambda device, dtype: False)
    fast = TrainConfig.preset("shakespeare-cpu")
    assert (fast.model_overrides["n_layers"], fast.model_overrides["d_model"], fast.micro_batch) == (4, 256, 8)
    with pytest.raises(ConfigError, match="fp32_cpu must be a mapping"):
        train_config.for_this_machine(TrainConfig, {"fp32_cpu": 3}, "x.yaml", {}, "command line")


def test_the_fp32_decision_follows_the_device_and_dtype_asked_for():
    from llmkit.device import cpu_has_fast_bf16
    from llmkit.train.config import trains_in_fp32_on_cpu

    assert trains_in_fp32_on_cpu("cpu", "fp32") is True
    assert trains_in_fp32_on_cpu("cpu", "bf16") is False
    assert trains_in_fp32_on_cpu("cpu", "auto") is (not cpu_has_fast_bf16())


def test_a_run_shaped_by_the_fp32_cpu_block_says_so(monkeypatch):
    import llmkit.train.config as train_config

    monkeypatch.setattr(train_config, "trains_in_fp32_on_cpu", lambda device, dtype: True)
    note = train_config.machine_note("shakespeare-cpu", TrainConfig.preset("shakespeare-cpu"))
    assert "model.d_model=80" in note and "no AVX512-BF16 or AMX" in note
    assert train_config.machine_note("sft-assistant", TrainConfig.preset("shakespeare-cpu")) is None  # no block
    # another model drops the preset's shape: the note names only what the run still takes from the block
    other = train_config.machine_note("shakespeare-cpu", TrainConfig.preset("shakespeare-cpu", ["model=tiny"]))
    assert "micro_batch=2" in other and "model.d_model" not in other
    assert train_config.machine_note("shakespeare-cpu", TrainConfig.preset("shakespeare-cpu", [
        "model=tiny", "micro_batch=4", "eval_every=10", "ckpt_every=10"])) is None
    monkeypatch.setattr(train_config, "trains_in_fp32_on_cpu", lambda device, dtype: False)
    assert train_config.machine_note("shakespeare-cpu", TrainConfig.preset("shakespeare-cpu")) is None
