"""Every training verb's default configuration builds (the preset it names exists and its fields are
valid), and so does every shipped preset: a verb naming a preset that is not there (once `llmkit
distill`'s default) fails here rather than in a user's hands. A training verb's --help lists its
configuration fields, with defaults and meanings, from the dataclass."""

import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from llmkit.cli import build_parser, training_config, training_config_class
from llmkit.config import ModelConfig
from llmkit.config_help import field_docs
from llmkit.errors import ConfigError
from llmkit.train.config import TrainConfig
from llmkit.yaml_config import PRESET_ROOT, list_presets


def training_verbs() -> dict:
    """The verbs whose parser takes --preset: {verb: its parser}."""
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    return {v: p for v, p in verbs.items() if any(a.dest == "preset" for a in p._actions)}


TRAINING_VERBS = sorted(training_verbs())


def config_class_of(verb: str) -> type:
    assert training_verbs()[verb].get_default("training_verb") == verb
    return training_config_class(verb)


def test_the_training_verbs():
    assert TRAINING_VERBS == ["distill", "dpo", "pretrain", "reward", "rlhf", "sft"]


@pytest.mark.parametrize("verb", TRAINING_VERBS)
def test_every_training_verb_builds_its_default_configuration(verb):
    """What `llmkit VERB --out DIR` builds before it trains: the default preset, no overrides."""
    config = training_config(build_parser().parse_args([verb, "--out", "unused"]))
    assert isinstance(config, config_class_of(verb)) and issubclass(config_class_of(verb), TrainConfig)


@pytest.mark.parametrize("name", list_presets("train"))
def test_every_shipped_training_preset_builds(name):
    """A preset named VERB-... is for that verb's config; the others are pretraining presets."""
    verb = name.split("-")[0]
    config_class = config_class_of(verb) if verb in TRAINING_VERBS else TrainConfig
    config = config_class.preset(name, [])
    if not config.init_from:  # a model of its own shape: the model preset and its overrides build too
        assert isinstance(config.model_config(), ModelConfig)


@pytest.mark.parametrize("name", list_presets("models"))
def test_every_shipped_model_preset_builds(name):
    assert isinstance(ModelConfig.preset(name), ModelConfig)


def test_preset_errors_name_the_preset_and_the_value_s_origin():
    with pytest.raises(ConfigError, match="unknown training preset 'nope'; available: .*distill-smollm2"):
        TrainConfig.preset("nope")
    with pytest.raises(ConfigError, match=r"^command line: field 'learning_rate': unknown field"):
        TrainConfig.preset("shakespeare-cpu", ["learning_rate=1"])
    with pytest.raises(ConfigError, match=r"^command line: field 'n_layer': unknown field \(did you mean 'n_layers'"):
        TrainConfig.preset("shakespeare-cpu", ["model.n_layer=3"])  # checked before any model is built
    with pytest.raises(ConfigError, match=r"^command line: field 'lr': must be float, not 'fast'"):
        TrainConfig.preset("shakespeare-cpu", ["lr=fast"])
    config = TrainConfig.preset("shakespeare-cpu", ["lr=3e-3", "model.n_layers=2", "dtype=bf16"])  # (bf16: not the fp32_cpu shape)
    assert config.lr == 3e-3 and config.model_overrides["n_layers"] == 2 and config.model_overrides["d_model"] == 256
    assert type(config.model_overrides) is dict  # values keep no origins once checked


def test_another_model_on_the_command_line_drops_the_preset_s_reshaping_of_its_own_model():
    """shakespeare-cpu reshapes llama-cpu (model_overrides); `model=tiny` must give the tiny model, not
    a tiny model with llama-cpu's 4 layers of width 256 (the bug trained every test's 'tiny' 16x larger)."""
    assert TrainConfig.preset("shakespeare-cpu", ["dtype=bf16"]).model_config().d_model == 256  # (fp32_cpu: 80)
    assert TrainConfig.preset("shakespeare-cpu", ["model=tiny"]).model_config() == ModelConfig.preset("tiny")
    config = TrainConfig.preset("shakespeare-cpu", ["model=tiny", "model.n_layers=3"])
    assert config.model_config() == ModelConfig.preset("tiny", n_layers=3)
    assert TrainConfig.preset("shakespeare-cpu", ["model=llama-cpu", "dtype=bf16"]).model_config().d_model == 256  # kept

def test_a_bad_value_in_a_preset_file_names_its_line(tmp_path, monkeypatch):
    import llmkit.yaml_config as yaml_config

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.yaml").write_text("# a preset\nmodel: tiny\nseq_len: long\n")
    monkeypatch.setattr(yaml_config, "PRESET_ROOT", tmp_path)
    with pytest.raises(ConfigError, match=r"mine\.yaml: line 3: field 'seq_len': must be int, not 'long'"):
        TrainConfig.preset("mine")


@pytest.mark.parametrize("verb", TRAINING_VERBS)
def test_every_config_field_has_a_meaning(verb):
    """Each field's comment in the dataclass is its --help text: none may be missing."""
    docs = field_docs(config_class_of(verb))
    assert [d.name for d in docs] == [f.name for f in dataclasses.fields(config_class_of(verb))]
    assert [d.name for d in docs if len(d.meaning) < 8] == []


def test_training_help_lists_fields_with_defaults_and_meanings():
    result = run_cli("pretrain", "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    lr = next(line for line in lines if line.split()[:1] == ["lr"])
    assert lr.split()[1:3] == ["0.001", "[0.002]"] and "peak learning rate" in lr  # default, shakespeare-cpu's value
    for doc in field_docs(TrainConfig):
        assert any(line.split()[:1] == [doc.name] for line in lines), doc.name
    result = run_cli("dpo", "--help")
    beta = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["beta"])
    assert beta.split()[1] == "0.1" and "Rafailov" in beta
    lr = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["lr"])
    assert lr.split()[1] == "5e-06" and "peak learning rate" in lr  # DPOConfig's default, the base class's meaning


def test_llmkit_help_does_not_import_torch():
    """`llmkit --help` builds every verb's parser: it must stay fast, so nothing is imported for it (a
    training verb's config class is imported when that verb runs or shows its own help)."""
    code = ("import sys; from llmkit.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'yaml', 'llmkit.train.config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
    assert (PRESET_ROOT / "train" / "distill-smollm2.yaml").is_file()
