"""The registry of stages a pipeline YAML can name: each stage's config dataclass and its class.

Per-document stages run in the streaming passes; the global ones (deduplication) run once between
them over the signatures the first pass wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llmkit.data.clean.dedup import ExactDedupConfig, NearDedupConfig
from llmkit.data.clean.filters import (C4, C4Config, FineWeb, FineWebConfig, GopherQuality, GopherQualityConfig,
                                       GopherRepetition, GopherRepetitionConfig)
from llmkit.data.clean.normalize import (Extract, ExtractConfig, Language, LanguageConfig, Normalize,
                                         NormalizeConfig)
from llmkit.data.clean.quality import QualityFilter, QualityModelConfig
from llmkit.data.clean.safety import PII, BadWords, BadWordsConfig, PIIConfig


@dataclass(frozen=True)
class StageInfo:
    config: type
    factory: Callable | None  # config -> stage callable; None for the global (dedup) stages
    is_global: bool = False
    needs: tuple[str, ...] = ()  # packages of the `clean` extra the stage imports


STAGES: dict[str, StageInfo] = {
    "extract": StageInfo(ExtractConfig, Extract, needs=("trafilatura",)),
    "normalize": StageInfo(NormalizeConfig, Normalize),
    "language": StageInfo(LanguageConfig, Language, needs=("py3langid",)),
    "gopher_quality": StageInfo(GopherQualityConfig, GopherQuality),
    "gopher_repetition": StageInfo(GopherRepetitionConfig, GopherRepetition),
    "c4": StageInfo(C4Config, C4),
    "fineweb": StageInfo(FineWebConfig, FineWeb),
    "bad_words": StageInfo(BadWordsConfig, BadWords),
    "pii": StageInfo(PIIConfig, PII),
    "quality_model": StageInfo(QualityModelConfig, QualityFilter),
    "exact_dedup": StageInfo(ExactDedupConfig, None, is_global=True),
    "near_dedup": StageInfo(NearDedupConfig, None, is_global=True),
}


def build_stage(name: str, config) -> Callable:
    """A per-document stage from its name and config (for the pipeline, tests and notebooks)."""
    info = STAGES[name]
    if info.factory is None:
        raise ValueError(f"{name} is a global stage; run it through run_pipeline")
    return info.factory(config if config is not None else info.config())
