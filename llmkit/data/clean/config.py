"""The pipeline as a YAML file: inputs, the ordered list of stages with their thresholds, the engine,
mixing weights and the annealing subset.

    inputs:                      # or `--input NAME=PATH` on the command line
      - {path: crawl/, source: web}
    stages:
      - stage: extract
      - stage: gopher_quality
        min_words: 50            # any rule set to null is switched off
      - stage: c4
        enabled: false           # a whole stage switched off
      - stage: near_dedup
        threshold: 0.75

Every stage's fields are a dataclass with the published defaults (see each stage's module); a field
the YAML does not name keeps its default. Errors name the file, the line and the field.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.data.clean.shared import PRESET_DIR, InputSpec
from llmkit.errors import ConfigError
from llmkit.yaml_config import build_dataclass, check_ranges, load_yaml, matches_type, range_problem, type_name, where


@dataclass
class StageSpec:
    name: str
    params: Any  # the stage's config dataclass
    line: int | None = None


@dataclass
class AnnealConfig:
    """The high-quality annealing subset."""

    # Documents whose quality-model score is at least this go to `anneal/` as well as `train/`
    # (Llama 3, Dubey et al. 2024 §3.1.3: anneal on a small amount of the highest-quality data at the
    # end of pretraining). Needs a `quality_model` stage; null switches the subset off.
    min_score: float | None = 0.8
    sources: list[str] | None = None  # restrict the subset to these sources (null = all)
    fraction_of_training: float = 0.1  # written to mixture.json for the trainer: the last 10% of steps

    RANGES = {"min_score": "[0, 1]", "fraction_of_training": "[0, 1]"}  # (see llmkit.yaml_config)

    def __post_init__(self):
        check_ranges(self)


@dataclass
class MixingConfig:
    """Mixing."""

    # Sampling weight per source, as epochs: 2.0 writes every document twice, 0.5 keeps a
    # deterministic random half (The Pile, Gao et al. 2020, Table 1 "epochs"). Unnamed sources: 1.0.
    weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    anneal: AnnealConfig = field(default_factory=AnnealConfig)

    RANGES = {"weights": "[0, inf)", "seed": "[0, 2^63)"}  # a weight is a number of epochs; each source's is checked

    def __post_init__(self):
        check_ranges(self)


@dataclass
class PipelineConfig:
    inputs: list[InputSpec] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)
    workers: int = 0  # 0 = every core this process may use
    engine: str = "local"  # local (multiprocessing) | dask
    dask_address: str | None = None  # a running Dask scheduler; null = a local cluster of `workers`
    task_mb: float = 64.0  # input per task: small files are grouped, large JSONL/Parquet split
    skip_bad_records: bool = False  # a malformed JSONL line: error (default) or count and skip
    report_examples: int = 3  # examples kept per removal reason
    path: str = "<config>"

    # task_mb near 0 would cut a JSONL file into one-byte tasks (millions of them); negative counts are typos
    RANGES = {"workers": "[0, 2^16)", "task_mb": "(0, inf)", "report_examples": "[0, 2^31)"}

    def stage(self, name: str) -> Any | None:
        for spec in self.stages:
            if spec.name == name:
                return spec.params
        return None


_TOP_LEVEL = {"inputs", "stages", "workers", "engine", "dask_address", "task_mb", "skip_bad_records",
              "report_examples", "mixing"}


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read a pipeline YAML (None or 'default' = the shipped `presets/clean/default.yaml`)."""
    if path is None or str(path) in ("default",):
        path = PRESET_DIR / "default.yaml"
    elif not Path(path).exists() and (PRESET_DIR / f"{path}.yaml").exists():
        path = PRESET_DIR / f"{path}.yaml"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass a pipeline YAML (see llmkit/presets/clean/default.yaml)")
    return config_from_dict(load_yaml(path) or {}, str(path))


def config_from_dict(data: dict, path: str = "<config>") -> PipelineConfig:
    from llmkit.data.clean.stages import STAGES

    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `stages:` (and optionally `inputs:`, `mixing:` ...)")
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{where(path, data, key)}: unknown field; the pipeline takes {', '.join(sorted(_TOP_LEVEL))}")
    config = PipelineConfig(path=path)
    for key in ("workers", "engine", "dask_address", "task_mb", "skip_bad_records", "report_examples"):
        if key in data:
            hint = typing.get_type_hints(PipelineConfig)[key]
            if not matches_type(data[key], hint):
                raise ConfigError(f"{where(path, data, key)}: must be {type_name(hint)}, not {data[key]!r}")
            problem = range_problem(PipelineConfig, key, data[key])
            if problem:
                raise ConfigError(f"{where(path, data, key)}: {problem}")
            setattr(config, key, data[key])
    if config.engine not in ("local", "dask"):
        raise ConfigError(f"{where(path, data, 'engine')}: must be 'local' or 'dask', not {config.engine!r}")
    inputs = data.get("inputs") or []
    if not isinstance(inputs, list):
        raise ConfigError(f"{where(path, data, 'inputs')}: must be a list of paths or `{{path: ..., source: ...}}` "
                          f"mappings, not {inputs!r}")
    for item in inputs:
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise ConfigError(f"{where(path, data, 'inputs')}: each input is a path or a mapping with `path:`")
        config.inputs.append(build_dataclass(InputSpec, item, path))
    mixing = data.get("mixing") or {}
    if not isinstance(mixing, dict):
        raise ConfigError(f"{where(path, data, 'mixing')}: must be a mapping (weights:, seed:, anneal:), not {mixing!r}")
    anneal = mixing.get("anneal")
    if anneal is not None and not isinstance(anneal, dict):
        raise ConfigError(f"{where(path, mixing, 'anneal')}: must be a mapping (min_score:, sources:, "
                          f"fraction_of_training:), not {anneal!r}")
    config.mixing = build_dataclass(MixingConfig, mixing, path, skip=("anneal",))
    if anneal is not None:
        config.mixing.anneal = build_dataclass(AnnealConfig, anneal, path)
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{where(path, data, 'stages')}: must be a non-empty list of `- stage: NAME` entries")
    seen = set()
    for entry in stages:
        if isinstance(entry, str):
            entry = {"stage": entry}
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"{where(path, data, 'stages')}: each entry needs `stage: NAME` "
                              f"(one of {', '.join(STAGES)})")
        name = entry["stage"]
        if not isinstance(name, str) or name not in STAGES:
            raise ConfigError(f"{where(path, entry, 'stage')}: unknown stage {name!r}; choose from {', '.join(STAGES)}")
        if name in seen:
            raise ConfigError(f"{where(path, entry, 'stage')}: stage {name!r} is listed twice")
        seen.add(name)
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where(path, entry, 'enabled')}: must be true or false, not {enabled!r}")
        if not enabled:
            continue
        params = build_dataclass(STAGES[name].config, entry, path, skip=("stage", "enabled"))
        config.stages.append(StageSpec(name, params, getattr(entry, "line", None)))
    _check_order(config)
    return config


def _check_order(config: PipelineConfig) -> None:
    """Deduplication is one global step between two streaming passes, so its stages must be adjacent."""
    from llmkit.data.clean.stages import STAGES

    kinds = [STAGES[s.name].is_global for s in config.stages]
    if any(kinds):
        first, last = kinds.index(True), len(kinds) - 1 - kinds[::-1].index(True)
        if not all(kinds[first:last + 1]):
            raise ConfigError(f"{config.path}: the dedup stages (exact_dedup, near_dedup) must be next to each "
                              "other in `stages:`; move the per-document stages before or after them")


def parse_inputs(values: list[str] | None, text_field: str = "text") -> list[InputSpec]:
    """`--input` values: PATH or NAME=PATH (NAME is the source that mixing weights refer to; by default
    the file or directory name)."""
    from llmkit.data.clean.readers import FORMATS

    specs = []
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or "/" in name or not name:
            base = Path(value.rstrip("/")).name
            # crawl.jsonl.gz is the source "crawl", as crawl.jsonl is (Path.stem drops only ".gz")
            suffix = next((x for x in sorted(FORMATS, key=len, reverse=True) if base.lower().endswith(x)), None)
            name, path = (base[:-len(suffix)] if suffix else Path(base).stem) or "default", value
        specs.append(InputSpec(path=path, source=name, text_field=text_field))
    return specs
