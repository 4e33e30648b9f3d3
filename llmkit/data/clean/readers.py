"""Readers: text files, JSONL (plain or gzip), Parquet, HTML files and WARC archives -> Documents.

The input is cut into tasks of about `task_mb` each: small files are grouped into one task, a large
plain JSONL file is split at byte offsets (a line belongs to the part where it starts), a large Parquet
file at row groups. Every reader streams: memory does not grow with the size of a file.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.data.clean.shared import InputSpec, import_extra
from llmkit.data.clean.document import Document
from llmkit.errors import DataError

FORMATS = {
    ".txt": "text", ".md": "text",
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".html": "html", ".htm": "html",
    ".warc": "warc", ".warc.gz": "warc", ".wet": "warc", ".wet.gz": "warc",
}


# The package of the `clean` extra each format's reader needs (text, JSONL and HTML files need none).
FORMAT_PACKAGES = {"parquet": "pyarrow", "warc": "warcio"}


def format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


@dataclass(frozen=True)
class FilePart:
    path: str
    rel: str  # the path relative to its input, for document ids
    format: str
    source: str
    text_field: str = "text"
    id_field: str = "id"
    start: int = 0  # JSONL: byte offset; Parquet: first row group
    end: int = -1  # JSONL: byte offset (exclusive); Parquet: last row group (exclusive); -1 = to the end


@dataclass(frozen=True)
class ReadTask:
    index: int
    parts: tuple[FilePart, ...]
    nbytes: int  # the estimated uncompressed input, for grouping and progress


def visible_files(root: Path) -> list[Path]:
    """The files under folder `root`, sorted, hidden paths left out: .git/, .venv/, .notes.txt are not
    documents (as `llmkit rag index` passes them over), nor is a data clean output's unfinished `.work/`."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def expand_input(spec: InputSpec) -> list[tuple[Path, str, str]]:
    """(file, path relative to the input, format) for every readable file of an input, sorted."""
    root = Path(spec.path)
    if root.is_dir():
        files = visible_files(root)
        if spec.format == "auto":
            files = [p for p in files if format_of(p) is not None]
        if not files:
            raise DataError(f"{root}: no readable files (.txt .md .jsonl[.gz] .parquet .html .warc[.gz]); "
                            "check the path or set `format:`")
        out = [(p, str(p.relative_to(root)), spec.format if spec.format != "auto" else format_of(p)) for p in files]
    elif root.is_file():
        fmt = spec.format if spec.format != "auto" else format_of(root)
        if fmt is None:
            raise DataError(f"{root}: unknown file type; use .txt .md .jsonl[.gz] .parquet .html .warc[.gz] "
                            "or set `format:` on the input")
        out = [(root, root.name, fmt)]
    else:
        raise DataError(f"{root}: no such file or directory")
    for path, _, fmt in out:
        if fmt not in ("text", "jsonl", "parquet", "html", "warc"):
            raise DataError(f"{path}: unknown format {fmt!r}; use text, jsonl, parquet, html or warc")
    return out


def plan_tasks(inputs: list[InputSpec], task_mb: float) -> list[ReadTask]:
    """Cut the inputs into tasks of about `task_mb` MB, in input order (which fixes document order)."""
    if not inputs:
        raise DataError("no inputs: pass --input PATH (or NAME=PATH), or list `inputs:` in the pipeline YAML")
    target = max(1, int(task_mb * 1e6))
    tasks: list[ReadTask] = []
    group: list[FilePart] = []
    group_bytes = 0

    def flush():
        nonlocal group, group_bytes
        if group:
            tasks.append(ReadTask(len(tasks), tuple(group), group_bytes))
        group, group_bytes = [], 0

    for spec in inputs:
        for path, rel, fmt in expand_input(spec):
            size = path.stat().st_size
            base = dict(path=str(path), rel=rel, format=fmt, source=spec.source,
                        text_field=spec.text_field, id_field=spec.id_field)
            pieces = _split(path, fmt, size, target)
            if len(pieces) > 1:
                flush()
                for start, end, nbytes in pieces:
                    tasks.append(ReadTask(len(tasks), (FilePart(**base, start=start, end=end),), nbytes))
                continue
            # Group by the work a file holds: gzip (WARC, JSONL) typically inflates ~4x.
            weight = size * 4 if path.name.endswith(".gz") else size
            if group and group_bytes + weight > target:
                flush()
            group.append(FilePart(**base))
            group_bytes += weight
        flush()  # tasks never mix sources, so a source's documents stay together
    return tasks


def _split(path: Path, fmt: str, size: int, target: int) -> list[tuple[int, int, int]]:
    if fmt == "jsonl" and not path.name.endswith(".gz") and size > target:
        n = -(-size // target)
        cuts = [size * i // n for i in range(n + 1)]
        return [(cuts[i], cuts[i + 1], cuts[i + 1] - cuts[i]) for i in range(n)]
    if fmt == "parquet" and size > target:
        meta = _parquet_file(str(path)).metadata
        pieces, start, acc = [], 0, 0
        for g in range(meta.num_row_groups):
            acc += meta.row_group(g).total_byte_size
            if acc >= target:
                pieces.append((start, g + 1, acc))
                start, acc = g + 1, 0
        if start < meta.num_row_groups:
            pieces.append((start, meta.num_row_groups, acc))
        return pieces
    return [(0, -1, size)]


# What a bad record's error (a malformed JSONL line, a null Parquet text) tells the user to do;
# `llmkit data prepare` passes its own flags.
PIPELINE_BAD_HINT = "fix the record, set text_field on the input, or set `skip_bad_records: true` in the pipeline YAML"


def read_part(part: FilePart, skip_bad: bool = False, bad_counter: list | None = None,
              bad_hint: str = PIPELINE_BAD_HINT) -> Iterator[Document]:
    """The documents of one file part. With skip_bad, a malformed record is skipped and counted in
    bad_counter (one item per record) instead of raising a DataError that ends with bad_hint."""
    if part.format in ("jsonl", "parquet"):
        reader = _read_jsonl if part.format == "jsonl" else _read_parquet
        yield from reader(part, skip_bad, bad_counter, bad_hint)
        return
    reader = {"text": _read_text, "html": _read_html, "warc": _read_warc}[part.format]
    yield from reader(part, skip_bad, bad_counter)


def _decode(data: bytes, path: str, what: str = "file") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start}: the {what} is not UTF-8; convert it (iconv -t UTF-8)") from None


def _read_text(part: FilePart, skip_bad, bad_counter) -> Iterator[Document]:
    # A byte-order mark is the file's encoding signature, not text (as JSONL lines are read by json).
    text = _decode(Path(part.path).read_bytes(), part.path).removeprefix("\ufeff")
    yield Document(text=text, id=f"{part.source}/{part.rel}", source=part.source)


def _read_html(part: FilePart, skip_bad, bad_counter) -> Iterator[Document]:
    yield Document(text="", html=decode_html(Path(part.path).read_bytes()), id=f"{part.source}/{part.rel}",
                   source=part.source)


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)


def decode_html(data: bytes, declared: str | None = None) -> str:
    """An HTML page's bytes as text: in the charset its HTTP header declares; else UTF-8 if the bytes are
    valid UTF-8; else the charset of its `<meta charset>` / `<meta http-equiv content="...charset=">` (in
    the first 4 KB, where the HTML standard's prescan looks); else the guess of trafilatura's detector.
    Decoding a Latin-1 or Windows-1252 page as UTF-8 would turn every accented letter into U+FFFD."""
    if declared:
        try:
            return data.decode(declared, errors="replace")
        except LookupError:  # an unknown charset name in the header: as if none were given
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    match = _META_CHARSET.search(data[:4096])
    if match:
        try:
            return data.decode(match.group(1).decode("ascii"), errors="replace")
        except LookupError:
            pass
    try:
        from trafilatura.utils import decode_file
    except ImportError:  # without the extract stage's package: UTF-8, marking what it cannot read
        return data.decode("utf-8", errors="replace")
    return decode_file(data)


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte `offset` (only computed for an error message)."""
    count = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count + 1


def _parquet_file(path: str):
    pq = import_extra("pyarrow.parquet", "reading Parquet")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ... for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e}); check the file or its format") from None


def _read_jsonl(part: FilePart, skip_bad, bad_counter, bad_hint) -> Iterator[Document]:
    where = [0]  # the line being read, for the message when the gzip stream breaks
    try:
        yield from _read_jsonl_lines(part, skip_bad, bad_counter, bad_hint, where)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a truncated .gz: EOFError
        what = "not a readable gzip file" if part.path.endswith(".gz") else "unreadable"
        raise DataError(f"{part.path}: {what} after line {where[0]} ({e or type(e).__name__}); "
                        "check or re-download the file") from None


def jsonl_record(raw: bytes, text_field: str) -> tuple[dict, str]:
    """One JSONL line -> (its object, its text field); a ValueError says what is wrong with the line."""
    try:
        record = json.loads(raw)  # bytes: json detects UTF-8; invalid UTF-8 is a UnicodeDecodeError (a ValueError)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"byte {e.start} of the line is not valid utf-8") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    if text_field not in record:
        raise ValueError(f"no field {text_field!r} (fields: {', '.join(sorted(record)) or 'none'})")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"field {text_field!r} is {type(text).__name__}, not a string")
    return record, text


def _read_jsonl_lines(part: FilePart, skip_bad, bad_counter, bad_hint, where) -> Iterator[Document]:
    opener = gzip.open if part.path.endswith(".gz") else open
    with opener(part.path, "rb") as f:
        offset = 0
        if part.start > 0:
            f.seek(part.start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that straddles the cut belongs to the previous part
            offset = f.tell()
        index = 0
        while part.end < 0 or offset < part.end:
            where[0] = index
            raw = f.readline()
            if not raw:
                break
            line_offset, offset = offset, offset + len(raw)
            index += 1
            if not raw.strip():
                continue
            try:
                record, text = jsonl_record(raw, part.text_field)
            except ValueError as e:
                if skip_bad:
                    if bad_counter is not None:
                        bad_counter.append(1)
                    continue
                line = _line_number(part.path, line_offset) if part.start > 0 else index
                raise DataError(f"{part.path}: line {line}: {e}; {bad_hint}") from None
            doc_id = record.get(part.id_field)
            if doc_id is None:  # the byte offset, which does not depend on how the file was split
                doc_id = f"{part.rel}@{line_offset}"
            meta = {"url": record["url"]} if isinstance(record.get("url"), str) else {}
            yield Document(text=text, id=str(doc_id), source=part.source, meta=meta)


def _read_parquet(part: FilePart, skip_bad, bad_counter, bad_hint) -> Iterator[Document]:
    pf = _parquet_file(part.path)
    names = pf.schema_arrow.names
    if part.text_field not in names:
        raise DataError(f"{part.path}: no column {part.text_field!r} (columns: {', '.join(names)}); "
                        "choose the text column (text_field on the input, --field for `data prepare`)")
    kind = pf.schema_arrow.field(part.text_field).type
    if not _is_text_type(kind):
        raise DataError(f"{part.path}: column {part.text_field!r} holds {kind}, not text; choose a string column "
                        "(text_field on the input, --field for `data prepare`)")
    columns = [part.text_field] + ([part.id_field] if part.id_field in names else [])
    groups = list(range(part.start, part.end if part.end >= 0 else pf.num_row_groups))
    # The row's index in the whole file, not in this part: ids (which decide mixing and the report) must
    # not depend on how task_mb split the file, as a JSONL line's byte offset does not.
    first_row = sum(pf.metadata.row_group(g).num_rows for g in range(part.start))
    row = 0
    for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
        for text, doc_id in zip(texts, ids):
            row += 1
            if text is None:  # a null: a bad record like a malformed JSONL line
                if skip_bad:
                    if bad_counter is not None:
                        bad_counter.append(1)
                    continue
                raise DataError(f"{part.path}: row {row} of row groups {groups[0] if groups else 0}+: column "
                                f"{part.text_field!r} is null; {bad_hint}")
            yield Document(text=text, id=str(doc_id) if doc_id is not None else f"{part.rel}#{first_row + row}",
                           source=part.source)


def _is_text_type(kind) -> bool:
    """string / large_string, string_view (pyarrow >= 16), or dictionary-encoded strings (pandas category)."""
    pa = import_extra("pyarrow", "reading Parquet")
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)


def _read_warc(part: FilePart, skip_bad, bad_counter) -> Iterator[Document]:
    """Response records with an HTML payload (WARC), and text conversion records (WET)."""
    archive = import_extra("warcio.archiveiterator", "reading WARC")
    load_failed = import_extra("warcio.exceptions", "reading WARC").ArchiveLoadFailed
    with open(part.path, "rb") as f:
        try:
            for record in archive.ArchiveIterator(f):
                headers = record.rec_headers
                url = headers.get_header("WARC-Target-URI")
                rid = headers.get_header("WARC-Record-ID") or f"{part.rel}@{record.length}"
                if record.rec_type == "conversion":
                    text = record.content_stream().read().decode("utf-8", errors="replace")
                    yield Document(text=text, id=rid, source=part.source, meta={"url": url} if url else {})
                elif record.rec_type == "response" and record.http_headers is not None:
                    ctype = (record.http_headers.get_header("Content-Type") or "").lower()
                    if "html" not in ctype:
                        continue
                    charset = None
                    if "charset=" in ctype:
                        charset = ctype.split("charset=", 1)[1].split(";")[0].strip().strip("\"'") or None
                    html = decode_html(record.content_stream().read(), charset)
                    yield Document(text="", html=html, id=rid, source=part.source, meta={"url": url} if url else {})
        except load_failed as e:
            raise DataError(f"{part.path}: not a readable WARC archive ({str(e).strip()}); "
                            "check the file or its format") from None


def write_jsonl_line(f: io.BufferedWriter, record: dict) -> None:
    f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
