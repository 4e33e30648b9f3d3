"""llmkit.atomic.atomic_open, the one temp-then-rename writer, and the cleaning pipeline's use of it:
a file appears whole or not at all, and a failed write leaves no temporary file behind."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from llmkit.atomic import atomic_open, atomic_write_text
from llmkit.data.clean import InputSpec, config_from_dict, run_pipeline
from llmkit.errors import DataError


def test_streamed_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "part.jsonl"
    with atomic_open(path) as f:
        for i in range(3):
            f.write(b"line %d\n" % i)
            assert not path.exists()  # readers never see half a file
        assert [p.name.startswith(".part.jsonl.tmp-") for p in tmp_path.iterdir()] == [True]
    assert path.read_bytes() == b"line 0\nline 1\nline 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["part.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]


def test_text_mode_is_utf8_and_writers_that_take_a_file_object_work(tmp_path):
    with atomic_open(tmp_path / "t.txt", "w") as f:
        f.write("naïve — ünïcode\n")
    assert (tmp_path / "t.txt").read_bytes() == "naïve — ünïcode\n".encode("utf-8")
    array = np.arange(10, dtype=np.uint64)
    with atomic_open(tmp_path / "a.npy") as f:
        np.save(f, array)
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_a_failed_cleaning_task_leaves_no_partial_or_temporary_files(tmp_path):
    lines = [json.dumps({"text": f"document number {i} with a few words"}) for i in range(20)] + ["{not json"]
    (tmp_path / "web.jsonl").write_text("\n".join(lines) + "\n")
    config = config_from_dict({"stages": ["normalize"]})
    out = tmp_path / "out"
    with pytest.raises(DataError, match="line 21"):
        run_pipeline(config, out, inputs=[InputSpec(str(tmp_path / "web.jsonl"))], workers=1)
    # The twenty good documents were streamed into the task's part before the bad line: that part and
    # its temporary file are both gone, so the output holds no truncated shard.
    assert not (out / "train").exists() or not list((out / "train").iterdir())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    # With the bad record skipped, the same task writes its part whole.
    config = config_from_dict({"stages": ["normalize"], "skip_bad_records": True})
    run_pipeline(config, out, inputs=[InputSpec(str(tmp_path / "web.jsonl"))], workers=1)
    kept = (out / "train" / "part-00000.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in kept] == [json.loads(line)["text"] for line in lines[:20]]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def _clean_inputs(tmp_path):
    words = "The farmer walked to the market in the morning and sold his apples"
    good = [json.dumps({"id": str(i), "text": f"{words} number {i}."}) for i in range(5)]
    (tmp_path / "ok.jsonl").write_text("\n".join(good) + "\n")
    (tmp_path / "bad.jsonl").write_text("\n".join(good) + '\n{"text": broken\n')
    return [InputSpec(str(tmp_path / "ok.jsonl"))], [InputSpec(str(tmp_path / "bad.jsonl"))]


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stages", [["normalize"], ["normalize", "exact_dedup"]])  # one pass; two passes
def test_a_failed_rerun_keeps_the_previous_output(tmp_path, stages, monkeypatch):
    """A rerun into the same --out builds its output aside and swaps it in at the end: a bad record, or a
    Ctrl-C at the very end, leaves the previous complete output (and a user's own files) as they were."""
    from llmkit.data.clean import pipeline

    ok, bad = _clean_inputs(tmp_path)
    config = config_from_dict({"stages": stages})
    out = tmp_path / "out"
    run_pipeline(config, out, inputs=ok, workers=1)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    assert "train/part-00000.jsonl" in before and "report/report.json" in before
    with pytest.raises(DataError, match="line 6"):
        run_pipeline(config, out, inputs=bad, workers=1)
    assert _files(out) == before and not (out / ".work").exists()

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline, "write_report", interrupted)  # Ctrl-C after every part is written
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, out, inputs=ok, workers=1)
    assert _files(out) == before and not (out / ".work").exists()
    monkeypatch.undo()
    replace = os.replace

    def interrupted_swap(src, dst):  # Ctrl-C between the renames that swap the new output in
        if str(dst) == str(out / "report") and str(src).endswith("output/report"):
            raise KeyboardInterrupt
        replace(src, dst)
    monkeypatch.setattr(os, "replace", interrupted_swap)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, out, inputs=ok, workers=1)
    monkeypatch.undo()
    assert _files(out) == before and not (out / ".work").exists()
    # A run that succeeds replaces train/ and report/ (not the user's file); a failed first run leaves no --out.
    config = config_from_dict({"stages": stages, "skip_bad_records": True})
    assert run_pipeline(config, out, inputs=bad, workers=1)["read"]["bad_records"] == 1
    assert json.loads((out / "report" / "report.json").read_text())["read"]["bad_records"] == 1
    assert (out / "notes.txt").read_text() == "mine" and not (out / ".work").exists()
    with pytest.raises(DataError, match="line 6"):
        run_pipeline(config_from_dict({"stages": stages}), tmp_path / "new", inputs=bad, workers=1)
    assert not (tmp_path / "new").exists()


def test_a_killed_run_leaves_the_previous_output_readable(tmp_path, shakespeare_tokenizer):
    """Killed mid-run, a rerun left only its .work folder beside the previous output, which stays whole:
    `data prepare` reads it, and the next run clears .work."""
    from llmkit.data.prepare import prepare

    ok, _ = _clean_inputs(tmp_path)
    out = tmp_path / "out"
    run_pipeline(config_from_dict({"stages": ["normalize"]}), out, inputs=ok, workers=1)
    (out / ".work" / "output" / "train").mkdir(parents=True)  # what kill -9 during a rerun leaves
    shakespeare_tokenizer.save(tmp_path / "tok")
    assert prepare([out / "train"], tmp_path / "tok", tmp_path / "shards").documents == 5
    run_pipeline(config_from_dict({"stages": ["normalize"]}), out, inputs=ok, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["report", "train"]


KILLED_SWAP = """
import os, signal, sys
from llmkit.data.clean import InputSpec, config_from_dict, run_pipeline
import llmkit.data.clean.pipeline as pipeline
from llmkit.data.clean.output_folder import OUTPUTS

out, source, renames = sys.argv[1], sys.argv[2], int(sys.argv[3])
real, moved, swap = os.replace, [], pipeline.swap_in

def replace(src, dst):  # kill -9 after `renames` of the swap's folder moves
    folder = os.path.basename(str(src)) in OUTPUTS
    if folder and len(moved) == renames:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
    moved.extend([dst] if folder else [])

def swap_in(*args):
    pipeline.os.replace = replace
    swap(*args)

pipeline.swap_in = swap_in
if renames < 0:  # the swap completes; kill -9 while the old output is being deleted, half of it gone
    pipeline.swap_in = swap
    rmtree = pipeline.shutil.rmtree

    def killed_midway(path, **kwargs):
        if str(path).endswith(".work"):
            rmtree(os.path.join(path, "replaced"))
            os.kill(os.getpid(), signal.SIGKILL)
        rmtree(path, **kwargs)

    pipeline.shutil.rmtree = killed_midway
run_pipeline(config_from_dict({"stages": ["normalize"]}), out, inputs=[InputSpec(source)], workers=1)
"""


@pytest.mark.parametrize("renames", [0, 1, 2, 3, -1])  # old report, train aside; new train, report in; after
def test_a_run_killed_while_swapping_its_output_in_is_finished_by_the_next(tmp_path, renames):
    """kill -9 between the renames that move the old output aside and the new one in: the next run into
    OUT, even one that then fails, finishes the swap first; the output was whole only inside .work."""
    ok, bad = _clean_inputs(tmp_path)
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"text": "A different document, the one the killed run cleaned."}) + "\n")
    expected, out = tmp_path / "expected", tmp_path / "out"
    run_pipeline(config_from_dict({"stages": ["normalize"]}), expected, inputs=[InputSpec(str(newer))], workers=1)
    run_pipeline(config_from_dict({"stages": ["normalize"]}), out, inputs=ok, workers=1)
    killed = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(out), str(newer), str(renames)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / ".work").exists()
    with pytest.raises(DataError, match="line 6"):
        run_pipeline(config_from_dict({"stages": ["normalize"]}), out, inputs=bad, workers=1)
    assert not (out / ".work").exists()
    train = {k: v for k, v in _files(out).items() if k.startswith("train/")}
    assert train == {k: v for k, v in _files(expected).items() if k.startswith("train/")}
    assert json.loads((out / "report" / "report.json").read_text())["read"]["documents"] == 1


def test_hidden_folders_of_an_input_are_not_read(tmp_path):
    """Was: a repository's .git/ and .venv/ files (package READMEs, licence texts) became documents, and
    `data prepare --input clean/` read an interrupted clean's .work/ beside the output."""
    from llmkit.data.clean.readers import expand_input

    tmp_path = tmp_path / ".cache" / "input"  # an input inside a hidden folder is read: only paths below it count
    tmp_path.mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a document\n")
    for hidden in (".venv/lib/pkg/README.md", ".git/description.txt", "docs/.cache/page.html", ".notes.txt"):
        (tmp_path / hidden).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / hidden).write_text("not a document\n")
    assert [rel for _, rel, _ in expand_input(InputSpec(path=str(tmp_path)))] == ["docs/a.txt"]
    from llmkit.data.prepare import expand_inputs  # `data prepare` reads folders the same way

    assert expand_inputs([tmp_path]) == [tmp_path / "docs" / "a.txt"]
