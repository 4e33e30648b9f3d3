"""Pretraining data cleaning: extraction, normalisation, heuristic and safety filters, PII redaction,
exact and near-duplicate removal, a model-based quality filter, and mixing — a pipeline described in
YAML (`llmkit/presets/clean/default.yaml`), each stage a small function over a stream of documents.

    from llmkit.data.clean import load_config, run_pipeline
    summary = run_pipeline(load_config("default"), "out/", inputs=[InputSpec("crawl/", source="web")])
"""

from llmkit.data.clean.config import InputSpec, PipelineConfig, config_from_dict, load_config, parse_inputs
from llmkit.data.clean.document import Document, Rejection
from llmkit.data.clean.pipeline import run_pipeline
from llmkit.data.clean.quality import QualityModel
from llmkit.data.clean.quality_training import train_quality

__all__ = ["Document", "InputSpec", "PipelineConfig", "QualityModel", "Rejection", "config_from_dict",
           "load_config", "parse_inputs", "run_pipeline", "train_quality"]
