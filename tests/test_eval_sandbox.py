"""The sandbox that runs model-written code: right programs pass, wrong ones fail, and loops, memory
bombs, network access and writes outside its directory are stopped. HumanEval's canonical solutions
(tests/data/eval/humaneval) all pass."""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import REPO, TEST_DATA
from llmkit.eval import humaneval
from llmkit.eval.sandbox import ISOLATION, SandboxLimits, isolation, run_python

FAST = SandboxLimits(timeout_s=5, cpu_s=3, memory_mib=512)
PROBLEMS = humaneval.read_problems(TEST_DATA / "eval" / "humaneval" / "HumanEval.jsonl")


def test_canonical_solutions_pass_and_wrong_ones_fail():
    right = [humaneval.program(p, p["canonical_solution"], chat=False) for p in PROBLEMS]
    wrong = [humaneval.program(p, "    return None\n", chat=False) for p in PROBLEMS]
    results = humaneval.run_programs(right + wrong, FAST, workers=2)
    assert [r.status for r in results[:len(right)]] == ["passed"] * len(PROBLEMS), \
        [r.stderr for r in results if not r.passed][:1]
    assert all(r.status == "failed" and ("AssertionError" in r.stderr or "TypeError" in r.stderr)
               for r in results[len(right):]), [r.stderr[-300:] for r in results[len(right):]]
    passed = sum(r.passed for r in results[:len(right)])
    assert humaneval.pass_at_k(len(right), passed, 1) == 1.0


def test_output_and_exit_status():
    result = run_python("print('hello')\nraise SystemExit(3)", FAST)
    assert result.status == "failed" and result.returncode == 3 and result.stdout == "hello\n"
    assert run_python("print('ok')", FAST).passed


EARLY_EXITS = ["import sys\nsys.exit(0)", "exit()", "quit()", "raise SystemExit", "import os\nos._exit(0)",
               "import atexit, os\natexit.register(lambda: os._exit(0))",
               "import sys, os\nsys.excepthook = lambda *a: os._exit(0)",
               "import posix\nposix._exit(0)", "print('passed')\nimport os\nos._exit(0)"]


@pytest.mark.parametrize("namespaces", [True, False])
def test_a_program_that_exits_before_its_tests_ran_fails(namespaces):
    """Passing is running to the end: a wrong answer followed by an exit with status 0 (a model's
    `sys.exit(0)`, or a hard `os._exit(0)`) did pass when exit status 0 was the criterion."""
    limits = SandboxLimits(timeout_s=10, cpu_s=5, namespaces=namespaces)
    problem = PROBLEMS[0]
    for escape in EARLY_EXITS:
        body = "    return None\n" + escape.replace("\n", "\n")  # a wrong body, then the exit at top level
        code = humaneval.program(problem, body, chat=False)
        result = run_python(code, limits)
        assert result.status == "failed", (escape, result.status, result.stderr)
    # the runner's own exit is not mistaken for one: a right answer passes in either mode
    assert run_python(humaneval.program(problem, problem["canonical_solution"], chat=False), limits).passed


def test_a_main_block_does_not_run_and_argv_is_the_program_alone():
    """--chat takes the reply's whole code block: its `if __name__ == "__main__":` must not run (HF
    code_eval's exec does not run it either), whether it would pass a wrong answer or fail a right one."""
    problem = PROBLEMS[0]
    wrong_then_exit = f"```python\ndef {problem['entry_point']}(*args):\n    return None\n\n" \
                      "if __name__ == '__main__':\n    import sys\n    sys.exit(0)\n```"
    right_then_input = f"```python\n{problem['prompt']}{problem['canonical_solution']}\n" \
                       "if __name__ == '__main__':\n    print(input())\n```"
    assert run_python(humaneval.program(problem, wrong_then_exit, chat=True), FAST).status == "failed"
    assert run_python(humaneval.program(problem, right_then_input, chat=True), FAST).passed
    result = run_python("import sys\nprint(__name__, sys.argv)", FAST)
    assert result.stdout.strip() == "__sandbox__ ['program.py']"


@pytest.mark.skipif(isolation() != ISOLATION[0], reason="this system lets no namespaces be made (unshare)")
def test_in_namespaces_the_evaluator_cannot_be_seen_and_nothing_outside_can_be_written(tmp_path):
    outside = tmp_path / "outside"
    code = ("import ctypes, os\nprint(os.getpid(), os.getppid())\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print(libc.kill({os.getpid()}, 9), ctypes.get_errno())\n"  # the evaluator's pid, past the guard
            f"import sqlite3\nsqlite3.connect({str(outside)!r}).execute('create table t(x)')\n")
    result = run_python(code, FAST)
    pids, kill = result.stdout.splitlines()[:2]
    assert pids == "1 0" and kill == "-1 3"  # pid 1 of its own namespace; the evaluator: no such process
    assert result.status == "failed" and "unable to open database file" in result.stderr
    assert not outside.exists()


def _processes_mentioning(text: str) -> list[str]:
    """The pids whose command line holds `text` (a sandbox folder: its programs)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(entry)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("namespaces", [True, False])
def test_nothing_the_program_started_outlives_it(namespaces):
    # a child forked past the guard (ctypes), which would sleep on after its parent ends
    code = "import ctypes, os, time\nprint(os.getcwd(), flush=True)\nif ctypes.CDLL(None).fork() == 0:\n" \
           "    time.sleep(60)\n"
    result = run_python(code, SandboxLimits(timeout_s=10, namespaces=namespaces))
    root = result.stdout.split()[0]
    time.sleep(0.2)
    assert result.passed and not _processes_mentioning(root)


def test_an_infinite_loop_is_killed_by_the_cpu_limit():
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=20, cpu_s=1))
    assert result.status == "timeout" and result.seconds < 15


def test_a_sleeping_program_is_killed_by_the_wall_clock():
    result = run_python("import time\ntime.sleep(60)\n", SandboxLimits(timeout_s=1.5, cpu_s=5))
    assert result.status == "timeout" and result.seconds < 10


def test_a_memory_bomb_is_stopped():
    # A generous wall clock: the address-space limit, not the clock, must be what stops these, even when a
    # loaded machine (the suite on two workers) slows the interpreter's start-up.
    limits = SandboxLimits(timeout_s=60, cpu_s=20, memory_mib=512)
    result = run_python("x = bytearray(3 * 1024 ** 3)\nprint('allocated')\n", limits)
    assert result.status == "memory" and "allocated" not in result.stdout
    grown = run_python("x = []\nwhile True:\n    x.append(' ' * 10 ** 7)\n", limits)
    assert grown.status == "memory" and grown.seconds < 60


def test_endless_output_is_bounded_by_the_file_size_limit():
    result = run_python("while True:\n    print('x' * 1000)\n", SandboxLimits(timeout_s=20, cpu_s=10, file_mib=1))
    assert not result.passed and len(result.stdout) < 5000


@pytest.mark.parametrize("namespace", [True, False])
def test_the_network_is_unreachable(namespace):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        limits = SandboxLimits(timeout_s=10, namespaces=namespace)
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3)\n",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n"):
            result = run_python(code, limits)
            assert result.status == "failed" and "network access is disabled" in result.stderr, result.stderr
        assert run_python("import socket\nsocket.getaddrinfo('localhost', 80)\n", limits).status == "failed"
    finally:
        listener.close()
    assert not accepted
    assert run_python("print(1)", SandboxLimits(namespaces=namespace)).isolation == \
        (isolation() if namespace else "none")


def test_files_land_in_the_temporary_directory_and_escapes_are_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    result = run_python("import os\nopen('here.txt', 'w').write('x')\nprint(os.getcwd())\n"
                        "print(sorted(os.listdir('.')))\nprint(os.environ['HOME'] == os.getcwd())\n", FAST)
    cwd, listing, home = result.stdout.splitlines()
    assert result.passed and os.path.basename(cwd).startswith("llmkit-sandbox-") and "here.txt" in listing
    assert home == "True"
    assert not os.path.exists(cwd)  # removed afterwards
    for code in (f"open({str(outside)!r}, 'w').write('x')", f"import pathlib\npathlib.Path({str(outside)!r}).write_text('x')",
                 f"import os\nos.system('touch {outside}')", f"import subprocess\nsubprocess.run(['touch', {str(outside)!r}])",
                 "import os\nos.chdir('/')", f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                 f"import os\nos.remove({str(tmp_path / 'keep')!r})"):
        (tmp_path / "keep").write_text("keep")
        result = run_python(code, FAST)
        assert result.status == "failed" and "disabled in the llmkit sandbox" in result.stderr, (code, result.stderr)
        assert not outside.exists() and (tmp_path / "keep").exists()


def test_the_child_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    result = run_python("import os\nprint(sorted(os.environ))\n", FAST)
    assert result.passed and "SECRET_TOKEN" not in result.stdout and "HTTPS_PROXY" not in result.stdout


@pytest.mark.parametrize("namespaces", [True, False])
def test_an_interrupted_run_leaves_no_program_running(namespaces, tmp_path, monkeypatch):
    """Ctrl-C while run_python waits: the program (its own session: a terminal's Ctrl-C never reaches it)
    is killed before the exception goes on, not left sleeping with its folder deleted."""
    import llmkit.eval.sandbox as sandbox

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the program's folder, and so its command line, in tmp_path
    monkeypatch.setattr(tempfile, "tempdir", None)
    waits, real_sleep = [], time.sleep

    def sleep(seconds):  # the Ctrl-C comes half a second into the wait, the program sleeping by then
        waits.append(seconds)
        if sum(waits) > 0.5:
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(sandbox.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        run_python("import time\ntime.sleep(60)\n", SandboxLimits(timeout_s=30, namespaces=namespaces))
    monkeypatch.undo()
    time.sleep(0.2)
    assert not _processes_mentioning(str(tmp_path))


@pytest.mark.parametrize("namespaces", [True, False])
def test_a_killed_evaluator_takes_its_program_with_it(namespaces, tmp_path):
    """kill -9 of the process that runs the sandbox: the program dies too (PR_SET_PDEATHSIG)."""
    evaluator = subprocess.Popen(
        [sys.executable, "-c", "from llmkit.eval.sandbox import SandboxLimits, run_python\n"
         f"run_python('import time\\ntime.sleep(60)', SandboxLimits(timeout_s=50, namespaces={namespaces}))"],
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)})

    def running() -> bool:  # the runner itself, past the launcher that execs it
        for pid in _processes_mentioning(str(tmp_path)):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-I", b"llmkit_runner.py"]:
                return True
        return False

    deadline = time.monotonic() + 30
    while not running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(), "the program never started"
    evaluator.kill()
    evaluator.wait()
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_mentioning(str(tmp_path))
