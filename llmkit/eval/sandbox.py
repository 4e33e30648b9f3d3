"""Running model-written Python: only ever in a separate, limited process, never in ours.

HumanEval (Chen et al. 2021) grades a completion by executing it against unit tests, and a model may
write anything: an endless loop, a memory bomb, `os.system("rm -rf ~")`, a connection out. `run_python`
runs a program in a child interpreter with these limits (`SandboxLimits`):

- its own process group in a fresh temporary directory, which is its working directory and $HOME, and
  is deleted afterwards; the environment is a minimal one (no proxies, no credentials, no PYTHONPATH),
  and the interpreter runs isolated (`python -I`: no user site-packages, no PYTHON* variables);
- resource limits set in the child before it starts (setrlimit): CPU seconds (RLIMIT_CPU), address
  space (RLIMIT_AS: a memory bomb gets a MemoryError), file size (RLIMIT_FSIZE), processes
  (RLIMIT_NPROC; not enforced for root), and open files (RLIMIT_NOFILE); a wall-clock timeout kills the
  whole process group (a sleeping program uses no CPU);
- no network: where Linux lets an unprivileged user create namespaces (`unshare -rn`), the child runs
  in an empty network namespace; in any case a guard run before the program replaces `socket.socket`
  and name resolution with functions that raise;
- the guard also turns off the obvious ways out (os.system, os.fork, subprocess, os.kill, removing,
  renaming, changing directory) and refuses to open files for writing outside the temporary directory,
  as OpenAI's human-eval `reliability_guard` does (reimplemented, not copied).

This is defence in depth for benchmark runs, not a security boundary: Python code that means harm can
undo an in-process guard (ctypes, reloading modules). Evaluate models you do not trust inside a
container or virtual machine as well.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Run before the program, in the child. It gets the sandbox directory as sys.argv[1]; names are kept out
# of the program's globals (everything lives in the function).
GUARD = r'''
def _llmkit_guard(root):
    import builtins, io, os, shutil, socket, subprocess
    import _socket

    def refuse(what):
        def refused(*args, **kwargs):
            raise PermissionError(f"{what} is disabled in the llmkit sandbox")
        return refused

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the llmkit sandbox")

    # classes, not functions: modules imported later subclass them (ssl.SSLSocket(socket.socket))
    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    class NoRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    socket.socket, socket.SocketType, _socket.socket, _socket.SocketType = NoSocket, NoSocket, NoRawSocket, NoRawSocket
    for module in (socket, _socket):
        for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr",
                     "socketpair", "fromfd", "create_server"):
            if hasattr(module, name):
                setattr(module, name, no_network)
    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
                 "replace", "chdir", "fchdir", "chmod", "chown", "lchown", "truncate", "putenv", "setuid",
                 "symlink", "link"):
        if hasattr(os, name):
            setattr(os, name, refuse(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse(f"shutil.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, refuse(f"subprocess.{name}"))

    real_open = builtins.open
    root = os.path.realpath(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fsdecode(file))
            if path != root and not path.startswith(root + os.sep):
                raise PermissionError(f"writing {path} is disabled in the llmkit sandbox (only under {root})")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open


import sys as _llmkit_sys
_llmkit_guard(_llmkit_sys.argv[1])
del _llmkit_guard, _llmkit_sys
'''

PROGRAM_FILE = "program.py"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mib: int = 1024  # address space (RLIMIT_AS)
    file_mib: int = 16  # largest file it may write (RLIMIT_FSIZE)
    processes: int = 16  # RLIMIT_NPROC (per user; root is exempt)
    open_files: int = 64  # RLIMIT_NOFILE
    network_namespace: bool = True  # run in an empty network namespace where the system allows it


@dataclass
class SandboxResult:
    status: str  # "passed" (exit 0) | "failed" | "timeout" | "memory" (out of its address space)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    network_namespace: bool  # the child ran in an empty network namespace (else the socket guard only)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Sets the limits, then becomes the program (exec, no fork). A launcher rather than Popen's preexec_fn,
# which is unsafe in a process with threads (HumanEval programs run from a thread pool).
LAUNCHER = """
import os, resource, sys
for item in sys.argv[1].split(","):
    name, value = item.split("=")
    resource.setrlimit(getattr(resource, name), (int(value), int(value)))
os.execv(sys.argv[2], sys.argv[2:])
"""


def _limit_spec(limits: SandboxLimits) -> str:
    mib = 1024 * 1024
    values = {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_mib * mib, "RLIMIT_FSIZE": limits.file_mib * mib,
              "RLIMIT_NPROC": limits.processes, "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0}
    return ",".join(f"{name}={value}" for name, value in values.items())


@functools.cache
def network_namespace_command() -> tuple[str, ...]:
    """The command prefix that runs a program without network (`unshare -rn`, or `unshare -n` as root),
    or () where namespaces are not available to this user."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "-n") if os.geteuid() == 0 else (unshare, "-rn"),):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _tail(file, limit: int = 4000) -> str:
    """The last `limit` bytes the program wrote to an output file, as text."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - limit))
    text = file.read().decode("utf-8", errors="replace")
    return text if size <= limit else "..." + text


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as a script in a limited child interpreter (see the module docstring) and report how
    it ended. Nothing the program does is trusted: its output is read as bytes and cut to a tail."""
    root = tempfile.mkdtemp(prefix="llmkit-sandbox-")
    try:
        with open(os.path.join(root, PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(GUARD + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        prefix = network_namespace_command() if limits.network_namespace else ()
        program = [*prefix, sys.executable, "-I", PROGRAM_FILE, root]
        command = [sys.executable, "-I", "-c", LAUNCHER, _limit_spec(limits), *program]
        start = time.perf_counter()
        # Output goes to unlinked files, not pipes: a program printing without end fills a file up to
        # RLIMIT_FSIZE and is killed, instead of filling this process's memory.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       start_new_session=True)
            timed_out = False
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                # not yet reaped, so its process group still exists: kill all of it
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            seconds = time.perf_counter() - start
            stdout, stderr = _tail(out), _tail(err)
        returncode = process.returncode
        if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
        elif returncode == 0:
            status = "passed"
        elif "MemoryError" in stderr:
            status = "memory"
        else:
            status = "failed"
        return SandboxResult(status, returncode, stdout, stderr, seconds, bool(prefix))
    finally:
        shutil.rmtree(root, ignore_errors=True)

