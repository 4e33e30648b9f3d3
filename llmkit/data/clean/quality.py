"""A model-based quality filter: logistic regression on hashed word unigrams and bigrams.

GPT-3 (Brown et al. 2020, Appendix A) filtered Common Crawl with a logistic-regression classifier on
hashed token features, trained to tell a reference set of good documents (WebText, Wikipedia, books)
from raw crawl. This is that classifier: the features of a document are the hashed buckets of its
word 1- and 2-grams, averaged (fastText-style bag of n-grams, Joulin et al. 2017, without the hidden
layer), so the score does not grow with length; `score = sigmoid(b + mean(w[buckets]))`. It scores
~10 MB/s per core with numpy and is trained by `llmkit data train-quality` in seconds
(quality_training.py: the trainer reads inputs, so it lives apart from the stage the pipeline loads).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_write_bytes
from llmkit.data.clean.document import Document, Rejection, ngram_hashes
from llmkit.errors import ConfigError

FORMAT = "llmkit-quality-v1"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def doc_features(word_hashes: np.ndarray, bits: int, max_words: int) -> np.ndarray:
    """Bucket indices of the word unigrams and bigrams of a document (its first `max_words` words)."""
    h = word_hashes[:max_words].astype(np.uint64)
    grams = np.concatenate([h * np.uint64(0xC2B2AE3D27D4EB4F), ngram_hashes(word_hashes[:max_words], 2)]) \
        if len(h) > 1 else h * np.uint64(0xC2B2AE3D27D4EB4F)
    with np.errstate(over="ignore"):
        return ((grams * _GOLDEN) >> np.uint64(64 - bits)).astype(np.int64)


class QualityModel:
    def __init__(self, weights: np.ndarray, bias: float, bits: int, max_words: int, info: dict | None = None):
        self.weights, self.bias, self.bits, self.max_words = weights.astype(np.float32), float(bias), bits, max_words
        self.info = info or {}

    def score(self, doc: Document) -> float:
        features = doc_features(doc.word_hashes, self.bits, self.max_words)
        if len(features) == 0:
            return 0.0
        z = self.bias + float(self.weights[features].mean())
        return 1.0 / (1.0 + math.exp(-z))

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save

        meta = {"format": FORMAT, "bits": str(self.bits), "max_words": str(self.max_words),
                "info": json.dumps(self.info)}
        data = save({"weights": self.weights, "bias": np.array([self.bias], dtype=np.float32)}, metadata=meta)
        atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path, weights: bool = True) -> "QualityModel | None":
        """The model at `path`; with weights=False only check that it is one (and return None)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such quality model; train one with `llmkit data train-quality`")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
                if not weights:
                    return None
                w, bias = f.get_tensor("weights"), float(f.get_tensor("bias")[0])
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise ConfigError(f"{path}: not a quality model written by `llmkit data train-quality` ({e})") from None
        return cls(w, bias, int(meta["bits"]), int(meta["max_words"]), json.loads(meta.get("info", "{}")))


@dataclass
class QualityModelConfig:
    """The quality_model stage."""

    model: str | None = None  # a file written by `llmkit data train-quality`
    # threshold: remove documents scoring below min_score. pareto: GPT-3's rule (Brown et al. 2020,
    # Appendix A), keep a document iff a Pareto(alpha=9) draw > 1 - score, so some lower-scoring
    # documents survive for diversity. null min_score with threshold mode = score only, remove nothing.
    mode: str = "threshold"
    min_score: float | None = 0.5
    pareto_alpha: float = 9.0
    seed: int = 0

    RANGES = {"min_score": "[0, 1]", "pareto_alpha": "(0, inf)", "seed": "[0, 2^63)"}  # (a score is a probability)

    def __post_init__(self):
        if self.mode not in ("threshold", "pareto"):
            raise ValueError(f"mode must be 'threshold' or 'pareto', not {self.mode!r}")


class QualityFilter:
    name = "quality_model"

    def __init__(self, config: QualityModelConfig):
        if not config.model:
            raise ConfigError("stage quality_model: field 'model' is not set; train a model with "
                              "`llmkit data train-quality` and set its path, or set `enabled: false`")
        self.config = config
        self.model = QualityModel.load(config.model)

    def __call__(self, doc: Document) -> Document | Rejection:
        s = self.model.score(doc)
        doc.meta["quality"] = round(s, 5)
        c = self.config
        if c.mode == "pareto":
            seed = int.from_bytes(hashlib.blake2b(f"{c.seed}:{doc.id}".encode(), digest_size=8).digest(), "little")
            if np.random.default_rng(seed).pareto(c.pareto_alpha) <= 1.0 - s:
                return Rejection("quality_model.pareto", f"score {s:.3f}")
        elif c.min_score is not None and s < c.min_score:
            return Rejection("quality_model.low_score", f"score {s:.3f}")
        return doc
