"""A model-based quality filter: logistic regression on hashed word unigrams and bigrams.

GPT-3 (Brown et al. 2020, Appendix A) filtered Common Crawl with a logistic-regression classifier on
hashed token features, trained to tell a reference set of good documents (WebText, Wikipedia, books)
from raw crawl. This is that classifier: the features of a document are the hashed buckets of its
word 1- and 2-grams, averaged (fastText-style bag of n-grams, Joulin et al. 2017, without the hidden
layer), so the score does not grow with length; `score = sigmoid(b + mean(w[buckets]))`. It scores
~10 MB/s per core with numpy and is trained by `llmkit data train-quality` in seconds.
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
from llmkit.errors import ConfigError, DataError

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


def train_model(good: list[np.ndarray], bad: list[np.ndarray], bits: int = 20, max_words: int = 2000,
                epochs: int = 16, lr: float = 0.1, l2: float = 1e-6, batch_size: int = 32,
                seed: int = 0) -> QualityModel:
    """Logistic regression with Adam on mini-batches; inputs are per-document word-hash arrays."""
    if not 1 <= bits <= 30:
        raise DataError(f"bits must be 1..30 (2^bits float weights), not {bits}")
    if epochs < 1:
        raise DataError(f"epochs must be at least 1, not {epochs}")
    docs = [doc_features(h, bits, max_words) for h in good + bad]
    labels = np.array([1.0] * len(good) + [0.0] * len(bad))
    keep = [i for i, f in enumerate(docs) if len(f)]
    docs, labels = [docs[i] for i in keep], labels[keep]
    # Both classes, not `min != max`: with no documents at all min(initial=1) != max(initial=0) too.
    if not (labels == 1).any() or not (labels == 0).any():
        raise DataError(f"train-quality needs training documents in both --good and --bad (after dropping empty "
                        f"ones and the held-out tenth); got {int((labels == 1).sum())} good and "
                        f"{int((labels == 0).sum())} bad")
    dim = 1 << bits
    w = np.zeros(dim, dtype=np.float64)
    b = 0.0
    m, v = np.zeros(dim), np.zeros(dim)
    mb = vb = 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    # Class weights so that an unbalanced reference set does not just learn the prior.
    pos_weight = (labels == 0).sum() / max(1, (labels == 1).sum())
    rng = np.random.default_rng(seed)
    step = 0
    order = np.arange(len(docs))
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            feats = [docs[i] for i in batch]
            lengths = np.array([len(f) for f in feats])
            flat = np.concatenate(feats)
            owner = np.repeat(np.arange(len(batch)), lengths)
            z = b + np.bincount(owner, weights=w[flat], minlength=len(batch)) / lengths
            p = 1.0 / (1.0 + np.exp(-z))
            y = labels[batch]
            sample_weight = np.where(y == 1, pos_weight, 1.0)
            r = (p - y) * sample_weight / len(batch)
            # Lazy (sparse) Adam: only the buckets present in the batch move, as torch's SparseAdam,
            # so a step costs the batch's features, not the 2^bits table.
            touched, inverse = np.unique(flat, return_inverse=True)
            grad = np.bincount(inverse, weights=np.repeat(r / lengths, lengths), minlength=len(touched))
            grad += l2 * w[touched]
            gb = float(r.sum())
            step += 1
            m[touched] = beta1 * m[touched] + (1 - beta1) * grad
            v[touched] = beta2 * v[touched] + (1 - beta2) * grad * grad
            w[touched] -= lr * (m[touched] / (1 - beta1 ** step)) / (np.sqrt(v[touched] / (1 - beta2 ** step)) + eps)
            mb = beta1 * mb + (1 - beta1) * gb
            vb = beta2 * vb + (1 - beta2) * gb * gb
            b -= lr * (mb / (1 - beta1 ** step)) / (math.sqrt(vb / (1 - beta2 ** step)) + eps)
    return QualityModel(w.astype(np.float32), b, bits, max_words)


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


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    return {"accuracy": float((predicted == (labels == 1)).mean()) if len(labels) else 0.0,
            "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "n": int(len(labels))}


def train_quality(good: list, bad: list, out: str | Path, bits: int = 20, epochs: int = 16, lr: float = 0.1,
                  max_words: int = 2000, max_docs: int = 100_000, held_out: float = 0.1, seed: int = 0,
                  skip_bad_records: bool = False) -> dict:
    """Train on `good` (a reference set) vs `bad` (random web-like text), each a list of InputSpec;
    HTML is extracted and every text normalised exactly as the pipeline does before scoring. A
    deterministic `held_out` fraction measures the saved model; returns those figures."""
    from llmkit.data.clean.normalize import Extract, ExtractConfig, Normalize, NormalizeConfig
    from llmkit.data.clean.readers import plan_tasks, read_part

    if not Path(out).resolve().parent.is_dir():
        raise DataError(f"{out}: the directory {Path(out).parent} does not exist; create it or choose another --out")
    extract, normalize = Extract(ExtractConfig()), Normalize(NormalizeConfig())

    def word_hashes(specs) -> list[np.ndarray]:
        out_list = []
        for task in plan_tasks(specs, task_mb=1e9):
            for part in task.parts:
                for doc in read_part(part, skip_bad_records):
                    for stage in (extract, normalize):
                        doc = stage(doc)
                        if isinstance(doc, Rejection):
                            break
                    else:
                        out_list.append(doc.word_hashes)
                    if len(out_list) >= max_docs:
                        return out_list
        return out_list

    good_docs, bad_docs = word_hashes(good), word_hashes(bad)
    if not good_docs or not bad_docs:
        raise DataError(f"train-quality found {len(good_docs)} good and {len(bad_docs)} bad documents; "
                        "both sets need documents with text")

    def split(items):
        test = [i for i in range(len(items)) if (i * 7919 + seed) % 1000 < held_out * 1000]
        test_set = set(test)
        return [items[i] for i in range(len(items)) if i not in test_set], [items[i] for i in test]

    good_train, good_test = split(good_docs)
    bad_train, bad_test = split(bad_docs)
    model = train_model(good_train, bad_train, bits=bits, max_words=max_words, epochs=epochs, lr=lr, seed=seed)
    info = {"good_docs": len(good_docs), "bad_docs": len(bad_docs), "epochs": epochs, "lr": lr}
    if good_test and bad_test:
        scores = np.array([model.score(_hashed(h)) for h in good_test + bad_test])
        labels = np.array([1] * len(good_test) + [0] * len(bad_test))
        info["held_out"] = binary_metrics(scores, labels)
    model.info = info
    model.save(out)
    return info


def _hashed(word_hashes: np.ndarray) -> Document:
    """A stand-in document whose word hashes are already known (held-out scoring)."""
    doc = Document(text="", id="")
    doc._cache["word_hashes"] = (doc.text, word_hashes)
    return doc
