"""Documents -> overlapping chunks that remember where they came from.

The documents are read by `llmkit data clean`'s readers (llmkit/data/clean/readers.py), so an index
takes every format cleaning takes: text and Markdown files (one document each), JSONL (plain or gzip,
one document per line), Parquet (one per row), HTML files and WARC archives (main text extracted with
trafilatura, as the clean pipeline's `extract` stage does; the `clean` extra).

A chunk keeps its file, its document (a JSONL/Parquet record's id; the file itself for text), the
character offsets [start, end) of its text inside the document's text, and the 1-based line its first
character is on. A text file's document text is the file's characters exactly (read as UTF-8 bytes,
no newline translation), so `open(path, newline="").read()[start:end] == chunk.text` and the line is
the file's own line number: what a citation like `[2] hamlet_gut.txt, line 1734` points at.

Chunks are `size` characters (or tokens of a tokenizer) with `overlap` shared between neighbours, so a
sentence cut by one boundary is whole in the next chunk. A character chunk ends at the last line break
in its second half where there is one (else a space) and starts at the beginning of a line where it
can: passages of verse stay whole lines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from llmkit.atomic import overlapping_input
from llmkit.data.clean.document import Document, Rejection
from llmkit.data.clean.readers import FilePart, expand_input, format_of, read_part
from llmkit.data.clean.shared import InputSpec
from llmkit.errors import DataError

RAG_BAD_HINT = "fix the record, or choose the text field with --field"
INDEX_FORMAT = "llmkit-rag-index-v1"  # index.json's "format" (index.py)


def is_index(folder: Path) -> bool:
    """Does `folder` hold an llmkit index (never indexed as documents, replaced only as an index)?"""
    try:
        return json.loads((Path(folder) / "index.json").read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class AlreadyIndexed(DataError):
    """Every file of the inputs is in the index already."""


@dataclass(frozen=True)
class ChunkingConfig:
    unit: str = "chars"  # "chars" | "tokens" (of the index's tokenizer)
    size: int = 1000
    overlap: int = 200
    text_field: str = "text"  # JSONL field / Parquet column holding the text

    def __post_init__(self):
        if self.unit not in ("chars", "tokens"):
            raise DataError(f"chunk unit {self.unit!r}: use chars or tokens")
        if self.size < 1:
            raise DataError(f"chunk size {self.size}: give a positive number of {self.unit}")
        if not 0 <= self.overlap < self.size:
            raise DataError(f"chunk overlap {self.overlap}: give 0 <= overlap < the chunk size ({self.size})")


@dataclass(frozen=True)
class Chunk:
    file: str  # the file as cited: its path relative to the input folder (or its name)
    doc: str  # the document inside the file: a record's id, or the file itself ("" for a text file)
    start: int  # character offsets of `text` in the document's text
    end: int
    line: int  # 1-based line of the document's text where the chunk starts
    text: str

    def citation(self) -> str:
        """`hamlet_gut.txt, line 1734` (a record of a JSONL file: `data.jsonl, record 7, line 3`)."""
        record = f", record {self.doc}" if self.doc else ""
        return f"{self.file}{record}, line {self.line}"

    def to_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceDocument:
    path: str  # the file on disk
    file: str  # as cited
    doc: str
    text: str


def input_files(inputs: list[str | Path], notice=None) -> list[tuple[Path, str, str]]:
    """(file, name as cited, format) of every readable file of the inputs (files or folders), in order, each
    file once (by its resolved path). Inside a folder, hidden paths (.git/, .venv/, .notes.txt) and llmkit
    indexes (an index inside its input folder would index itself) are passed over; files of a type no
    reader takes are counted and reported through notice(message)."""
    files, seen, unsupported, unreadable, links = [], set(), {}, [], []
    for item in inputs:
        root = Path(item)
        if root.is_dir() and is_index(root):
            raise DataError(f"{root}: is an llmkit index, not documents; give the folders of the files to index")
        if not root.is_dir():
            found = expand_input(InputSpec(path=str(root)))  # a file (its format checked) or a missing path
            found = [(path, path.name, fmt) for path, _, fmt in found]
        else:
            found = []
            for folder, dirs, names in os.walk(root, onerror=lambda e: unreadable.append(f"{e.filename} "
                                                                                       f"({e.strerror})")):
                folder = Path(folder)
                links += [str(folder / d) for d in dirs if (folder / d).is_symlink()]  # os.walk does not follow
                dirs[:] = [d for d in dirs if not d.startswith(".") and not is_index(folder / d)]
                for name in names:
                    path = folder / name
                    if name.startswith(".") or not path.is_file():
                        continue
                    fmt = format_of(path)
                    if fmt is None:
                        suffix = path.suffix.lower() or "(no suffix)"
                        unsupported[suffix] = unsupported.get(suffix, 0) + 1
                        continue
                    found.append((path, str(path.relative_to(root)), fmt))
            found.sort(key=lambda f: f[0])
        for path, cited, fmt in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append((path, cited, fmt))
    if notice is not None and unreadable:
        notice(f"cannot read {len(unreadable)} folder(s): {', '.join(unreadable[:3])}; their files are not indexed")
    if notice is not None and links:
        notice(f"skipped {len(links)} linked folder(s) ({', '.join(links[:3])}); give a folder as --input to index it")
    if unsupported and notice is not None:
        notice(f"skipped {sum(unsupported.values())} file(s) of unsupported type ({', '.join(sorted(unsupported))}); "
               "indexed are .txt .md .jsonl[.gz] .parquet .html .warc[.gz]")
    if not files:
        raise DataError(f"no readable files in {', '.join(map(str, inputs))} (.txt .md .jsonl[.gz] .parquet .html "
                        ".warc[.gz])")
    return files


def file_stamp(path: Path) -> dict:
    """What a file was when it was indexed: its size, modification time and SHA-256 (`changed_since`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": digest.hexdigest()}


def changed_since(record: dict) -> str | None:
    """None when the file of an index's file record is as it was indexed (or the record, from an older
    index, has no stamp); else what changed ("changed", "is missing")."""
    if not isinstance(record.get("size"), int) or not isinstance(record.get("sha256"), str):
        return None
    path = Path(record["path"])
    try:
        status = path.stat()
    except OSError:
        return "is missing"
    if status.st_size != record["size"]:
        return "changed"
    if status.st_mtime_ns == record.get("mtime_ns"):
        return None
    try:
        return None if file_stamp(path)["sha256"] == record["sha256"] else "changed"
    except OSError:
        return "is unreadable"


def check_apart(inputs: list[str | Path], out: str | Path, what: str = "--out") -> None:
    """Refuse an output folder that is, contains or lies inside an input (`data clean`'s rule): replacing
    it would delete the documents, or the next run would read the index as input."""
    clash = overlapping_input(out, inputs)
    if clash is not None:
        raise DataError(f"{what} {out}: overlaps the input {clash} (it would be replaced, or read as a document); "
                        f"choose {what} outside the inputs")


def read_documents(path: Path, cited: str, fmt: str, text_field: str = "text") -> Iterator[SourceDocument]:
    """The documents of one file, their text as the clean readers give it (HTML: its main text)."""
    part = FilePart(path=str(path), rel=cited, format=fmt, source="rag", text_field=text_field)
    extract = None
    for document in read_part(part, bad_hint=RAG_BAD_HINT):
        if document.html is not None:
            if extract is None:
                from llmkit.data.clean.normalize import Extract, ExtractConfig

                extract = Extract(ExtractConfig())
            if isinstance(extract(document), Rejection):  # no main text on the page
                continue
        yield SourceDocument(str(path), cited, document_name(document, cited, fmt), document.text)


def document_name(document: Document, cited: str, fmt: str) -> str:
    """How a citation names a document inside its file: nothing for a file that is one document; a
    record's id (or "@BYTE", its offset in a JSONL file without ids); a WARC record's URL."""
    if fmt in ("text", "html"):
        return ""
    if fmt == "warc":
        return document.meta.get("url") or document.id
    return "@" + document.id.split("@", 1)[1] if document.id.startswith(f"{cited}@") else document.id


def char_spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `size` characters covering `text`, neighbours sharing about `overlap`.
    An end moves back to just after the last newline (else space) in the window's second half. A start
    moves back to the beginning of its line when that stays in the window's last three quarters (the
    overlap then grows by less than a line: a citation's line number is where the passage begins), else
    forward to just after a space, so chunks hold whole lines (words) where the text allows."""
    spans, start, n = [], 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            for sep in ("\n", " "):
                cut = text.rfind(sep, start + size // 2, end)
                if cut != -1:
                    end = cut + 1
                    break
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        line_start = text.rfind("\n", start, nxt) + 1
        if line_start > start + size // 4:
            nxt = line_start
        else:
            cut = text.find(" ", nxt, end)
            if cut != -1 and cut + 1 < end:
                nxt = cut + 1
        start = nxt
    return spans


def token_spans(text: str, tokenizer, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) character spans of windows of `size` tokens (stride size - overlap), from the
    tokenizer's own offsets: each chunk then embeds without truncation in a model of that context."""
    offsets = tokenizer.backend.encode(text, add_special_tokens=False).offsets
    spans = []
    for first in range(0, len(offsets), size - overlap):
        last = min(first + size, len(offsets)) - 1
        spans.append((offsets[first][0], offsets[last][1]))
        if last == len(offsets) - 1:
            break
    return spans


def chunk_document(document: SourceDocument, config: ChunkingConfig, tokenizer=None) -> list[Chunk]:
    text = document.text
    if config.unit == "tokens":
        if tokenizer is None:
            raise DataError("chunks measured in tokens need a tokenizer: give --model (or chunk in characters)")
        spans = token_spans(text, tokenizer, config.size, config.overlap)
    else:
        spans = char_spans(text, config.size, config.overlap)
    chunks, line, counted = [], 1, 0
    for start, end in spans:
        line += text.count("\n", counted, start)
        counted = start
        if text[start:end].strip():
            chunks.append(Chunk(document.file, document.doc, start, end, line, text[start:end]))
    return chunks


def chunk_inputs(inputs: list[str | Path], config: ChunkingConfig, tokenizer=None, known: dict | None = None,
                 notice=None) -> tuple[list[Chunk], list[dict]]:
    """(chunks of every document of every input file, one record per file: path, name, format, chunks and
    its stamp: size, mtime_ns, sha256). Files whose resolved path is a key of `known` (an index's file
    records by path) are passed over, and counted through notice(message), a changed one by name."""
    chunks, files, again, changed = [], [], 0, []
    for path, cited, fmt in input_files(inputs, notice):
        if known and str(path.resolve()) in known:
            again += 1
            if changed_since(known[str(path.resolve())]) is not None:
                changed.append(cited)
            continue
        before = len(chunks)
        stamp = file_stamp(path)
        for document in read_documents(path, cited, fmt, config.text_field):
            chunks += chunk_document(document, config, tokenizer)
        files.append({"path": str(path.resolve()), "file": cited, "format": fmt, "chunks": len(chunks) - before,
                      **stamp})
    if again and not files:
        raise AlreadyIndexed(f"{', '.join(map(str, inputs))}: all {again} file(s) are already in the index, nothing "
                             "new to add" + (f" ({', '.join(changed[:5])} changed since; rebuild the index with "
                                             "llmkit rag index --overwrite to re-index a changed file)" if changed
                                             else ""))
    if again and notice is not None:
        notice(f"skipped {again} file(s) already in the index" + (
            f"; changed since they were indexed: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} "
            "(rebuild the index with llmkit rag index to re-index them)" if changed else ""))
    if files and not chunks:
        raise DataError(f"{', '.join(map(str, inputs))}: no text to index (the files are empty)")
    return chunks, files
