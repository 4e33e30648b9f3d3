"""Retrieval on awkward input: line separators inside documents, an --out that overlaps the inputs, files
named twice, hidden folders and unsupported files, damaged or hand-edited indexes (one line each, never a
traceback or silently nothing), empty and unmatched queries, files changed since they were indexed, and
the calculator's depth, message and underflow limits."""

import json
import os

import numpy as np
import pytest

from conftest import cli_in_process
from llmkit.rag.calculator import CalculatorError, calculate
from llmkit.rag.chunking import ChunkingConfig
from llmkit.rag.index import RagIndex, RagIndexError

CONFIG = ChunkingConfig(size=200, overlap=40)


def small_index(tmp_path, name="index"):
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "walrus.txt").write_text("".join(f"walruses bask on line {i} of the shore\n" for i in range(30)))
    (docs / "zebra.md").write_text("zebras graze by the lighthouse\n" * 5)
    RagIndex.build([docs], CONFIG).save(tmp_path / name)
    return docs, tmp_path / name


def one_line_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_line_separators_inside_a_document_keep_the_index_readable(tmp_path):
    (tmp_path / "d").mkdir()
    text = "zebras\u2028live here\u2029and there\x85and\x1cfar\nwalruses too\n"
    (tmp_path / "d" / "a.txt").write_text(text, encoding="utf-8")
    RagIndex.build([tmp_path / "d"], CONFIG).save(tmp_path / "index")
    index = RagIndex.load(tmp_path / "index")
    assert [c.text for c in index.chunks] == [text]
    assert index.search("walruses", 3)[0].chunk.text == text


def test_an_out_overlapping_the_inputs_is_refused_and_deletes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "n.txt").write_text("precious notes\n")
    for args in (["--input", src, "--out", src], ["--input", src / "n.txt", "--out", src],
                 ["--input", src, "--out", src / "idx"], ["--input", tmp_path, "--out", src]):
        one_line_error(cli_in_process("rag", "index", *args, "--overwrite"), "overlaps the input")
        assert (src / "n.txt").read_text() == "precious notes\n" and not (src / "idx").exists()
    with pytest.raises(RagIndexError, match="inside the index folder"):  # the library's own net
        RagIndex.build([src], CONFIG).save(src, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["n.txt"]
    _, index = small_index(tmp_path)
    (index / "mine.txt").write_text("notes kept in the index folder\n")
    one_line_error(cli_in_process("rag", "add", index, "--input", index / "mine.txt"), "is inside the index")
    assert (index / "mine.txt").is_file()


def test_a_file_is_indexed_once_and_an_index_never_indexes_itself(tmp_path):
    docs, _ = small_index(tmp_path)
    index = RagIndex.build([docs, docs / "walrus.txt", docs / ".." / "docs"], CONFIG)
    assert [f["file"] for f in index.meta["files"]] == ["walrus.txt", "zebra.md"]
    assert len({h.chunk for h in index.search("walruses", 10)}) == len(index.search("walruses", 10))
    RagIndex.build([docs], CONFIG).save(docs / "inner.idx")  # the library allows it; the next build skips it
    again = RagIndex.build([docs], CONFIG)
    assert [f["file"] for f in again.meta["files"]] == ["walrus.txt", "zebra.md"]
    added = RagIndex.load(docs / "inner.idx")
    (docs / "new.txt").write_text("narwhals in the fjord\n")
    assert [f["file"] for f in added.add([docs], notice=lambda m: None).meta["files"]] == \
           ["walrus.txt", "zebra.md", "new.txt"]


def test_hidden_folders_are_skipped_and_unsupported_files_reported(tmp_path):
    docs = tmp_path / "docs"
    for folder in (".git", ".venv/lib", "sub"):
        (docs / folder).mkdir(parents=True)
    (docs / ".git" / "HEAD.txt").write_text("ref walruses\n")
    (docs / ".venv" / "lib" / "README.md").write_text("walruses vendored\n")
    (docs / ".draft.txt").write_text("walruses draft\n")
    (docs / "sub" / "ok.txt").write_text("walruses proper\n")
    (docs / "paper.pdf").write_bytes(b"%PDF-1.4")
    (docs / "guide.rst").write_text("walruses rst\n")
    (docs / "more.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.txt").write_text("walruses linked\n")
    (docs / "link").symlink_to(tmp_path / "elsewhere")  # not followed: said, not silently passed over
    result = cli_in_process("rag", "index", "--input", docs, "--out", tmp_path / "index")
    assert result.returncode == 0, result.stderr
    assert "skipped 3 file(s) of unsupported type (.pdf, .rst)" in result.stderr
    assert f"skipped 1 linked folder(s) ({docs / 'link'})" in result.stderr
    assert [f["file"] for f in RagIndex.load(tmp_path / "index").meta["files"]] == [os.path.join("sub", "ok.txt")]


def _write_json(path, edit):
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _write_npy(path, change):
    np.save(path, change(np.load(path)), allow_pickle=False)


DAMAGE = {
    "vocab a list": lambda i: (i / "bm25" / "vocab.index.json").write_text('["a"]'),
    "vocab id too large": lambda i: _write_json(i / "bm25" / "vocab.index.json",
                                                lambda v: v.update(walruses=10 ** 6)),
    "vocab id not a number": lambda i: _write_json(i / "bm25" / "vocab.index.json",
                                                   lambda v: v.update(walruses="7")),
    "indptr short": lambda i: _write_npy(i / "bm25" / "indptr.csc.index.npy", lambda a: a[:-2]),
    "indices out of range": lambda i: _write_npy(i / "bm25" / "indices.csc.index.npy", lambda a: a + 1000),
    "data integer": lambda i: _write_npy(i / "bm25" / "data.csc.index.npy", lambda a: a.astype(np.int32)),
    "num_docs text": lambda i: _write_json(i / "bm25" / "params.index.json", lambda p: p.update(num_docs="x")),
    "params a list": lambda i: (i / "bm25" / "params.index.json").write_text("[1]"),
    "chunk text a number": lambda i: (i / "chunks.jsonl").write_text(
        "".join(json.dumps({**json.loads(line), "text": 5}) + "\n"
                for line in (i / "chunks.jsonl").read_text().splitlines())),
    "chunk line zero": lambda i: (i / "chunks.jsonl").write_text(
        "".join(json.dumps({**json.loads(line), "line": 0}) + "\n"
                for line in (i / "chunks.jsonl").read_text().splitlines())),
    "chunk size negative": lambda i: _write_json(i / "index.json", lambda m: m["chunking"].update(size=-5)),
    "first_chunk text": lambda i: _write_json(i / "index.json", lambda m: m["files"][1].update(first_chunk="x")),
    "first_chunk wrong": lambda i: _write_json(i / "index.json", lambda m: m["files"][1].update(first_chunk=0)),
    "chunks negative": lambda i: _write_json(i / "index.json", lambda m: m.update(chunks=-1)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_index_is_one_line_naming_the_file(tmp_path, damage):
    _, index = small_index(tmp_path)
    DAMAGE[damage](index)
    result = cli_in_process("rag", "search", index, "walruses lighthouse")
    one_line_error(result, str(index), "rebuild")
    if damage != "chunks negative":  # that one is caught by the count check that was already there
        assert "damaged" in result.stderr


def test_empty_and_unmatched_queries_are_answered(tmp_path):
    _, index = small_index(tmp_path)
    one_line_error(cli_in_process("rag", "search", index, "  "), "query is empty")
    one_line_error(cli_in_process("rag", "ask", index, "", "--model", tmp_path / "no-model"), "question is empty")
    result = cli_in_process("rag", "search", index, "quokka")
    assert result.returncode == 0 and "no chunk matches 'quokka'" in result.stdout


def test_add_skips_files_already_indexed_and_search_warns_of_changed_ones(tmp_path):
    docs, index = small_index(tmp_path)
    record = RagIndex.load(index).meta["files"][0]
    assert record["size"] == (docs / "walrus.txt").stat().st_size and len(record["sha256"]) == 64
    (docs / "new.txt").write_text("narwhals in the fjord\n")
    result = cli_in_process("rag", "add", index, "--input", docs)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 file(s) already in the index" in result.stderr
    assert [f["file"] for f in RagIndex.load(index).meta["files"]] == ["walrus.txt", "zebra.md", "new.txt"]
    one_line_error(cli_in_process("rag", "add", index, "--input", docs), "nothing new to add")
    result = cli_in_process("rag", "search", index, "walruses")
    assert result.returncode == 0 and "changed since" not in result.stderr
    os.utime(docs / "walrus.txt", ns=(1, 1))  # touched, same bytes: not a change
    assert "changed since" not in cli_in_process("rag", "search", index, "walruses").stderr
    (docs / "walrus.txt").write_text("a new first line\n" + (docs / "walrus.txt").read_text())
    result = cli_in_process("rag", "search", index, "walruses")
    assert result.returncode == 0 and result.stderr.count("changed since it was indexed") == 1
    assert str((docs / "walrus.txt").resolve()) in result.stderr
    assert "changed since" not in cli_in_process("rag", "search", index, "narwhals").stderr
    _write_json(index / "index.json", lambda m: [f.pop(k) for f in m["files"] for k in ("size", "mtime_ns", "sha256")])
    result = cli_in_process("rag", "search", index, "walruses")  # an index older than the stamps: no warning
    assert result.returncode == 0 and "changed since" not in result.stderr


def test_calculator_chains_are_not_nesting_and_messages_stay_short():
    assert calculate("+".join(["1"] * 200)) == "200"
    assert calculate("*".join(["2"] * 100)) == str(2 ** 100)
    assert calculate("100 - 1 - 1 - 1 " + "- 1" * 60) == "37"
    assert calculate("(" * 60 + "1" + "+1)" * 60) == "61"  # ((1+1)+1)...: the same chain, parenthesised
    with pytest.raises(CalculatorError, match="nests more than 50"):
        calculate("1+(" * 60 + "1" + ")" * 60)  # real nesting is still bounded
    with pytest.raises(CalculatorError, match="nests more than 50"):
        calculate("-" * 60 + "1")
    with pytest.raises(CalculatorError) as error:
        calculate("2**3**4**5")
    assert len(str(error.value)) < 150 and "489 digits" in str(error.value)


@pytest.mark.parametrize("expression", ["10**-10000", "1e-999", "1e-200 * 1e-200", "1 / 10**400", "0.1 ** 1000",
                                        "1e-320"])
def test_calculator_refuses_an_underflow_rather_than_answer_zero(expression):
    with pytest.raises(CalculatorError, match="too small"):
        calculate(expression)


def test_calculator_small_and_zero_results_stay_exact():
    assert calculate("1e-300") == "1e-300" and calculate("0.0 * 5") == "0" and calculate("0e5") == "0"
    assert calculate("1e-300 - 1e-300") == "0" and calculate("5 % 5") == "0"
