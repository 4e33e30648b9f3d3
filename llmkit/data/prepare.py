"""Documents -> flat token shards on disk, the input of pretraining.

    out/manifest.json          documents, tokens, UTF-8 bytes (bits per byte divides by these), dtype
    out/shard_00000.bin        tokens, uint16 if the vocabulary fits, else uint32; each document is
                               BOS + its tokens, documents back to back
    out/shard_00000.docs.npy   start offset of every document in the shard (int64)
    out/tokenizer.json         the tokenizer the shards were made with (+ tokenizer_config.json)

Inputs: text files (one document each), JSONL (a configurable field per line), Parquet (a column).
Tokenization is batched through the `tokenizers` library, which spreads each batch over all cores.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_write_bytes, atomic_write_text
from llmkit.errors import DataError
from llmkit.tokenizer import Tokenizer

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class PrepareStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped_lines: int = 0
    shards: list[dict] = field(default_factory=list)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the text/JSONL/Parquet files under each directory, sorted."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
        elif path.is_file():
            if _kind(path) is None:
                raise DataError(f"{path}: unknown input type; use .txt, .jsonl(.gz) or .parquet files")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no .txt, .jsonl or .parquet files in {', '.join(map(str, inputs))}")
    return files


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def iter_documents(files: list[Path], field_name: str = "text", skip_bad: bool = False,
                   stats: PrepareStats | None = None) -> Iterator[str]:
    """Yield document texts from every file, streaming (one line / one row group at a time)."""
    for path in files:
        kind = _kind(path)
        if kind == "text":
            try:
                yield path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: byte {e.start} is not valid UTF-8; convert the file to UTF-8") from None
        elif kind == "jsonl":
            yield from _jsonl_documents(path, field_name, skip_bad, stats)
        else:
            yield from _parquet_documents(path, field_name)


def _jsonl_documents(path: Path, field_name: str, skip_bad: bool, stats: PrepareStats | None) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                text = _jsonl_text(raw, path, line_no, field_name, skip_bad, stats)
                if text is not None:
                    yield text
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a truncated .gz: EOFError
        raise DataError(f"{path}: unreadable after line {line_no} ({e or type(e).__name__}); "
                        "re-download or re-compress the file") from None


def _jsonl_text(raw: bytes, path: Path, line_no: int, field_name: str, skip_bad: bool,
                stats: PrepareStats | None) -> str | None:
    """The text field of one JSONL line, None for a blank line or a bad one that skip_bad skips."""
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError: a bad line like any other
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, found {type(record).__name__}")
        if field_name not in record:
            raise ValueError(f"no field {field_name!r} (fields: {', '.join(sorted(record)) or 'none'})")
        text = record[field_name]
        if not isinstance(text, str):
            raise ValueError(f"field {field_name!r} is {type(text).__name__}, not a string")
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        if skip_bad:
            if stats is not None:
                stats.skipped_lines += 1
            return None
        raise DataError(f"{path}:{line_no}: {e}; fix the line, or pass --skip-bad to skip and count "
                        "such lines") from None
    return text


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs `pip install pyarrow`") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    schema = parquet.schema_arrow
    if column not in schema.names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}); "
                        "choose one with --field")
    import pyarrow as pa

    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not text; choose a string column with --field")
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def _batches(documents: Iterator[str], max_chars: int = 8 << 20, max_docs: int = 4096) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _ShardWriter:
    def __init__(self, out: Path, dtype: np.dtype, shard_tokens: int, stats: PrepareStats):
        self.out, self.dtype, self.shard_tokens, self.stats = out, dtype, shard_tokens, stats
        self.parts: list[np.ndarray] = []
        self.starts: list[int] = []
        self.tokens = self.bytes = 0

    def add(self, ids: list[int], n_bytes: int) -> None:
        self.starts.append(self.tokens)
        self.parts.append(np.asarray(ids, dtype=self.dtype))
        self.tokens += len(ids)
        self.bytes += n_bytes
        if self.tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        index = len(self.stats.shards)
        name = f"shard_{index:05d}"
        atomic_write_bytes(self.out / f"{name}.bin", np.concatenate(self.parts).tobytes())
        tmp = self.out / f".{name}.docs.tmp.npy"
        np.save(tmp, np.asarray(self.starts, dtype=np.int64))
        tmp.replace(self.out / f"{name}.docs.npy")
        self.stats.shards.append({"file": f"{name}.bin", "tokens": self.tokens, "documents": len(self.starts),
                                  "bytes": self.bytes})
        self.parts, self.starts, self.tokens, self.bytes = [], [], 0, 0


def prepare(inputs: list[str | Path], tokenizer_dir: str | Path, out: str | Path, field_name: str = "text",
            skip_bad: bool = False, shard_tokens: int = 100_000_000) -> PrepareStats:
    tokenizer = Tokenizer.load(tokenizer_dir)
    if tokenizer.bos_id is None:
        raise DataError(f"{tokenizer_dir}: the tokenizer has no BOS token, which separates documents in shards")
    files = expand_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # first: an interrupted re-run must not look complete
    for old in out.glob("shard_*"):  # a re-run replaces the old shards
        old.unlink()
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    stats = PrepareStats()
    writer = _ShardWriter(out, dtype, shard_tokens, stats)
    for batch in _batches(iter_documents(files, field_name, skip_bad, stats)):
        for text, ids in zip(batch, tokenizer.encode_batch(batch, add_bos=True)):
            writer.add(ids, len(text.encode("utf-8")))
            stats.documents += 1
            stats.tokens += len(ids)
            stats.bytes += len(text.encode("utf-8"))
    writer.flush()
    if stats.documents == 0:
        raise DataError(f"no documents found in {', '.join(map(str, inputs))}")
    tokenizer.save(out)
    manifest = {
        "format": "llmkit-token-shards-v1", "dtype": dtype.name, "documents": stats.documents,
        "tokens": stats.tokens, "bytes": stats.bytes, "skipped_lines": stats.skipped_lines,
        "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
        "tokenizer_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
        "inputs": [str(f) for f in files], "shards": stats.shards,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")  # written last: marks completion
    return stats


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise DataError(f"{path}: missing; make token shards with `llmkit data prepare --input ... --out {directory}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
