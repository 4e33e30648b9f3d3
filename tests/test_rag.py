"""Retrieval: chunks point at their source, each retriever finds a planted passage, an index survives a
round trip and an incremental add equals a full rebuild, bad indexes are one-line errors, and the CLI
indexes and answers with citations."""

import gzip
import json

import numpy as np
import pytest
import torch

from conftest import cli_in_process
from llmkit.rag.chunking import Chunk, ChunkingConfig, char_spans, chunk_inputs, token_spans
from llmkit.rag.embed import ModelEmbedder
from llmkit.rag.index import Hit, RagIndex, RagIndexError, reciprocal_rank_fusion

PLANTED = "The zebra Quillon guards the lighthouse of Vortenmark every winter night."


def verse(n: int, word: str) -> str:
    return "".join(f"{word} line {i}: the quality of mercy is not strained, it droppeth as the rain\n" for i in range(n))


@pytest.fixture(scope="module")
def long_model(tmp_path_factory, shakespeare_tokenizer):
    """A tiny random model with room for a prompt of several passages (1,024 tokens of context)."""
    import llmkit
    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rag-model") / "model"
    config = ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size, max_seq_len=1024)
    save_checkpoint(folder, Transformer(config), shakespeare_tokenizer)
    return folder, llmkit.load(folder, device="cpu")


@pytest.fixture
def corpus(tmp_path):
    """Two folders of text files; the planted sentence is line 57 of b/planted.txt."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "mercy.txt").write_text(verse(80, "mercy"))
    (tmp_path / "a" / "notes.md").write_text(verse(30, "notes"))
    lines = verse(56, "filler") + PLANTED + "\n" + verse(40, "after")
    (tmp_path / "b" / "planted.txt").write_text(lines)
    (tmp_path / "b" / "alone.txt").write_text(PLANTED)
    return tmp_path


def test_chunks_point_at_their_characters_and_lines(tmp_path):
    text = "".join(f"Line {i}, a verse that runs on for a while.\r\n" if i % 7 else "\n" for i in range(300))
    (tmp_path / "crlf.txt").write_bytes(text.encode())
    chunks, files = chunk_inputs([tmp_path / "crlf.txt"], ChunkingConfig(size=500, overlap=100))
    raw = open(tmp_path / "crlf.txt", newline="").read()
    assert raw == text and files[0]["chunks"] == len(chunks) > 5
    for chunk in chunks:
        assert raw[chunk.start:chunk.end] == chunk.text
        assert chunk.line == raw[:chunk.start].count("\n") + 1
        assert len(chunk.text) <= 500 and chunk.citation() == f"crlf.txt, line {chunk.line}"
    for before, after in zip(chunks, chunks[1:]):
        assert 0 < before.end - after.start <= 100 + 45  # neighbours overlap, by `overlap` and less than a line
        assert raw[after.start - 1] == "\n"  # and a chunk starts at the beginning of a line
    covered = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, c in enumerate(raw) if not c.isspace())


def test_char_spans_end_at_line_breaks_and_always_advance():
    text = "word " * 1000
    spans = char_spans(text, 64, 16)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b[0] > a[0] for a, b in zip(spans, spans[1:]))
    assert char_spans("x" * 1000, 100, 99)[-1][1] == 1000  # no separator at all: fixed windows still end
    lines = "\n".join("a line of verse" for _ in range(100))
    assert all(lines[end - 1] == "\n" for _, end in char_spans(lines, 100, 20)[:-1])


def test_token_chunks_hold_at_most_the_asked_tokens(shakespeare_tokenizer):
    text = verse(40, "token")
    spans = token_spans(text, shakespeare_tokenizer, 50, 10)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for start, end in spans:
        assert len(shakespeare_tokenizer.encode(text[start:end])) <= 51  # a BPE boundary may merge differently


def test_every_clean_format_is_chunked(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"text": "first record about owls", "id": "r1"}, {"text": "second record about " + PLANTED}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gzip.open(tmp_path / "packed.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gzipped record about hedgehogs", "id": "g"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet row about badgers"], "id": ["p7"]}), tmp_path / "rows.parquet")
    (tmp_path / "page.html").write_text("<html><body><article><h1>Lighthouses</h1><p>" + PLANTED * 3 +
                                        "</p><p>Keepers kept the lamps lit through the storms of the coast.</p>"
                                        "</article></body></html>")
    chunks, files = chunk_inputs([tmp_path], ChunkingConfig(size=200, overlap=20))
    by_file = {c.file: c for c in chunks}
    assert {f["format"] for f in files} == {"jsonl", "parquet", "html"}
    assert [c.doc for c in chunks if c.file == "data.jsonl"][0] == "r1" and by_file["packed.jsonl.gz"].doc == "g"
    assert by_file["rows.parquet"].doc == "p7" and "badgers" in by_file["rows.parquet"].text
    page = [c for c in chunks if c.file == "page.html"]
    assert "Quillon" in page[0].text and "Keepers" in page[-1].text and page[0].doc == ""
    second = [c for c in chunks if c.file == "data.jsonl" and "Quillon" in c.text]
    assert second[0].doc == "@" + str(len(json.dumps(rows[0]).encode()) + 1)  # the record's byte offset
    assert second[0].citation().startswith("data.jsonl, record @")


def test_each_retriever_finds_the_planted_passage(corpus, long_model):
    folder, llm = long_model
    embedder = ModelEmbedder(llm.model, llm.tokenizer, str(folder))
    index = RagIndex.build([corpus / "a", corpus / "b"], ChunkingConfig(size=400, overlap=80), embedder)
    hits = index.search("Who guards the lighthouse of Vortenmark?", k=3, mode="bm25")
    assert {h.chunk.file for h in hits[:2]} == {"planted.txt", "alone.txt"}
    # A random model's vectors find a text by itself: the chunk that is exactly the query ranks first.
    for mode in ("dense", "hybrid"):
        top = index.search(PLANTED, k=3, mode=mode, embedder=embedder)[0]
        assert top.chunk.file == "alone.txt" and top.chunk.text == PLANTED, mode
    assert index.search(PLANTED, k=1, mode="dense", embedder=embedder)[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.search("nothing here matches xyzzy", k=3, mode="bm25") == []


def test_citations_point_at_the_file_line_and_offsets(corpus):
    index = RagIndex.build([corpus / "b"], ChunkingConfig(size=300, overlap=60))
    hit = next(h for h in index.search("Vortenmark lighthouse zebra", k=5, mode="bm25") if h.chunk.file == "planted.txt")
    raw = (corpus / "b" / "planted.txt").read_text()
    assert raw[hit.chunk.start:hit.chunk.end] == hit.chunk.text and PLANTED in hit.chunk.text
    lines = raw.split("\n")
    assert lines[hit.chunk.line - 1] == hit.chunk.text.split("\n")[0]
    planted_line = lines.index(PLANTED) + 1
    assert planted_line == 57 and hit.chunk.line <= planted_line < hit.chunk.line + hit.chunk.text.count("\n") + 1


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([[(7, 9.0), (3, 5.0)], [(3, 0.9), (8, 0.8), (7, 0.1)]])
    scores = dict(fused)
    assert scores[3] == pytest.approx(1 / 62 + 1 / 61) and scores[7] == pytest.approx(1 / 61 + 1 / 63)
    assert [row for row, _ in fused] == [3, 7, 8]


def test_round_trip_and_incremental_add_equal_a_full_rebuild(corpus, long_model, tmp_path):
    folder, llm = long_model
    embedder = ModelEmbedder(llm.model, llm.tokenizer, str(folder))
    config = ChunkingConfig(size=300, overlap=50)
    RagIndex.build([corpus / "a"], config, embedder).save(tmp_path / "two-steps")
    loaded = RagIndex.load(tmp_path / "two-steps")
    assert isinstance(loaded.embeddings, np.memmap)
    loaded.add([corpus / "b"], embedder).save(tmp_path / "two-steps")
    stepwise = RagIndex.load(tmp_path / "two-steps")
    whole = RagIndex.build([corpus / "a", corpus / "b"], config, embedder)
    assert stepwise.chunks == whole.chunks and stepwise.meta == whole.meta
    np.testing.assert_allclose(stepwise.embeddings, whole.embeddings, atol=1e-5)
    for key in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(stepwise.bm25.retriever.scores[key], whole.bm25.retriever.scores[key])
    for query in ("quality of mercy", PLANTED, "notes line 3"):
        for mode in ("bm25", "hybrid"):
            assert [h.row for h in stepwise.search(query, 5, mode, embedder)] == \
                   [h.row for h in whole.search(query, 5, mode, embedder)]
    with pytest.raises(RagIndexError, match="already in the index"):
        stepwise.add([corpus / "b" / "alone.txt"], embedder)


def test_embeddings_batched_equal_one_by_one(long_model):
    from llmkit.serve.model_jobs import embed

    folder, llm = long_model
    embedder = ModelEmbedder(llm.model, llm.tokenizer, str(folder), batch_tokens=256)
    texts = ["short", PLANTED, verse(3, "batch"), "a middling sentence of some words"]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    ids = [llm.tokenizer.bos_id] + llm.tokenizer.encode(PLANTED)
    np.testing.assert_allclose(embed(llm.model, ids, skip_first=True), together[1], atol=1e-5)


def test_a_bad_index_is_a_one_line_error(corpus, tmp_path):
    RagIndex.build([corpus / "b"], ChunkingConfig(size=300, overlap=50)).save(tmp_path / "index")
    with pytest.raises(RagIndexError, match="no such index"):
        RagIndex.load(tmp_path / "missing")
    chunks = (tmp_path / "index" / "chunks.jsonl").read_text().splitlines()
    (tmp_path / "index" / "chunks.jsonl").write_text("\n".join(chunks[:-1]) + "\n")
    with pytest.raises(RagIndexError, match="holds .* chunks, index.json says"):
        RagIndex.load(tmp_path / "index")
    (tmp_path / "index" / "chunks.jsonl").write_text("{broken\n")
    with pytest.raises(RagIndexError, match="line 1: not a chunk record"):
        RagIndex.load(tmp_path / "index")
    (tmp_path / "index" / "index.json").write_text("{")
    result = cli_in_process("rag", "search", tmp_path / "index", "zebra")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not valid JSON" in result.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n\n")
    result = cli_in_process("rag", "index", "--input", tmp_path / "empty", "--out", tmp_path / "none")
    assert result.returncode == 2 and "no text to index" in result.stderr and not (tmp_path / "none").exists()


def test_missing_bm25s_names_the_extra(monkeypatch):
    import sys

    from llmkit.rag.lexical import BM25Index, MissingRagExtraError

    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(MissingRagExtraError, match=r"pip install 'llmkit\[rag\]'"):
        BM25Index.build(["some text"])


def test_cli_indexes_and_answers_with_citations(corpus, long_model, tmp_path):
    folder, _ = long_model
    out = tmp_path / "index"
    result = cli_in_process("rag", "index", "--input", corpus / "b", "--out", out, "--model", folder,
                            "--chunk-chars", "300", "--overlap", "50")
    assert result.returncode == 0, result.stderr
    assert "BM25 + dense vectors" in result.stdout and (out / "embeddings.npy").is_file()
    result = cli_in_process("rag", "ask", out, "Who guards the lighthouse of Vortenmark?", "--model", folder,
                            "--k", "2", "--mode", "bm25", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    sources = result.stdout.split("Sources:\n", 1)[1].splitlines()
    assert any(line.startswith("[") and "alone.txt, line 1" in line for line in sources)
    assert any("planted.txt, line " in line for line in sources)
    result = cli_in_process("rag", "add", out, "--input", corpus / "a")
    assert result.returncode == 0, result.stderr
    assert len(RagIndex.load(out).meta["files"]) == 4
    result = cli_in_process("rag", "ask", tmp_path / "nowhere", "q", "--model", folder)
    assert result.returncode == 2 and "no such index" in result.stderr


def test_answer_keeps_the_passages_that_fit(long_model):
    from llmkit.rag.answer import RagAnswer, fitting_messages

    _, llm = long_model
    hits = [Hit(i + 1, i, Chunk("f.txt", "", 0, 10, 1 + 10 * i, verse(12, f"p{i}")), 1.0) for i in range(8)]
    messages, kept = fitting_messages(llm, "Which passage?", hits, max_new_tokens=64)
    assert 0 < len(kept) < 8 and kept == hits[:len(kept)]
    assert len(llm.tokenizer.encode_chat(messages)) + 64 <= llm.model.config.max_seq_len
    answer = RagAnswer("q", "It is in [2], see also [9] and [2] and [1].", hits[:3])
    assert answer.cited == [2, 1] and answer.sources() == ["[2] f.txt, line 11", "[1] f.txt, line 1"]
