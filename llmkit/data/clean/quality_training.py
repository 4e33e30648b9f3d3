"""Training the quality model (`llmkit data train-quality`): read a reference set and a sample of
raw text, extract and normalise them exactly as the pipeline does, and fit the logistic regression
that `quality.QualityModel` scores with (GPT-3, Brown et al. 2020, Appendix A).

Apart from quality.py because training reads inputs and runs the extract/normalize stages, while the
quality_model stage only scores: the stage registry imports the stage, never the trainer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llmkit.data.clean.document import Document, Rejection
from llmkit.data.clean.normalize import Extract, ExtractConfig, Normalize, NormalizeConfig
from llmkit.data.clean.quality import QualityModel, doc_features
from llmkit.data.clean.readers import plan_tasks, read_part
from llmkit.data.clean.shared import require_extra
from llmkit.errors import DataError


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
    require_extra(["trafilatura"], "data train-quality")  # every text goes through the extract stage
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
    doc.remember("word_hashes", word_hashes)
    return doc
