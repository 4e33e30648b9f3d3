"""Mixing: sampling weights per source, the high-quality annealing subset, and the switch a trainer
uses to move onto that subset for the last part of training.

A weight is a number of epochs (The Pile, Gao et al. 2020, Table 1): 2.0 writes every document of the
source twice, 0.5 keeps half of them. The fractional part is decided per document by a hash of its id
and the seed, so the choice is deterministic, independent of the number of workers, and the same
document is never kept in one run and dropped in a rerun. The output is materialised, so
`llmkit data prepare` needs no knowledge of the mix.
"""

from __future__ import annotations

import hashlib
import math

from llmkit.data.clean.config import AnnealConfig, MixingConfig
from llmkit.data.clean.document import Document


def uniform(seed: int, key: str) -> float:
    """A deterministic number in [0, 1) for (seed, key)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def copies(doc: Document, mixing: MixingConfig) -> int:
    """How many times the document goes into the training mix."""
    weight = mixing.weights.get(doc.source, 1.0)
    whole = math.floor(weight)
    return whole + (1 if uniform(mixing.seed, doc.id) < weight - whole else 0)


def in_anneal(doc: Document, anneal: AnnealConfig) -> bool:
    """Whether the document belongs to the high-quality annealing subset."""
    if anneal.min_score is None or "quality" not in doc.meta:
        return False
    if anneal.sources is not None and doc.source not in anneal.sources:
        return False
    return doc.meta["quality"] >= anneal.min_score


def data_source_for_step(step: int, total_steps: int, anneal_fraction: float) -> str:
    """'train' for the first (1 - anneal_fraction) of the steps, then 'anneal': the switch a trainer
    makes onto the high-quality subset at the end of pretraining (Llama 3, Dubey et al. 2024, §3.1.3)."""
    if not 0.0 <= anneal_fraction <= 1.0:
        raise ValueError(f"anneal_fraction must be in [0, 1], not {anneal_fraction}")
    return "anneal" if step >= round(total_steps * (1.0 - anneal_fraction)) else "train"


def mixture_summary(per_source: dict[str, dict], mixing: MixingConfig) -> dict:
    """The mix as written: per source, documents/bytes kept after cleaning and written after weighting,
    and each source's share of the written bytes."""
    total = sum(s["bytes_out"] for s in per_source.values()) or 1
    sources = {}
    for name, s in sorted(per_source.items()):
        sources[name] = {**s, "weight": mixing.weights.get(name, 1.0), "share_of_bytes": s["bytes_out"] / total}
    anneal = mixing.anneal
    return {"sources": sources, "train_dir": "train",
            "anneal": {"dir": "anneal", "min_score": anneal.min_score, "sources": anneal.sources,
                       "fraction_of_training": anneal.fraction_of_training}}
