"""Audit of `llmkit data clean` / `data prepare`: hostile text (control characters, byte-order marks,
legacy charsets), output folders that hold a user's files, ids that must not depend on how the input was
split, names in the mixing config, and rule boundaries checked against the implementations the stages cite."""

import io
import json
import unicodedata

import numpy as np
import pytest

from llmkit.data.clean import InputSpec, config_from_dict, parse_inputs, run_pipeline
from llmkit.data.clean.document import Document
from llmkit.data.clean.filters import FineWeb, FineWebConfig, GopherQuality, GopherQualityConfig
from llmkit.data.clean.normalize import Normalize, NormalizeConfig
from llmkit.data.clean.readers import FilePart, read_part
from llmkit.data.prepare import prepare
from llmkit.errors import ConfigError, DataError

ACUTE = "\u0301"  # a combining mark: "e" + ACUTE is "é" in NFC


def _kept(out) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "train").glob("*.jsonl")) for line in open(f, encoding="utf-8")]


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_normalized_text_is_in_the_documented_form(form):
    # A soft hyphen, zero-width space or NUL between a letter and a combining mark was removed after the
    # Unicode normalisation: "cafe" + SHY + ACUTE came out as the non-NFC "cafe" + ACUTE, whose words
    # ("cafe") differ from those of "café", so exact dedup and the word statistics saw another text.
    normalize = Normalize(NormalizeConfig(form=form))
    for junk in ("\u00ad", "\u200b", "\x00", "\ufeff", "\x7f"):
        out = normalize.normalize(f"Un cafe{junk}{ACUTE} au lait.")
        assert unicodedata.is_normalized(form, out), repr(out)
        assert out == "Un café au lait."


def test_line_breaking_control_characters_keep_words_apart():
    # A form feed (pdftotext's page break), vertical tab, NEL, the record separators and U+2028 end a line;
    # removing them as "control characters" glued the words on either side ("page.Next").
    normalize = Normalize(NormalizeConfig())
    for brk in ("\x0c", "\x0b", "\x85", "\x1c", "\x1d", "\x1e", "\u2028", "\u2029"):
        out = normalize.normalize(f"end of the page.{brk}Next page")
        assert out == "end of the page.\nNext page", (repr(brk), out)
    assert normalize.normalize("unit\x1fseparator") == "unit separator"
    assert normalize.normalize("bell\x07less") == "bellless"  # other control characters still go


def _clean_input(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "One short document."}) + "\n")
    return [InputSpec(str(path), source="in")]


def test_an_out_with_the_users_report_or_work_folder_is_refused_untouched(tmp_path):
    # `report/report.json` or `.work/` by name was taken as proof of an earlier run: the run then replaced
    # the user's train/ and deleted their .work/ folder.
    config = config_from_dict({"stages": ["normalize"]})
    theirs = tmp_path / "theirs"
    (theirs / "report").mkdir(parents=True)
    (theirs / "report" / "report.json").write_text('{"accuracy": 0.9}')
    (theirs / "train").mkdir()
    (theirs / "train" / "data.txt").write_text("precious")
    with pytest.raises(DataError, match="report.json: is not a report of `llmkit data clean`"):
        run_pipeline(config, theirs, inputs=_clean_input(tmp_path), workers=1)
    assert (theirs / "train" / "data.txt").read_text() == "precious"
    assert sorted(p.name for p in theirs.iterdir()) == ["report", "train"]

    work = tmp_path / "work"
    (work / ".work" / "notes").mkdir(parents=True)
    (work / ".work" / "notes" / "todo.txt").write_text("precious")
    with pytest.raises(DataError, match="did not write"):
        run_pipeline(config, work, inputs=_clean_input(tmp_path), workers=1)
    assert (work / ".work" / "notes" / "todo.txt").read_text() == "precious"


def test_the_scratch_of_a_killed_run_is_still_cleared(tmp_path):
    # What kill -9 leaves (with or without the marker of this version) is ours, and the next run clears it.
    config = config_from_dict({"stages": ["normalize", "exact_dedup"]})
    out = tmp_path / "out"
    run_pipeline(config, out, inputs=_clean_input(tmp_path), workers=1)
    for leftovers in (["output/train", "p1-00000.jsonl", "sig-00000.meta.npy", ".drop-00000.npy.tmp-123"],
                      ["llmkit-data-clean", "output"]):
        for name in leftovers:
            path = out / ".work" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if "." not in name and name != "llmkit-data-clean" else path.touch()
        assert run_pipeline(config, out, inputs=_clean_input(tmp_path), workers=1)["output"]["train_docs"] == 1
        assert not (out / ".work").exists()


def test_a_second_run_into_an_output_being_written_is_refused(tmp_path):
    # There was no lock: the second run took the first's .work (our marker in it) for a killed run's scratch
    # and deleted it under the running one.
    import fcntl
    import os

    config = config_from_dict({"stages": ["normalize"]})
    out = tmp_path / "out"
    run_pipeline(config, out, inputs=_clean_input(tmp_path), workers=1)
    (out / ".work" / "output").mkdir(parents=True)  # a run in progress: its scratch, and its lock on OUT
    (out / ".work" / "llmkit-data-clean").touch()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(DataError, match="another `llmkit data clean` is writing this output now"):
            run_pipeline(config, out, inputs=_clean_input(tmp_path), workers=1)
        assert (out / ".work" / "llmkit-data-clean").exists()
    finally:
        os.close(fd)
    assert run_pipeline(config, out, inputs=_clean_input(tmp_path), workers=1)["output"]["train_docs"] == 1
    assert not (out / ".work").exists()
    fd = os.open(out, os.O_RDONLY)  # and the run released its lock
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_parquet_ids_do_not_depend_on_task_mb(tmp_path):
    # The id of a row without an id column was "file#FIRST_ROW_GROUP_OF_THE_TASK:ROW_IN_THE_TASK": another
    # task_mb gave the same rows other ids, and so other mixing draws (a hash of the id) in a rerun.
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    texts = [f"document {i} " + "with some filler words " * 40 for i in range(300)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "rows.parquet", row_group_size=50)
    ids = []
    for task_mb in (64, 0.01):
        config = config_from_dict({"task_mb": task_mb, "stages": ["normalize"]})
        out = tmp_path / f"out-{task_mb}"
        run_pipeline(config, out, inputs=[InputSpec(str(tmp_path / "rows.parquet"))], workers=1)
        ids.append([d["id"] for d in _kept(out)])
    assert ids[0] == ids[1] and len(set(ids[0])) == 300
    assert ids[0][:2] == ["rows.parquet#1", "rows.parquet#2"]


PAGE = ('<html><head><meta charset="{charset}"><title>Menu</title></head><body><article><p>'
        + "Le café est très bon et la crème brûlée aussi, déjà vu à Noël. " * 4 + "</p></article></body></html>")


def test_html_in_a_legacy_charset_is_decoded_by_its_declaration(tmp_path):
    # HTML files and WARC responses without a charset header were decoded as UTF-8 with replacement:
    # a Latin-1 page lost every accented letter to U+FFFD, silently.
    (tmp_path / "latin1.html").write_bytes(PAGE.format(charset="iso-8859-1").encode("latin-1"))
    part = FilePart(path=str(tmp_path / "latin1.html"), rel="latin1.html", format="html", source="s")
    html = next(read_part(part)).html
    assert "crème brûlée" in html and "\ufffd" not in html

    warcio = pytest.importorskip("warcio")
    from warcio.statusandheaders import StatusAndHeaders

    with open(tmp_path / "pages.warc.gz", "wb") as f:
        writer = warcio.warcwriter.WARCWriter(f, gzip=True)
        for ctype, charset, encoding in (("text/html", "windows-1252", "cp1252"),  # declared in <meta> only
                                         ("text/html; charset=ISO-8859-1", "utf-8", "latin-1"),  # header first
                                         ("text/html", "utf-8", "utf-8")):
            payload = PAGE.format(charset=charset).encode(encoding)
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record("https://example.com/", "response",
                                                          payload=io.BytesIO(payload), http_headers=http))
    part = FilePart(path=str(tmp_path / "pages.warc.gz"), rel="pages.warc.gz", format="warc", source="s")
    pages = [doc.html for doc in read_part(part)]
    assert len(pages) == 3 and all("crème brûlée" in p and "\ufffd" not in p for p in pages)


def test_a_byte_order_mark_is_not_text(tmp_path, shakespeare_tokenizer):
    # `data clean` kept a text file's BOM in the document (a pipeline without `normalize` wrote it out), and
    # `data prepare` tokenized it: three extra bytes and tokens at the start of the document.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bom.txt").write_bytes(b"\xef\xbb\xbfHello world.\n")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "plain.txt").write_bytes(b"Hello world.\n")
    run_pipeline(config_from_dict({"stages": ["exact_dedup"]}), tmp_path / "clean",
                 inputs=[InputSpec(str(tmp_path / "in"))], workers=1)
    assert [d["text"] for d in _kept(tmp_path / "clean")] == ["Hello world.\n"]

    shakespeare_tokenizer.save(tmp_path / "tok")
    stats = [prepare([tmp_path / name], tmp_path / "tok", tmp_path / f"shards-{name}") for name in ("in", "plain")]
    assert stats[0].bytes == stats[1].bytes == len("Hello world.\n") and stats[0].tokens == stats[1].tokens
    shards = [np.fromfile(tmp_path / f"shards-{name}" / "shard_00000.bin", dtype=np.uint16) for name in ("in", "plain")]
    assert shards[0].tolist() == shards[1].tolist()


def test_prepare_refuses_a_whole_clean_output(tmp_path, shakespeare_tokenizer):
    # `data prepare --input CLEAN/` read report/report.md as a training document (and anneal/ beside the mix).
    clean = tmp_path / "clean"
    run_pipeline(config_from_dict({"stages": ["normalize"]}), clean, inputs=_clean_input(tmp_path), workers=1)
    shakespeare_tokenizer.save(tmp_path / "tok")
    with pytest.raises(DataError, match=r"is the output of `llmkit data clean`.*pass .*clean/train"):
        prepare([clean], tmp_path / "tok", tmp_path / "shards")
    assert not (tmp_path / "shards").exists()
    assert prepare([clean / "train"], tmp_path / "tok", tmp_path / "shards").documents == 1


def test_mixing_names_must_be_sources_and_gz_inputs_are_named_without_suffixes(tmp_path):
    # A misspelt source in mixing.weights (or anneal.sources) was ignored: that source kept weight 1.0.
    for mixing, field in (({"weights": {"in": 2.0, "wbe": 0.5}}, "mixing.weights"),
                          ({"anneal": {"sources": ["wbe"]}}, "mixing.anneal.sources")):
        config = config_from_dict({"stages": ["normalize"], "mixing": mixing})
        with pytest.raises(ConfigError, match=rf"{field} names the source 'wbe', which no input has \(sources: in\)"):
            run_pipeline(config, tmp_path / "out", inputs=_clean_input(tmp_path), workers=1)
        assert not (tmp_path / "out").exists()
    # `--input crawl.jsonl.gz` was the source "crawl.jsonl", so `weights: {crawl: ...}` could not name it.
    assert [s.source for s in parse_inputs(["a/crawl.jsonl.gz", "cc.warc.gz", "web.jsonl", "books/", "x=y.txt"])] \
        == ["crawl", "cc", "web", "books", "x"]


def test_fineweb_newline_ratio_boundary_as_datatrove():
    # datatrove's FineWebQualityFilter removes a page when newlines / words > 0.3; 0.3 itself is kept.
    stage = FineWeb(FineWebConfig(max_line_punct_ratio=None, max_dup_line_char_ratio=None, max_short_line_ratio=None))
    at_limit = Document("alpha beta gamma\ndelta epsilon zeta\neta theta\niota kappa", "a")  # 3 / 10
    above = Document("alpha beta gamma\ndelta epsilon zeta\neta theta\niota\nkappa", "b")  # 4 / 10
    assert stage(at_limit) is at_limit
    assert stage(above).rule == "fineweb.newline_word_ratio"


def test_gopher_stop_words_are_matched_whatever_their_case():
    # The configured stop words were compared as written with the lower-cased words of the text.
    text = " ".join(["The cat sat with the dog and the bird on the mat."] * 6)
    stage = GopherQuality(GopherQualityConfig(stop_words=["The", "And", "WITH"]))
    doc = Document(text, "a")
    assert stage(doc) is doc
