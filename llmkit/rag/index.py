"""A retrieval index on disk: chunks with their sources, BM25, and (optionally) dense vectors.

    INDEX/index.json      format, chunking, the files indexed, the BM25 settings, the embedding model
    INDEX/chunks.jsonl    one chunk per line: file, doc, start, end, line, text
    INDEX/embeddings.npy  float32 (chunks, dim) unit vectors, loaded with mmap_mode="r"
    INDEX/bm25/           bm25s's sparse score matrix (.npy, no pickle) and vocabulary (JSON)

Written whole or not at all (`llmkit.atomic.staged_directory`). `add` chunks and embeds only the new
files; the old vectors are copied, not recomputed, and BM25 (whose scores depend on the whole
collection) is re-scored from the stored chunk texts. An index built in two steps equals one built at
once (tests/test_rag.py).

Search modes: "bm25", "dense" (cosine of the query's vector with each chunk's), and "hybrid":
reciprocal-rank fusion of the two rankings, score(d) = sum over rankings of 1 / (60 + rank(d))
(Cormack, Clarke & Büttcher 2009, "Reciprocal Rank Fusion outperforms Condorcet and individual rank
learning methods"; k = 60 is theirs), which needs no calibration between BM25 scores and cosines.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.atomic import staged_directory
from llmkit.errors import DataError, LLMKitError, text_lines
from llmkit.rag.chunking import (INDEX_FORMAT, AlreadyIndexed, Chunk, ChunkingConfig, changed_since, chunk_inputs,
                                 is_index)
from llmkit.rag.lexical import BM25Index, top_k

MODES = ("bm25", "dense", "hybrid")
RRF_K = 60  # Cormack et al. 2009
FUSION_DEPTH = 100  # candidates each ranking contributes to the fusion


class RagIndexError(LLMKitError):
    """An index folder is missing, incomplete or corrupt, or cannot answer the query asked of it."""


@dataclass
class Hit:
    rank: int  # 1-based
    row: int  # the chunk's row in the index
    chunk: Chunk
    score: float  # the mode's score: BM25, cosine, or the fused reciprocal-rank sum


class RagIndex:
    def __init__(self, meta: dict, chunks: list[Chunk], bm25: BM25Index, embeddings: np.ndarray | None,
                 folder: Path | None = None):
        self.meta, self.chunks, self.bm25, self.embeddings, self.folder = meta, chunks, bm25, embeddings, folder

    # -- building
    @classmethod
    def build(cls, inputs: list[str | Path], config: ChunkingConfig = ChunkingConfig(), embedder=None,
              tokenizer=None, progress=None, notice=None) -> "RagIndex":
        """An index of every document of `inputs` (files or folders). embedder: a `ModelEmbedder` for dense
        vectors (None: BM25 only); tokenizer: for chunks measured in tokens; notice(message): told of the
        files passed over (of unsupported types; already indexed)."""
        meta = {"format": INDEX_FORMAT, "chunking": config.__dict__.copy(), "files": [], "chunks": 0,
                "bm25": {"k1": 1.5, "b": 0.75, "stopwords": None},
                "dense": embedder.describe() if embedder is not None else None}
        empty = np.zeros((0, embedder.dim), dtype=np.float32) if embedder is not None else None
        return cls(meta, [], None, empty).add(inputs, embedder, tokenizer, progress, notice)

    def add(self, inputs: list[str | Path], embedder=None, tokenizer=None, progress=None,
            notice=None) -> "RagIndex":
        """A new index holding this one's chunks and those of `inputs`' files that it does not hold yet
        (files already indexed are passed over, a changed one with a notice): only the new chunks are embedded."""
        config = ChunkingConfig(**self.meta["chunking"])
        known = {f["path"]: f for f in self.meta["files"]}
        try:
            new_chunks, files = chunk_inputs(inputs, config, tokenizer, known, notice)
        except AlreadyIndexed as e:
            raise RagIndexError(str(e)) from None
        embeddings = self.embeddings
        if self.meta["dense"] is not None:
            self.check_embedder(embedder, "adding to an index with dense vectors")
            added = embedder.embed([c.text for c in new_chunks], progress)
            embeddings = np.concatenate([np.asarray(self.embeddings), added]) if len(self.chunks) else added
        chunks = self.chunks + new_chunks
        first = len(self.chunks)
        for record in files:
            record["first_chunk"], first = first, first + record["chunks"]
        meta = {**self.meta, "files": self.meta["files"] + files, "chunks": len(chunks),
                "characters": self.meta.get("characters", 0) + sum(len(c.text) for c in new_chunks)}
        settings = meta["bm25"]
        bm25 = BM25Index.build([c.text for c in chunks], settings["k1"], settings["b"], settings["stopwords"])
        return RagIndex(meta, chunks, bm25, embeddings)

    # -- files
    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        out = Path(out)
        inside = [f["path"] for f in self.meta["files"] if out.resolve() in Path(f["path"]).resolve().parents]
        if inside:  # replacing the folder would delete the documents it indexes
            raise RagIndexError(f"{inside[0]}: an indexed file is inside the index folder {out}, which is replaced "
                                "when the index is written; choose an index folder outside the inputs")
        with staged_directory(out, overwrite=overwrite, ours=is_index, what="the index") as folder:
            (folder / "index.json").write_text(json.dumps(self.meta, indent=1, ensure_ascii=False) + "\n")
            with open(folder / "chunks.jsonl", "w", encoding="utf-8") as f:
                for chunk in self.chunks:
                    f.write(json.dumps(chunk.to_record(), ensure_ascii=False) + "\n")
            if self.embeddings is not None:
                np.save(folder / "embeddings.npy", np.ascontiguousarray(self.embeddings, dtype=np.float32),
                        allow_pickle=False)
            (folder / "bm25").mkdir()
            self.bm25.save(folder / "bm25")
        self.folder = out
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "RagIndex":
        folder = Path(folder)
        hint = f"build one with: llmkit rag index --input FILES --out {folder}"
        if not folder.is_dir():
            raise RagIndexError(f"{folder}: no such index; {hint}")
        if not (folder / "index.json").is_file():
            raise RagIndexError(f"{folder}: not an llmkit index (no index.json); {hint}")
        try:
            meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise RagIndexError(f"{folder / 'index.json'}: not valid JSON ({e}); rebuild the index") from None
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise RagIndexError(f"{folder / 'index.json'}: not an {INDEX_FORMAT} index; rebuild it with this llmkit")
        check_meta(meta, folder / "index.json")
        chunks = read_chunks(folder / "chunks.jsonl", meta.get("chunks"))
        embeddings = None
        if meta.get("dense") is not None:
            embeddings = read_embeddings(folder / "embeddings.npy", len(chunks), meta["dense"].get("dim"))
        bm25 = BM25Index.load(folder / "bm25", meta.get("bm25", {}).get("stopwords"), len(chunks))
        if bm25.size != len(chunks):
            raise RagIndexError(f"{folder / 'bm25'}: scores {bm25.size} chunks, chunks.jsonl holds {len(chunks)}; "
                              "rebuild the index")
        return cls(meta, chunks, bm25, embeddings, folder)

    # -- sources
    def file_of(self, row: int) -> dict:
        """The index.json record of the file chunk `row` came from."""
        starts = [f["first_chunk"] for f in self.meta["files"]]
        return self.meta["files"][bisect.bisect_right(starts, row) - 1]

    def changed_sources(self, hits: list[Hit]) -> list[str]:
        """One warning for each file of `hits` that changed (or went) since it was indexed, so that a citation
        may point at the wrong line; none for an index older than the files' stamps (size, mtime, SHA-256)."""
        warnings, seen = [], set()
        for hit in hits:
            record = self.file_of(hit.row)
            if record["path"] in seen:
                continue
            seen.add(record["path"])
            warning = self.source_warning(record)
            if warning is not None:
                warnings.append(warning)
        return warnings

    @staticmethod
    def source_warning(record: dict) -> str | None:
        """The warning for an index.json file record whose file changed (or went) since it was indexed."""
        what = changed_since(record)
        return None if what is None else (f"{record['path']}: {what} since it was indexed, so its passages and line "
                                          "numbers may be out of date; rebuild the index (llmkit rag index ... --overwrite)")

    # -- searching
    @property
    def has_dense(self) -> bool:
        return self.embeddings is not None

    def default_mode(self) -> str:
        return "hybrid" if self.has_dense else "bm25"

    def check_embedder(self, embedder, needed_by: str) -> None:
        wanted = self.meta["dense"]
        if embedder is None:
            raise RagIndexError(f"{needed_by} needs the model that embedded the index ({wanted['model']})")
        mine = embedder.describe()
        if (mine["dim"], mine["config_sha256"]) != (wanted["dim"], wanted["config_sha256"]):
            raise RagIndexError(f"{needed_by}: the index was embedded with {wanted['model']} ({wanted['dim']} "
                              f"dimensions), not {mine['model']} ({mine['dim']}); use that model, or --mode bm25")

    def search(self, query: str, k: int = 5, mode: str | None = None, embedder=None) -> list[Hit]:
        mode = mode or self.default_mode()
        if mode not in MODES:
            raise RagIndexError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
        if k < 1:
            raise RagIndexError(f"--k {k}: retrieve at least one passage")
        if mode != "bm25" and not self.has_dense:
            raise RagIndexError(f"--mode {mode}: the index has no dense vectors (built with --no-dense); "
                              "use --mode bm25, or rebuild it with --dense")
        if mode == "bm25":
            ranked = self.bm25.search(query, k)
        else:
            self.check_embedder(embedder, f"--mode {mode}")
            query_vector = embedder.embed([query])[0]
            dense = top_k(np.asarray(self.embeddings @ query_vector, dtype=np.float32),
                          k if mode == "dense" else max(k, FUSION_DEPTH))
            ranked = dense if mode == "dense" else reciprocal_rank_fusion(
                [self.bm25.search(query, max(k, FUSION_DEPTH)), dense])[:k]
        return [Hit(rank, row, self.chunks[row], score) for rank, (row, score) in enumerate(ranked, 1)]


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Rows of several best-first rankings, ordered by sum of 1 / (k + rank) (Cormack et al. 2009);
    ties go to the row with the better best rank, then the lower row."""
    fused: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, 1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (k + rank)
            best[row] = min(best.get(row, rank), rank)
    return sorted(fused.items(), key=lambda item: (-item[1], best[item[0]], item[0]))


def read_chunks(path: Path, expected) -> list[Chunk]:
    if not path.is_file():
        raise RagIndexError(f"{path}: missing; the index is incomplete: rebuild it")
    chunks = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RagIndexError(f"{path}: byte {e.start} is not valid UTF-8; the file is damaged: rebuild the index") from None
    lines = text_lines(text)  # not splitlines(): U+2028, U+0085 ... stand unescaped inside the JSON strings
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            chunk = Chunk(**record)
        except (ValueError, TypeError) as e:
            raise RagIndexError(f"{path}: line {number}: not a chunk record ({e}); rebuild the index") from None
        problem = chunk_problem(chunk)
        if problem is not None:
            raise RagIndexError(f"{path}: line {number}: damaged ({problem}); rebuild the index with llmkit rag index")
        chunks.append(chunk)
    if expected != len(chunks):
        raise RagIndexError(f"{path}: holds {len(chunks)} chunks, index.json says {expected}; rebuild the index")
    return chunks


def _whole(value, least: int = 0) -> bool:
    """An int (not a bool) of at least `least`: a count, an offset or a line number in the index's files."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def chunk_problem(chunk: Chunk) -> str | None:
    """What is wrong with a chunk record's fields (None: nothing)."""
    for name in ("file", "doc", "text"):
        if not isinstance(getattr(chunk, name), str):
            return f"{name!r} must be text, not {getattr(chunk, name)!r:.40}"
    for name in ("start", "end", "line"):
        value, least = getattr(chunk, name), 1 if name == "line" else 0
        if not _whole(value, least):
            return f"{name!r} must be a whole number >= {least}, not {value!r:.40}"
    if chunk.end < chunk.start:
        return f"'end' {chunk.end} is before 'start' {chunk.start}"
    return None


def read_embeddings(path: Path, rows: int, dim) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise RagIndexError(f"{path}: missing; the index is incomplete: rebuild it") from None
    except (ValueError, OSError) as e:
        raise RagIndexError(f"{path}: not a readable .npy array ({e}); rebuild the index") from None
    if vectors.dtype != np.float32 or vectors.shape != (rows, dim):
        raise RagIndexError(f"{path}: holds {vectors.dtype} {vectors.shape}, expected float32 ({rows}, {dim}); "
                          "rebuild the index")
    return vectors


def check_meta(meta: dict, path: Path) -> None:
    """The fields of index.json the index reads, each of its type (a hand-edited file fails here, by name,
    rather than deep inside BM25 or the chunker)."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def fields(record, types: dict) -> str | None:
        if not isinstance(record, dict):
            return "must be an object"
        for key, ok in types.items():
            if key not in record or not ok(record[key]):
                return f"{key!r} is missing or of the wrong type ({record.get(key)!r})"
        return None

    checks = {
        "chunking": (meta.get("chunking"), {"unit": lambda v: isinstance(v, str), "size": lambda v: isinstance(v, int),
                                            "overlap": lambda v: isinstance(v, int),
                                            "text_field": lambda v: isinstance(v, str)}),
        "bm25": (meta.get("bm25"), {"k1": number, "b": number,
                                    "stopwords": lambda v: v is None or isinstance(v, (str, list))}),
        "files": ({"list": meta.get("files")}, {"list": lambda v: isinstance(v, list) and all(
            isinstance(f, dict) and isinstance(f.get("path"), str) for f in v)}),
    }
    if meta.get("dense") is not None:
        checks["dense"] = (meta["dense"], {"model": lambda v: isinstance(v, str), "dim": lambda v: isinstance(v, int)})
    for name, (record, types) in checks.items():
        problem = fields(record, types)
        if problem is not None:
            raise RagIndexError(f"{path}: {name!r}: {problem}; restore the file or rebuild the index")
    problem = meta_values_problem(meta)
    if problem is not None:
        raise RagIndexError(f"{path}: damaged ({problem}); rebuild the index with llmkit rag index")


def meta_values_problem(meta: dict) -> str | None:
    """What is wrong with the values of index.json's fields, their types being right (None: nothing): the
    chunking settings, the chunk count, and each file's chunks following the previous file's."""
    try:
        ChunkingConfig(**meta["chunking"])
    except (DataError, TypeError) as e:
        return f"'chunking': {e}"
    settings = meta["bm25"]
    if not (0 <= settings["k1"] < float("inf") and 0 <= settings["b"] <= 1):
        return f"'bm25': k1 {settings['k1']!r} and b {settings['b']!r} must be >= 0 and in [0, 1]"
    if not _whole(meta.get("chunks")):
        return f"'chunks' must be a whole number >= 0, not {meta.get('chunks')!r:.40}"
    if meta["dense"] is not None and not _whole(meta["dense"]["dim"], 1):
        return f"'dense': 'dim' must be a whole number >= 1, not {meta['dense']['dim']!r:.40}"
    first = 0
    for number, record in enumerate(meta["files"], 1):
        for key in ("chunks", "first_chunk"):
            if not _whole(record.get(key)):
                return f"'files' entry {number} ({record['path']}): {key!r} must be a whole number >= 0, " \
                       f"not {record.get(key)!r:.40}"
        if record["first_chunk"] != first:
            return f"'files' entry {number} ({record['path']}): 'first_chunk' is {record['first_chunk']}, " \
                   f"its chunks follow the previous file's at {first}"
        if not isinstance(record.get("file"), str):
            return f"'files' entry {number} ({record['path']}): 'file' must be text"
        first += record["chunks"]
    if first != meta["chunks"]:
        return f"the files hold {first} chunks, 'chunks' says {meta['chunks']}"
    return None
