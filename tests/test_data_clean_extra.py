"""The data-cleaning stack is the optional `clean` extra: the core (load, generate, chat, train, plain
text/JSONL `data prepare`) runs without it, and a step that needs it stops with one line naming it.

Each check runs in a fresh process whose import system refuses the extra's packages, as on a machine
where only `pip install llmkit` ran."""

import json
import os
import subprocess
import sys

from conftest import REPO

CLEAN_MODULES = ("trafilatura", "warcio", "pyarrow", "py3langid", "dask", "distributed")

# A meta-path finder ahead of every other: `import pyarrow` (or any submodule) fails as if not installed.
WITHOUT_EXTRA = f"""
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {CLEAN_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def _python(code: str, cwd=None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def cli_without_extra(*args, cwd=None) -> subprocess.CompletedProcess:
    """`llmkit ARGS...` in a process that cannot import the clean extra."""
    return _python(WITHOUT_EXTRA + f"from llmkit.cli import main\nsys.exit(main({list(map(str, args))!r}))", cwd)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # no traceback
    return lines[0]


def test_the_core_never_imports_the_clean_stack():
    """Even where the extra is installed: importing the core, the CLI and the cleaning package itself
    loads none of it (the stages import it when they are built)."""
    code = ("import sys, llmkit, llmkit.api, llmkit.cli, llmkit.train.pretrain, llmkit.data.prepare, "
            "llmkit.data.clean, llmkit.data.clean.pipeline\n"
            f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {CLEAN_MODULES!r}}}))")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_load_train_and_plain_prepare_work_without_the_extra(tmp_path):
    result = cli_without_extra("--help")
    assert result.returncode == 0 and "data" in result.stdout, result.stderr
    result = _python(WITHOUT_EXTRA + "import llmkit.api, llmkit.train.pretrain, llmkit.data.prepare, llmkit.serve\n"
                     "from llmkit.data.clean.pipeline import run_pipeline\nprint('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # A tokenizer and token shards from text and JSONL: the whole way into pretraining.
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"line {i} of the play"}) + "\n" for i in range(50)))
    result = cli_without_extra("tokenizer", "train", "--input", tmp_path / "a.txt", "--vocab-size", 300,
                               "--out", tmp_path / "tok")
    assert result.returncode == 0, result.stderr
    result = cli_without_extra("data", "prepare", "--input", tmp_path / "a.txt", tmp_path / "b.jsonl",
                               "--tokenizer", tmp_path / "tok", "--out", tmp_path / "shards")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["documents"] == 51


def test_parquet_input_names_the_extra(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("a small text " * 50)
    assert cli_without_extra("tokenizer", "train", "--input", tmp_path / "a.txt", "--vocab-size", 270,
                             "--out", tmp_path / "tok").returncode == 0
    pq.write_table(pa.table({"text": ["one document", "another"]}), tmp_path / "d.parquet")
    line = _one_line_error(cli_without_extra("data", "prepare", "--input", tmp_path / "d.parquet",
                                             "--tokenizer", tmp_path / "tok", "--out", tmp_path / "shards"))
    assert line == "error: reading Parquet needs the `clean` extra: pip install 'llmkit[clean]' (missing: pyarrow)"


def test_cleaning_verbs_name_the_extra_and_touch_nothing(tmp_path):
    (tmp_path / "web.jsonl").write_text(json.dumps({"text": "a page " * 100}) + "\n")
    out = tmp_path / "out"
    # The default pipeline extracts HTML (trafilatura) and identifies languages (py3langid).
    line = _one_line_error(cli_without_extra("data", "clean", "--input", tmp_path / "web.jsonl", "--out", out,
                                             "--workers", 1))
    assert line == ("error: data clean needs the `clean` extra: pip install 'llmkit[clean]' "
                    "(missing: trafilatura, py3langid)")
    assert not out.exists()  # refused before the output directory was made
    (tmp_path / "dask.yaml").write_text("engine: dask\nstages: [normalize]\n")
    line = _one_line_error(cli_without_extra("data", "clean", "--config", tmp_path / "dask.yaml",
                                             "--input", tmp_path / "web.jsonl", "--out", out))
    assert line.endswith("(missing: dask[distributed])") and "pip install 'llmkit[clean]'" in line
    line = _one_line_error(cli_without_extra("data", "train-quality", "--good", tmp_path / "web.jsonl",
                                             "--bad", tmp_path / "web.jsonl", "--out", tmp_path / "q.safetensors"))
    assert line == ("error: data train-quality needs the `clean` extra: pip install 'llmkit[clean]' "
                    "(missing: trafilatura)")


def test_a_pipeline_that_needs_none_of_the_extra_runs_without_it(tmp_path):
    """Normalisation, heuristic filters, PII and dedup are numpy and the standard library."""
    docs = ["The quick brown fox jumps over the lazy dog near the river bank today. " * 8,
            "The quick brown fox jumps over the lazy dog near the river bank today. " * 8,
            "Mail me at someone@example.com about the meeting on the third floor. " * 8]
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (tmp_path / "p.yaml").write_text("stages: [normalize, pii, exact_dedup]\n")
    result = cli_without_extra("data", "clean", "--config", tmp_path / "p.yaml", "--input", tmp_path / "web.jsonl",
                               "--out", tmp_path / "out", "--workers", 1)
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line)["text"] for line in (tmp_path / "out" / "train" / "part-00000.jsonl").open()]
    assert len(kept) == 2 and "<EMAIL>" in kept[1] and "@" not in kept[1]
