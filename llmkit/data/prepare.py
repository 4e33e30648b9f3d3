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

import hashlib
import json
from contextlib import ExitStack
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_open, atomic_write_text, staged_directory
from llmkit.data.clean.readers import FilePart, format_of, read_part, visible_files
from llmkit.data.clean.report import is_clean_report
from llmkit.errors import DataError
from llmkit.tokenizer import Tokenizer, read_text_pieces, text_pieces

# The readers of `llmkit data clean` (one reader per format, streaming), for the formats that hold text.
PREPARE_FORMATS = ("text", "jsonl", "parquet")
# A document longer than this (characters) is read and tokenized in pieces: `tokenizers` holds ~190 bytes
# per input byte while encoding, so a 100 MB one-line file would need ~19 GB at once.
LONG_DOCUMENT = 1 << 18
BATCH_CHARS, BATCH_DOCUMENTS = 1 << 21, 4096  # short documents per `encode_batch` call (~400 MB at most)
SHARDS_FORMAT = "llmkit-token-shards-v1"
BAD_LINE_HINT = "fix the record, choose the text field with --field, or pass --skip-bad to skip and count such records"


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
            _refuse_unfinished_clean_output(path)
            _refuse_whole_clean_output(path)
            files += [p for p in visible_files(path) if format_of(p) in PREPARE_FORMATS]
        elif path.is_file():
            if format_of(path) not in PREPARE_FORMATS:
                extra = "; HTML and WARC go through `llmkit data clean` (stage extract) first" \
                    if format_of(path) in ("html", "warc") else ""
                raise DataError(f"{path}: unknown input type; use .txt, .md, .jsonl(.gz) or .parquet files{extra}")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no .txt, .jsonl or .parquet files in {', '.join(map(str, inputs))}")
    return files


def _refuse_unfinished_clean_output(path: Path) -> None:
    """`llmkit data clean` writes report/report.json last and removes its .work folder: an output that
    still has .work and no report is a run that was killed, whose train/ holds only some of its parts."""
    for folder in (path, path.parent):
        if (folder / ".work").is_dir() and not (folder / "report" / "report.json").is_file():
            raise DataError(f"{path}: the `llmkit data clean` run that wrote {folder} did not finish (its .work "
                            "folder is there and report/report.json is not); run it again to completion")


def _refuse_whole_clean_output(path: Path) -> None:
    """The folder `llmkit data clean` writes holds its report (report.md is a text file, the cluster log
    JSONL) and the annealing subset beside the mix: read whole, the report would become a training
    document and the subset be counted twice. The mix is its train/ folder."""
    if is_clean_report(path / "report" / "report.json"):
        raise DataError(f"{path}: is the output of `llmkit data clean`, with its report and anneal/ subset; "
                        f"pass {path / 'train'} (the mix) or {path / 'anneal'} (the annealing subset) as --input")


def _without_bom(pieces: Iterator[str]) -> Iterator[str]:
    """A text file's pieces without a leading byte-order mark: it is the file's encoding signature, not
    text, and would be tokenized and counted in the bytes bits-per-byte divides by (a JSONL line's is
    dropped by json, as `data clean` drops a text file's)."""
    first = True
    for piece in pieces:
        yield piece.removeprefix("\ufeff") if first else piece
        first = False


def iter_documents(files: list[Path], field_name: str = "text", skip_bad: bool = False,
                   stats: PrepareStats | None = None) -> Iterator[str | Iterator[str]]:
    """Yield documents from every file, streaming (a text file is one document; JSONL one per line;
    Parquet one per row): a document's text, or for one longer than LONG_DOCUMENT characters an
    iterator of its consecutive pieces, so that it is never tokenized (or, for a text file, read) whole."""
    skipped: list = []
    for path in files:
        if format_of(path) == "text":
            pieces = _without_bom(read_text_pieces(path, LONG_DOCUMENT, DataError))
            if path.stat().st_size > LONG_DOCUMENT:
                yield pieces
            else:  # universal newlines, as `tokenizer train` reads text files: a CRLF file gives the same tokens
                yield "".join(pieces)
            continue
        part = FilePart(path=str(path), rel=path.name, format=format_of(path), source="prepare",
                        text_field=field_name, id_field="")  # ids are not needed: no id column is read
        for doc in read_part(part, skip_bad, skipped, bad_hint=BAD_LINE_HINT):
            yield doc.text if len(doc.text) <= LONG_DOCUMENT else text_pieces(doc.text, LONG_DOCUMENT)
        if stats is not None:
            stats.skipped_lines = len(skipped)


class _ShardWriter:
    """Token shards written as the documents arrive: a shard's tokens stream into its file (through
    `atomic_open`, renamed into place when the shard is full), so memory holds no shard and no whole
    document, however long. Used as a context manager: on an error the unfinished shard is removed."""

    def __init__(self, out: Path, dtype: np.dtype, shard_tokens: int, stats: PrepareStats):
        self.out, self.dtype, self.shard_tokens, self.stats = out, dtype, shard_tokens, stats
        self.open_shard = ExitStack()
        self.file = None
        self.starts: list[int] = []
        self.tokens = self.bytes = 0

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.open_shard.__exit__(*exc)

    @property
    def name(self) -> str:
        return f"shard_{len(self.stats.shards):05d}"

    def add(self, pieces: Iterable[list[int]]) -> int:
        """One document, given as the ids of its consecutive pieces; returns its token count. Then
        `end_document` with its UTF-8 bytes. A document never spans shards."""
        if self.file is None:
            self.file = self.open_shard.enter_context(atomic_open(self.out / f"{self.name}.bin"))
        start = self.tokens
        self.starts.append(start)
        for ids in pieces:
            self.file.write(np.asarray(ids, dtype=self.dtype).tobytes())
            self.tokens += len(ids)
        return self.tokens - start

    def end_document(self, n_bytes: int) -> None:
        self.bytes += n_bytes
        if self.tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if self.file is None:
            return
        name = self.name
        self.open_shard.close()  # the shard file is complete: fsynced and renamed into place
        self.file = None
        with atomic_open(self.out / f"{name}.docs.npy") as f:
            np.save(f, np.asarray(self.starts, dtype=np.int64))
        self.stats.shards.append({"file": f"{name}.bin", "tokens": self.tokens, "documents": len(self.starts),
                                  "bytes": self.bytes})
        self.starts, self.tokens, self.bytes = [], 0, 0


def is_token_shards(directory: Path) -> bool:
    """Is `directory` an earlier `data prepare` output (which a new run may replace)?"""
    try:
        return json.loads((directory / "manifest.json").read_text()).get("format") == SHARDS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def prepare(inputs: list[str | Path], tokenizer_dir: str | Path, out: str | Path, field_name: str = "text",
            skip_bad: bool = False, shard_tokens: int = 100_000_000, overwrite: bool = False) -> PrepareStats:
    if Path(tokenizer_dir).suffix == ".gguf":  # a model file's own tokenizer: the converter reads it
        from llmkit.convert import read_tokenizer

        tokenizer = read_tokenizer(tokenizer_dir)
    else:
        tokenizer = Tokenizer.load(tokenizer_dir)
    if tokenizer.bos_id is None:
        raise DataError(f"{tokenizer_dir}: the tokenizer has no BOS token, which separates documents in shards")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError(f"shard_tokens {shard_tokens!r}: give the tokens per shard file as a whole number >= 1")
    files = expand_inputs(inputs)
    out = Path(out)
    for path in files:
        if out.resolve() in path.resolve().parents:
            raise DataError(f"{path}: is inside --out {out}, which is replaced; choose --out outside the inputs")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    stats = PrepareStats()
    # Written into a staged folder renamed into place at the end (the manifest last inside it): a killed
    # run leaves the previous shards, or none, never a mix; a folder of other files is never replaced unasked.
    with staged_directory(out, overwrite=overwrite, ours=is_token_shards, what="the token shards") as folder:
        with _ShardWriter(folder, dtype, shard_tokens, stats) as writer:
            _tokenize_into(writer, tokenizer, iter_documents(files, field_name, skip_bad, stats), stats)
        if stats.documents == 0:
            raise DataError(f"no documents found in {', '.join(map(str, inputs))}")
        tokenizer.save(folder)
        manifest = {
            "format": SHARDS_FORMAT, "dtype": dtype.name, "documents": stats.documents,
            "tokens": stats.tokens, "bytes": stats.bytes, "skipped_lines": stats.skipped_lines,
            "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "tokenizer_sha256": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest(),
            "inputs": [str(f) for f in files], "shards": stats.shards,
        }
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return stats


def _tokenize_into(writer: _ShardWriter, tokenizer: Tokenizer, documents: Iterator[str | Iterator[str]],
                   stats: PrepareStats) -> None:
    """Short documents are tokenized in batches, which `tokenizers` spreads over every core; a long one
    (an iterator of pieces) alone with `encode_long`. Documents stay in input order. A document is text:
    encoded `literal`, so `<|bos|>` or `<|endoftext|>` written in it never becomes a control token (the
    only BOS in a shard is the one that starts each document)."""
    batch: list[str] = []

    def record(tokens: int, n_bytes: int) -> None:
        stats.documents += 1
        stats.tokens += tokens
        stats.bytes += n_bytes
        writer.end_document(n_bytes)

    def encode_batch() -> None:
        for text, ids in zip(batch, tokenizer.encode_batch(batch, add_bos=True, literal=True)):
            record(writer.add([ids]), len(text.encode("utf-8")))
        batch.clear()

    batch_chars = 0
    for doc in documents:
        if isinstance(doc, str):
            if not doc:  # an empty file or record is no document: BOS alone teaches nothing
                continue
            batch.append(doc)
            batch_chars += len(doc)
            if batch_chars >= BATCH_CHARS or len(batch) >= BATCH_DOCUMENTS:
                encode_batch()
                batch_chars = 0
            continue
        encode_batch()
        batch_chars = 0
        counted = _CountedBytes(doc)  # counts each piece's bytes as the tokenizer reads it: no copy kept
        record(writer.add(tokenizer.encode_long(counted, add_bos=True, literal=True)), counted.bytes)  # args in order
    encode_batch()
    writer.flush()


class _CountedBytes:
    """An iterator over text pieces that counts their UTF-8 bytes as they pass."""

    def __init__(self, pieces: Iterator[str]):
        self.pieces, self.bytes = pieces, 0

    def __iter__(self):
        for piece in self.pieces:
            self.bytes += len(piece.encode("utf-8"))
            yield piece


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise DataError(f"{path}: missing; make token shards with `llmkit data prepare --input ... --out {directory}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
