"""`llmkit data clean` and `llmkit data train-quality` end to end: every reader, the default pipeline with
a trained quality model on a WARC crawl, the report, Dask == multiprocessing, split tasks == one task,
mixing weights, user errors, and the output feeding `llmkit data prepare`."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import cli_in_process, run_cli
from data_clean_web import KEEP_LABELS, generate, write_jsonl, write_warc
from llmkit.data.clean import InputSpec, config_from_dict, load_config, run_pipeline
from llmkit.data.clean.document import Document
from llmkit.data.clean.mixing import data_source_for_step
from llmkit.data.clean.normalize import Normalize, NormalizeConfig
from llmkit.data.clean.quality import QualityModel
from llmkit.data.clean.quality_training import binary_metrics, train_model
from llmkit.data.clean.safety import load_word_list

JUNK = ("spam_keywords", "spam_repetition", "boilerplate", "code", "lorem", "nsfw", "non_english")


def read_output(directory: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in open(f, encoding="utf-8")]


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    """Trained with the CLI on seed-1 pages: good = articles, bad = the junk categories."""
    root = tmp_path_factory.mktemp("quality")
    docs = generate(seed=1)
    write_jsonl([d for d in docs if d.label in KEEP_LABELS], root / "good.jsonl")
    write_jsonl([d for d in docs if d.label in JUNK], root / "bad.jsonl")
    result = run_cli("data", "train-quality", "--good", root / "good.jsonl", "--bad", root / "bad.jsonl",
                     "--out", root / "q.safetensors")
    assert result.returncode == 0, result.stderr
    assert re.search(r"held-out accuracy (0\.9\d\d|1\.000)", result.stdout), result.stdout
    return root / "q.safetensors"


def test_quality_model_precision_and_recall_on_unseen_pages(quality_model):
    model = QualityModel.load(quality_model)
    normalize = Normalize(NormalizeConfig())
    docs = [d for d in generate(seed=2) if d.label in KEEP_LABELS + JUNK]
    scores = np.array([model.score(normalize(Document(d.text, d.id))) for d in docs])
    junk = np.array([d.label in JUNK for d in docs])
    # "positive" = removed by the filter (score < 0.5): precision/recall of the removal of junk.
    m = binary_metrics(1.0 - scores, junk.astype(int))
    print(f"\nquality_model (threshold 0.5) on unseen pages: precision {m['precision']:.3f}  recall {m['recall']:.3f}; "
          f"median score articles {np.median(scores[~junk]):.3f}, junk {np.median(scores[junk]):.3f}")
    assert m["precision"] >= 0.95 and m["recall"] >= 0.9
    # Training is deterministic and independent of document order only through the seed: same seed, same model.
    normed = [normalize(Document(d.text, d.id)).word_hashes for d in docs[:40]]
    a = train_model(normed[:20], normed[20:], bits=12, epochs=2)
    b = train_model(normed[:20], normed[20:], bits=12, epochs=2)
    assert np.array_equal(a.weights, b.weights)


def test_default_pipeline_on_a_warc_crawl(tmp_path, quality_model):
    pages = generate(seed=2)
    write_warc(pages, tmp_path / "crawl.warc.gz")
    config = yaml.safe_load(open(Path(__file__).parents[1] / "llmkit" / "presets" / "clean" / "default.yaml"))
    for stage in config["stages"]:
        if stage["stage"] == "quality_model":
            stage.update(enabled=True, model=str(quality_model))
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "out"
    result = run_cli("data", "clean", "--config", tmp_path / "pipe.yaml", "--input", f"web={tmp_path / 'crawl.warc.gz'}",
                     "--out", out, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert "near_dedup" in result.stdout and "quality_model" in result.stdout
    docs = read_output(out / "train")
    by_url = {p.url: p for p in pages}
    labels = [by_url[d["url"]].label for d in docs]
    assert all(set(d) >= {"text", "id", "source", "quality"} for d in docs)
    # Nothing the pipeline should remove survives; the articles do.
    assert not set(labels) & set(JUNK) and "exact_dup" not in labels and "near_dup" not in labels
    articles = sum(p.label in KEEP_LABELS for p in pages)
    assert len(docs) >= 0.95 * articles
    # PII is redacted, no bad word remains, no two documents share a text.
    text = "\n".join(d["text"] for d in docs)
    for p in pages:
        for _, value in p.pii:
            assert value not in text
    assert "<EMAIL>" in text and "<CREDIT_CARD>" in text
    words = set(re.findall(r"\w+", text.lower()))
    assert not words & {w for w in load_word_list(None) if " " not in w}
    assert len({d["text"] for d in docs}) == len(docs)
    # Navigation and footer boilerplate was left out by the extractor.
    assert "Privacy Policy" not in text and "Accept all cookies" not in text
    # The annealing subset: only articles, scoring at least 0.8.
    anneal = read_output(out / "anneal")
    assert anneal and all(d["quality"] >= 0.8 and by_url[d["url"]].label in KEEP_LABELS for d in anneal)
    # The report: every stage's output is the next stage's input; the PNG and clusters exist.
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["read"]["documents"] == len(pages)
    stages = report["stages"]
    for a, b in zip(stages, stages[1:]):
        assert a["docs_out"] == b["docs_in"], (a["name"], b["name"])
    assert stages[-1]["docs_out"] == len(docs) == report["output"]["train_docs"]
    assert report["dedup"]["exact_clusters"] >= 20 and sum(report["quality"]["histogram"]) == stages[-1]["docs_in"]
    assert (out / "report" / "quality_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report" / "report.md").read_text()
    assert "bad_words.found" in md and "c4.curly_bracket" in md and "pii counts" in md
    assert len((out / "report" / "dedup_clusters.jsonl").read_text().splitlines()) == (
        report["dedup"]["exact_clusters"] + report["dedup"]["near_clusters"])


def test_every_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages = [p for p in generate(seed=5, per_junk=0, exact_dups=0, near_dups=0, pii=0)][:12]
    (tmp_path / "in" / "html").mkdir(parents=True)
    (tmp_path / "in" / "text").mkdir(parents=True)
    write_jsonl(pages[:3], tmp_path / "in" / "a.jsonl")
    import gzip

    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        for p in pages[3:5]:
            f.write(json.dumps({"text": p.text, "id": p.id}) + "\n")
    pq.write_table(pa.table({"text": [p.text for p in pages[5:7]], "id": [p.id for p in pages[5:7]]}),
                   tmp_path / "in" / "c.parquet")
    for p in pages[7:9]:
        (tmp_path / "in" / "html" / f"{p.id}.html").write_text(p.html)
    for p in pages[9:11]:
        (tmp_path / "in" / "text" / f"{p.id}.txt").write_text(p.text)
    write_warc(pages[11:], tmp_path / "in" / "d.warc.gz")
    config = config_from_dict({"stages": ["extract", "normalize"]})
    summary = run_pipeline(config, tmp_path / "out", inputs=[InputSpec(str(tmp_path / "in"))], workers=1)
    docs = read_output(tmp_path / "out" / "train")
    assert summary["read"]["documents"] == len(docs) == 12
    first_paragraphs = {p.text.split("\n\n")[1] for p in pages}
    assert all(any(fp in d["text"] for fp in first_paragraphs) for d in docs)


def test_dask_local_mode_equals_multiprocessing(tmp_path):
    docs = generate(seed=6, clean=60, per_junk=5)
    write_jsonl(docs, tmp_path / "web.jsonl")
    config = load_config("default")
    config.task_mb = 0.05  # several tasks, so that the engines really distribute work
    inputs = [InputSpec(str(tmp_path / "web.jsonl"), source="web")]
    local = run_pipeline(config, tmp_path / "local", inputs=inputs, workers=2, engine="local")
    dask = run_pipeline(config, tmp_path / "dask", inputs=inputs, workers=2, engine="dask")
    assert local["engine"] == "local" and dask["engine"] == "dask"
    files = sorted(p.name for p in (tmp_path / "local" / "train").glob("*.jsonl"))
    assert len(files) > 1 and files == sorted(p.name for p in (tmp_path / "dask" / "train").glob("*.jsonl"))
    for name in files:
        assert (tmp_path / "local" / "train" / name).read_bytes() == (tmp_path / "dask" / "train" / name).read_bytes()
    assert [s["docs_out"] for s in local["stages"]] == [s["docs_out"] for s in dask["stages"]]


def test_splitting_a_large_jsonl_changes_nothing(tmp_path):
    docs = generate(seed=7, clean=40, per_junk=3)
    write_jsonl(docs, tmp_path / "web.jsonl")
    config = config_from_dict({"stages": ["normalize", "gopher_quality", "exact_dedup", "near_dedup"]})
    inputs = [InputSpec(str(tmp_path / "web.jsonl"))]
    config.task_mb = 1000
    whole = run_pipeline(config, tmp_path / "whole", inputs=inputs, workers=1)
    config.task_mb = 0.02  # ~15 byte ranges; a line belongs to the range where it starts
    split = run_pipeline(config, tmp_path / "split", inputs=inputs, workers=2)
    a, b = read_output(tmp_path / "whole" / "train"), read_output(tmp_path / "split" / "train")
    assert len(list((tmp_path / "split" / "train").glob("*.jsonl"))) > 5
    assert [d["text"] for d in a] == [d["text"] for d in b]
    assert whole["read"]["documents"] == split["read"]["documents"] == len(docs)


def test_mixing_weights_and_the_anneal_switch(tmp_path):
    for name in ("books", "web"):
        (tmp_path / name).mkdir()
        for i in range(200):
            (tmp_path / name / f"{i}.txt").write_text(f"{name} document number {i} " * 5)
    config = config_from_dict({"stages": ["normalize"], "mixing": {"weights": {"books": 2.0, "web": 0.5}}})
    inputs = [InputSpec(str(tmp_path / "books"), source="books"), InputSpec(str(tmp_path / "web"), source="web")]
    summary = run_pipeline(config, tmp_path / "out", inputs=inputs, workers=2)
    docs = read_output(tmp_path / "out" / "train")
    books = [d for d in docs if d["source"] == "books"]
    web = [d for d in docs if d["source"] == "web"]
    assert len(books) == 400 and len({d["id"] for d in books}) == 200
    assert 70 <= len(web) <= 130 and len({d["id"] for d in web}) == len(web)
    mix = json.loads((tmp_path / "out" / "report" / "mixture.json").read_text())
    assert mix["sources"]["books"]["docs_out"] == 400 and mix["sources"]["web"]["weight"] == 0.5
    again = run_pipeline(config, tmp_path / "out", inputs=inputs, workers=1)  # deterministic, any worker count
    assert again["mixing"] == summary["mixing"]
    assert [data_source_for_step(s, 100, 0.1) for s in (0, 89, 90, 99)] == ["train", "train", "anneal", "anneal"]


@pytest.mark.parametrize("content,message", [
    ('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n', r"bad\.jsonl: line 3: invalid JSON .*skip_bad_records"),
    ('{"text": "fine"}\n{"body": "no text field"}\n', r"bad\.jsonl: line 2: no field 'text' \(fields: body\)"),
])
def test_malformed_input_is_one_line_and_exit_2(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    result = cli_in_process("data", "clean", "--input", tmp_path / "bad.jsonl", "--out", tmp_path / "out", "--workers", 1)
    last = result.stderr.strip().splitlines()[-1]  # lines before it are progress
    assert result.returncode == 2 and last.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, last), last


def test_corrupt_files_are_one_line_and_exit_2(tmp_path):
    import gzip

    whole = gzip.compress("".join(json.dumps({"text": f"line {i} of {i * 7919 % 100003}"}) + "\n"
                                  for i in range(5000)).encode())
    cases = {"a.parquet": b"not a parquet file", "b.jsonl.gz": b"not gzip at all",
             "c.jsonl.gz": whole[:len(whole) // 2]}  # truncated
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        result = cli_in_process("data", "clean", "--input", tmp_path / name, "--out", tmp_path / f"out-{name}",
                         "--workers", 1)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert last.startswith(f"error: {tmp_path / name}: not a readable"), last


def test_html_needs_extract_first_and_out_must_not_overlap_inputs(tmp_path):
    from llmkit.errors import DataError

    pages = generate(seed=5, per_junk=0, exact_dups=0, near_dups=0, pii=0)[:3]
    (tmp_path / "html").mkdir()
    for p in pages:
        (tmp_path / "html" / f"{p.id}.html").write_text(p.html)
    inputs = [InputSpec(str(tmp_path / "html"))]
    # Without `extract` first every page would have empty text: all removed by normalize, or (dedup
    # first) all "exact duplicates" of one another. Both are refused before anything is written.
    for stages in (["normalize"], ["exact_dedup", "extract"]):
        with pytest.raises(DataError, match="needs `- stage: extract` as the first stage"):
            run_pipeline(config_from_dict({"stages": stages}), tmp_path / "out", inputs=inputs, workers=1)
        assert not (tmp_path / "out").exists()
    summary = run_pipeline(config_from_dict({"stages": ["extract", "exact_dedup"]}), tmp_path / "out",
                           inputs=inputs, workers=1)
    assert summary["output"]["train_docs"] == 3
    with pytest.raises(DataError, match="overlaps the input"):
        run_pipeline(config_from_dict({"stages": ["extract"]}), tmp_path / "html" / "out", inputs=inputs, workers=1)


def test_config_and_path_errors_exit_2(tmp_path):
    (tmp_path / "pipe.yaml").write_text("stages:\n  - stage: c4\n    min_sentence: 3\n")
    result = cli_in_process("data", "clean", "--config", tmp_path / "pipe.yaml", "--input", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 2 and "pipe.yaml: line 3: field 'min_sentence': unknown field" in result.stderr
    result = cli_in_process("data", "clean", "--input", tmp_path / "missing", "--out", tmp_path / "o")
    assert result.returncode == 2 and "missing: no such file or directory" in result.stderr
    (tmp_path / "x.jsonl").write_text('{"text": "hello world"}\n')
    (tmp_path / "notours").mkdir()
    (tmp_path / "notours" / "keep.txt").write_text("precious")
    result = cli_in_process("data", "clean", "--input", tmp_path / "x.jsonl", "--out", tmp_path / "notours")
    assert result.returncode == 2 and "is not the output of a previous" in result.stderr
    assert (tmp_path / "notours" / "keep.txt").read_text() == "precious"


def test_output_feeds_data_prepare(tmp_path, shakespeare_tokenizer):
    from conftest import SHAKESPEARE

    config = config_from_dict({"stages": ["normalize", "exact_dedup"]})
    run_pipeline(config, tmp_path / "clean", inputs=[InputSpec(str(SHAKESPEARE / "val"), source="val")], workers=1)
    shakespeare_tokenizer.save(tmp_path / "tok")
    result = run_cli("data", "prepare", "--input", tmp_path / "clean" / "train", "--tokenizer", tmp_path / "tok",
                     "--out", tmp_path / "shards")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 documents")


def test_parquet_text_columns_dictionary_encoded_and_nulls(tmp_path):
    """A pandas `category` column (dictionary-encoded strings) is text; a null text is a bad record:
    an error naming the row, or skipped and counted with skip_bad."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmkit.data.clean.readers import FilePart, read_part
    from llmkit.errors import DataError

    texts = pa.array(["the cat sat", "on the mat", "the cat sat"]).dictionary_encode()
    pq.write_table(pa.table({"text": texts}), tmp_path / "cat.parquet")
    part = FilePart(path=str(tmp_path / "cat.parquet"), rel="cat.parquet", format="parquet", source="s")
    assert [d.text for d in read_part(part)] == ["the cat sat", "on the mat", "the cat sat"]
    pq.write_table(pa.table({"text": ["one", None, "three"]}), tmp_path / "nulls.parquet")
    part = FilePart(path=str(tmp_path / "nulls.parquet"), rel="nulls.parquet", format="parquet", source="s")
    with pytest.raises(DataError, match=r"nulls.parquet: row 2 of row groups 0\+: column 'text' is null; .*skip_bad_records"):
        list(read_part(part))
    bad: list = []
    assert [d.text for d in read_part(part, skip_bad=True, bad_counter=bad)] == ["one", "three"] and len(bad) == 1


def test_the_closing_line_says_when_nothing_was_kept_and_counts_skipped_records(tmp_path):
    (tmp_path / "pipe.yaml").write_text("workers: 1\nskip_bad_records: true\nstages:\n  - stage: gopher_quality\n")
    (tmp_path / "short.jsonl").write_text('{"text": "x"}\n{"text": broken\n')
    result = cli_in_process("data", "clean", "--config", tmp_path / "pipe.yaml", "--input", tmp_path / "short.jsonl",
                            "--out", tmp_path / "out")
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and not (tmp_path / "out" / "train").exists(), result.stderr
    assert last.startswith(f"0 documents kept in the mix; nothing written to {tmp_path / 'out'}/train"), last
    assert "data prepare" not in last and last.endswith("; skipped 1 malformed record(s)"), last
    (tmp_path / "pipe.yaml").write_text("workers: 1\nskip_bad_records: true\nstages:\n  - stage: normalize\n")
    result = cli_in_process("data", "clean", "--config", tmp_path / "pipe.yaml", "--input", tmp_path / "short.jsonl",
                            "--out", tmp_path / "out")
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'out'}/train (next: llmkit data prepare"), last
    assert last.endswith("report.md; skipped 1 malformed record(s)") and "anneal" not in last, last
