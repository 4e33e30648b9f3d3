"""Deduplication: exact (a hash of the normalised text) and near-duplicate (MinHash + LSH over word
n-grams; Broder 1997, "On the resemblance and containment of documents").

The state is signatures, never texts. During the streaming pass every task writes, for each document
that reached deduplication, a 128-bit hash of its normalised text, its MinHash signature and one
64-bit hash per LSH band (`SignatureWriter`). Then:
1. exact: sort the text hashes; equal hashes are one cluster.
2. near: for each band (an independent task: `band_pairs`), sort the band hashes of all documents;
   documents sharing a bucket are candidates, and a candidate pair is kept when the fraction of equal
   MinHash values (an unbiased estimate of the n-gram Jaccard similarity) reaches `threshold`. The
   verified pairs are joined into clusters with union-find.
3. one document per cluster is kept by the stated rule (`keep`), the others are dropped in the second
   streaming pass.
Memory: a band task holds 16 bytes per document, the driver 32 bytes per document plus the pairs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_open, atomic_write_text
from llmkit.data.clean.document import Document, ngram_hashes
from llmkit.yaml_config import check_ranges

KEEP_RULES = ("first", "longest", "quality")


@dataclass
class ExactDedupConfig:
    """The exact_dedup stage."""

    # Which copy survives: first = earliest in input order (list your most trusted source first),
    # longest = most bytes, quality = highest quality-model score (needs quality_model before dedup).
    keep: str = "first"

    def __post_init__(self):
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, not {self.keep!r}")


@dataclass
class NearDedupConfig:
    """The near_dedup stage."""

    # FineWeb (Penedo et al. 2024, §3.3): word 5-grams, 112 hash functions in 14 bands of 8 rows, which
    # makes documents about 75% similar or more candidates ((1/14)^(1/8) ~ 0.72). Candidates are then
    # verified against `threshold` on the signature estimate of their Jaccard similarity.
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    threshold: float = 0.75
    keep: str = "first"
    seed: int = 1

    # bands x rows hash functions are computed for every document: 2^16 of them is already far beyond use
    RANGES = {"ngram": "[1, 2^16)", "bands": "[1, 2^16)", "rows": "[1, 2^16)", "threshold": "(0, 1]",
              "seed": "[0, 2^63)"}

    def __post_init__(self):
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, not {self.keep!r}")
        check_ranges(self)

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def candidate_probability(self, jaccard: float) -> float:
        """P(a pair of similarity `jaccard` shares at least one band): 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - jaccard ** self.rows) ** self.bands


_MASK32 = np.uint64(0xFFFFFFFF)
_CHUNK = 4096  # shingles per block: bounds the (shingles x permutations) temporary to ~20 MB


class MinHasher:
    """k hash functions h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 on 32-bit shingle hashes x: the
    multiply-add-shift family, strongly universal (Dietzfelbinger 1996), vectorised with numpy."""

    def __init__(self, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self.b = rng.integers(0, 2**64 - 1, size=num_perm, dtype=np.uint64, endpoint=True)
        self.num_perm = num_perm

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        x = np.unique((shingles ^ (shingles >> np.uint64(32))) & _MASK32)
        out = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, len(x), _CHUNK):
                block = x[i:i + _CHUNK, None] * self.a[None, :] + self.b[None, :]
                np.minimum(out, block.min(axis=0), out=out)
        return (out >> np.uint64(32)).astype(np.uint32)


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit value per band: the band itself when it fits (rows <= 2), else a mix of its rows."""
    s = signature.reshape(bands, rows).astype(np.uint64)
    if rows == 1:
        return s[:, 0]
    if rows == 2:
        return (s[:, 0] << np.uint64(32)) | s[:, 1]
    h = np.zeros(bands, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ (h >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15) + s[:, j]
    return h


def exact_key(doc: Document) -> bytes:
    """128-bit hash of the text with case and whitespace/punctuation differences removed. A text with no
    word characters at all (only symbols or emoji) is hashed as written, whitespace collapsed: its
    normalised form is empty for every such text, and different texts are not duplicates."""
    words = doc.norm_words
    basis = " ".join(words) if words else "\x00" + " ".join(doc.text.split())
    return hashlib.blake2b(basis.encode("utf-8"), digest_size=16).digest()


META_DTYPE = np.dtype([("key", "<u8"), ("h1", "<u8"), ("h2", "<u8"), ("nbytes", "<u4"), ("score", "<f4"),
                       ("empty", "u1")])


def doc_key(task: int, local: int) -> int:
    """A document's position in input order: the task (which follows input order) and its index in it."""
    return (task << 32) | local


class SignatureWriter:
    """Collects one task's dedup records and writes them (atomically) when the task ends."""

    def __init__(self, workdir: Path, task: int, near: NearDedupConfig | None):
        self.workdir, self.task, self.near = Path(workdir), task, near
        self.hasher = MinHasher(near.num_perm, near.seed) if near else None
        self.meta: list[tuple] = []
        self.sigs: list[np.ndarray] = []
        self.bands: list[np.ndarray] = []
        self.ids: list[str] = []

    def add(self, local: int, doc: Document) -> None:
        digest = exact_key(doc)
        score = doc.meta.get("quality", float("nan"))
        empty = len(doc.word_hashes) == 0
        self.meta.append((doc_key(self.task, local), int.from_bytes(digest[:8], "little"),
                          int.from_bytes(digest[8:], "little"), len(doc.text.encode("utf-8")), score, empty))
        self.ids.append(json.dumps([doc.id, doc.source], ensure_ascii=False))
        if self.hasher is not None:
            sig = self.hasher.signature(ngram_hashes(doc.word_hashes, self.near.ngram))
            self.sigs.append(sig)
            self.bands.append(band_hashes(sig, self.near.bands, self.near.rows))

    def close(self) -> None:
        prefix = self.workdir / f"sig-{self.task:05d}"
        _save(f"{prefix}.meta.npy", np.array(self.meta, dtype=META_DTYPE))
        if self.hasher is not None:
            k, b = self.near.num_perm, self.near.bands
            _save(f"{prefix}.sig.npy", np.array(self.sigs, dtype=np.uint32).reshape(-1, k))
            # bands x documents, so that a band task reads one contiguous row per file
            _save(f"{prefix}.bands.npy", np.ascontiguousarray(np.array(self.bands, dtype=np.uint64).reshape(-1, b).T))
        atomic_write_text(f"{prefix}.ids.jsonl", "".join(line + "\n" for line in self.ids))


def _save(path: str, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def load_meta(workdir: Path, tasks: list[int]) -> np.ndarray:
    parts = [np.load(Path(workdir) / f"sig-{t:05d}.meta.npy") for t in tasks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=META_DTYPE)


class SignatureStore:
    """Random access to signatures by document key, through memory maps (only touched rows load)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.maps: dict[int, np.ndarray] = {}

    def get(self, keys: np.ndarray) -> np.ndarray:
        tasks = (keys >> np.uint64(32)).astype(np.int64)
        locals_ = (keys & _MASK32).astype(np.int64)
        out = None
        for t in np.unique(tasks):
            if t not in self.maps:
                self.maps[t] = np.load(self.workdir / f"sig-{int(t):05d}.sig.npy", mmap_mode="r")
            rows = tasks == t
            block = self.maps[t][locals_[rows]]
            if out is None:
                out = np.empty((len(keys), block.shape[1]), dtype=np.uint32)
            out[rows] = block
        return out if out is not None else np.zeros((0, 0), dtype=np.uint32)


def band_pairs(args: tuple) -> list[tuple[int, int, float]]:
    """One task of the near-dedup step: candidate pairs from the given bands, verified against the
    threshold. Returns (key_a, key_b, estimated Jaccard) with key_a the earlier document."""
    workdir, tasks, band_ids, threshold = args
    workdir = Path(workdir)
    # Which documents take part (not empty, not an exact duplicate already dropped): one byte each.
    valid = np.load(workdir / "near_valid.npy", mmap_mode="r")
    keys = np.load(workdir / "near_keys.npy", mmap_mode="r")
    candidates: set[tuple[int, int]] = set()
    for band in band_ids:
        values = np.concatenate([np.load(workdir / f"sig-{t:05d}.bands.npy", mmap_mode="r")[band] for t in tasks])
        values = values[valid]
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        same = sorted_values[1:] == sorted_values[:-1]
        if not same.any():
            continue
        # Each run of equal values is linked as a star to its first (earliest) member: a run of m
        # documents costs m - 1 verifications, never m^2.
        run_start = np.concatenate([[True], ~same])
        heads = np.maximum.accumulate(np.where(run_start, np.arange(len(order)), 0))
        members = np.nonzero(~run_start)[0]
        for a, b in zip(keys[order[heads[members]]].tolist(), keys[order[members]].tolist()):
            candidates.add((a, b) if a < b else (b, a))
    if not candidates:
        return []
    pairs = np.array(sorted(candidates), dtype=np.uint64)
    store = SignatureStore(workdir)
    out = []
    for i in range(0, len(pairs), 4096):
        block = pairs[i:i + 4096]
        est = (store.get(block[:, 0]) == store.get(block[:, 1])).mean(axis=1)
        for (a, b), j in zip(block.tolist(), est.tolist()):
            if j >= threshold:
                out.append((a, b, j))
    return out


class UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        for root in out:
            if root not in out[root]:
                out[root].append(root)
        return [sorted(g) for g in out.values()]


def choose_kept(members: list[int], rule: str, meta: np.ndarray) -> int:
    """The stated rule: `first` = earliest in input order; `longest` = most bytes; `quality` = highest
    quality score; ties go to the earliest. `meta` is sorted by key (tasks in order, then documents)."""
    if rule == "first":
        return min(members)
    rows = meta[np.searchsorted(meta["key"], np.array(members, dtype=np.uint64))]
    value = rows["nbytes"].astype(np.float64) if rule == "longest" else np.nan_to_num(rows["score"], nan=-1.0)
    best = np.flatnonzero(value == value.max())
    return int(rows["key"][best].min())


def find_duplicates(workdir: Path, tasks: list[int], exact: ExactDedupConfig | None,
                    near: NearDedupConfig | None, map_fn, n_band_tasks: int) -> dict:
    """Run exact then near deduplication over the signatures; write `drop-TASK.npy` (local indices to
    drop) for every task; return per-step counts and the clusters (by key) for the report."""
    workdir = Path(workdir)
    meta = load_meta(workdir, tasks)
    clusters = _ClusterLog(workdir / "clusters.jsonl")
    exact_drop: list[int] = []
    near_drop: list[int] = []
    if exact is not None and len(meta):
        order = np.lexsort((meta["key"], meta["h2"], meta["h1"]))
        h1, h2, keys = meta["h1"][order], meta["h2"][order], meta["key"][order]
        boundary = np.concatenate([[True], (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1]), [True]])
        starts = np.nonzero(boundary)[0]
        for s, e in zip(starts[:-1], starts[1:]):
            if e - s > 1:
                members = sorted(keys[s:e].tolist())
                kept = choose_kept(members, exact.keep, meta)
                exact_drop += [k for k in members if k != kept]
                clusters.add({"kind": "exact", "kept": kept, "members": members})
    if near is not None and len(meta):
        valid = (meta["empty"] == 0) & ~np.isin(meta["key"], np.array(exact_drop, dtype=np.uint64))
        _save(str(workdir / "near_valid.npy"), valid)
        _save(str(workdir / "near_keys.npy"), np.ascontiguousarray(meta["key"][valid]))
        groups = np.array_split(np.arange(near.bands), max(1, min(n_band_tasks, near.bands)))
        results = map_fn(band_pairs, [(str(workdir), tasks, g.tolist(), near.threshold) for g in groups if len(g)])
        uf = UnionFind()
        similarity: dict[tuple[int, int], float] = {}
        for pairs in results:
            for a, b, j in pairs:
                uf.union(a, b)
                similarity[(a, b)] = j
        for members in uf.groups():
            kept = choose_kept(members, near.keep, meta)
            near_drop += [k for k in members if k != kept]
            est = {str(k): similarity.get((min(k, kept), max(k, kept))) for k in members if k != kept}
            clusters.add({"kind": "near", "kept": kept, "members": members, "jaccard_to_kept": est})
    drop_arr = np.array(sorted(set(exact_drop + near_drop)), dtype=np.uint64)
    drop_tasks = (drop_arr >> np.uint64(32)).astype(np.int64)
    for t in tasks:
        _save(str(workdir / f"drop-{t:05d}.npy"), (drop_arr[drop_tasks == t] & _MASK32).astype(np.int64))

    def nbytes(keys: list[int]) -> int:
        if not keys:
            return 0
        return int(meta["nbytes"][np.searchsorted(meta["key"], np.array(keys, dtype=np.uint64))].sum())

    total_bytes = int(meta["nbytes"].sum()) if len(meta) else 0
    steps = {}
    if exact is not None:
        steps["exact_dedup"] = {"docs_in": int(len(meta)), "bytes_in": total_bytes, "dropped": len(exact_drop),
                                "bytes_dropped": nbytes(exact_drop)}
    if near is not None:
        docs_in = int(len(meta)) - len(exact_drop)
        bytes_in = total_bytes - nbytes(exact_drop)
        steps["near_dedup"] = {"docs_in": docs_in, "bytes_in": bytes_in, "dropped": len(near_drop),
                               "bytes_dropped": nbytes(near_drop)}
    clusters.close()
    return {"clusters_file": str(clusters.path), "counts": clusters.counts, "largest": clusters.largest(),
            "dropped": len(drop_arr), "documents": int(len(meta)), "steps": steps}


class _ClusterLog:
    """Clusters are streamed to a file as they are found (the driver keeps only counts and the largest)."""

    def __init__(self, path: Path, keep: int = 10):
        self.path, self.keep = path, keep
        self.f = open(path, "w", encoding="utf-8")
        self.counts = {"exact": 0, "near": 0}
        self.top: list[tuple[int, int, int, dict]] = []

    def add(self, cluster: dict) -> None:
        import heapq

        self.f.write(json.dumps(cluster) + "\n")
        self.counts[cluster["kind"]] += 1
        item = (len(cluster["members"]), -cluster["kept"], -sum(self.counts.values()), cluster)
        if len(self.top) < self.keep:
            heapq.heappush(self.top, item)
        elif item[:3] > self.top[0][:3]:
            heapq.heapreplace(self.top, item)

    def largest(self) -> list[dict]:
        return [t[-1] for t in sorted(self.top, key=lambda t: t[:3], reverse=True)]

    def close(self) -> None:
        self.f.close()


def lookup_ids(workdir: Path, keys: set[int]) -> dict[int, tuple[str, str]]:
    """(id, source) for the given keys, read from the tasks' id files (only the needed lines are kept)."""
    by_task: dict[int, set[int]] = {}
    for k in keys:
        by_task.setdefault(k >> 32, set()).add(k & 0xFFFFFFFF)
    out = {}
    for t, wanted in by_task.items():
        with open(Path(workdir) / f"sig-{t:05d}.ids.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i in wanted:
                    out[doc_key(t, i)] = tuple(json.loads(line))
    return out
