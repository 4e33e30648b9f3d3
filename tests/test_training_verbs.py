"""Every training verb's default configuration builds (the preset it names exists and its fields are
valid), and so does every shipped preset: a verb naming a preset that is not there (once `llmkit
distill`'s default) fails here rather than in a user's hands."""

import pytest

from llmkit.cli import build_parser
from llmkit.config import ModelConfig
from llmkit.train.config import TrainConfig
from llmkit.train.post_config import DistillConfig, DPOConfig, RewardConfig, RLConfig, SFTConfig

CONFIG_OF_VERB = {"pretrain": TrainConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig,
                  "rlhf": RLConfig, "distill": DistillConfig}
PRESETS = __import__("pathlib").Path(__import__("llmkit").__file__).parent / "presets"


def training_verbs() -> list[str]:
    """The verbs whose parser takes --preset."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    return sorted(v for v, p in verbs.items() if any(a.dest == "preset" for a in p._actions))


def test_every_training_verb_has_a_config_class():
    assert set(training_verbs()) == set(CONFIG_OF_VERB)


@pytest.mark.parametrize("verb", sorted(CONFIG_OF_VERB))
def test_every_training_verb_builds_its_default_configuration(verb):
    args = build_parser().parse_args([verb, "--out", "unused"])
    config = CONFIG_OF_VERB[verb].preset(args.preset, [])
    assert isinstance(config, CONFIG_OF_VERB[verb])


@pytest.mark.parametrize("name", sorted(p.stem for p in (PRESETS / "train").glob("*.yaml")))
def test_every_shipped_training_preset_builds(name):
    verb = name.split("-")[0]
    config_class = CONFIG_OF_VERB.get(verb if verb != "rlhf" else "rlhf", TrainConfig)
    config = config_class.preset(name, [])
    if not config.init_from:  # a model of its own shape: the model preset and its overrides build too
        assert isinstance(config.model_config(), ModelConfig)


@pytest.mark.parametrize("name", sorted(p.stem for p in (PRESETS / "models").glob("*.yaml")))
def test_every_shipped_model_preset_builds(name):
    assert isinstance(ModelConfig.preset(name), ModelConfig)
