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
- namespaces, where Linux lets this user create them (`unshare`, with a user namespace when not
  root; probed once, `isolation()`): an empty network namespace; its own process namespace, where the
  program is pid 1, cannot see or signal any process outside (the evaluator included), and everything
  it started dies with it; its own mount namespace, where every mount but its directory is read-only,
  so writing anywhere else fails in the kernel whatever call makes it. Without them, the guard below;
- a guard run before the program (in-process, as OpenAI's human-eval `reliability_guard`,
  reimplemented): sockets and name resolution raise; os.system, fork, subprocess, kill, removing,
  renaming, changing directory raise (in `os` and `posix` both); opening or making files outside the
  directory raises;
- passing means running to the end: the program is exec()'d as a module named `__sandbox__` (so an
  `if __name__ == "__main__":` block does not run, as in HF `code_eval`, lm-evaluation-harness's
  grader); `sys.exit(0)` or `os._exit(0)` before the tests ran is a failure, not a pass (the runner
  reports completion on a pipe with a token, after the program returned; a program that digs the token
  out of the runner's frames could forge it: this catches habits, not cheats);
- if the evaluator dies (even by SIGKILL), the program dies with it (PR_SET_PDEATHSIG, set on `unshare`
  by DEATH_LINK and by the launcher on itself); if run_python is interrupted (Ctrl-C), it kills the
  program before it returns.

This is defence in depth for benchmark runs, not a security boundary: Python code that means harm can
undo an in-process guard (ctypes, reloading modules). Evaluate models you do not trust inside a
container or virtual machine as well.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

# The child's entry point (RUNNER_FILE): the guard, then the program. The program is compiled from its own
# file and run with exec() as a module named __sandbox__, as HF `code_eval` (lm-evaluation-harness's
# grader) does: an `if __name__ == "__main__":` block the model wrote does not run. It passes only when it
# runs to its end: then, and only then, the runner writes a token (read from stdin before the program
# starts) to a pipe of the parent's. Any exception, SystemExit included (`sys.exit(0)` before the tests
# ran), and any early `os._exit(0)` leave no token: failed. The token lives in the same process as the
# program, so code written to find it can (through frames or memory): it stops the early exits models
# write by habit, not a program that sets out to cheat; the namespaces bound what such code can do.
RUNNER = r"""
def _llmkit_guard(root):
    import builtins, io, os, posix, shutil, signal, socket, subprocess
    import _io, _socket

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
    # os's functions are posix's: both modules get the refusal
    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
                 "replace", "chdir", "fchdir", "chmod", "chown", "lchown", "truncate", "putenv", "setuid",
                 "symlink", "link", "pidfd_open", "setsid", "setpgid", "chroot"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = refuse("signal.pidfd_send_signal")
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, refuse(f"shutil.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, refuse(f"subprocess.{name}"))

    root = os.path.realpath(root)

    def check_inside(file, doing):
        if isinstance(file, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(file))
            if path != root and not path.startswith(root + os.sep):
                raise PermissionError(f"{doing} {path} is disabled in the llmkit sandbox (only under {root})")

    real_open, real_os_open, real_mkdir, real_utime = builtins.open, os.open, os.mkdir, os.utime

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            check_inside(file, "writing")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            check_inside(path, "writing")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        check_inside(path, "making")
        return real_mkdir(path, *args, **kwargs)

    def guarded_utime(path, *args, **kwargs):
        check_inside(path, "touching")
        return real_utime(path, *args, **kwargs)

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                check_inside(file, "writing")
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = GuardedFileIO
    for module in (os, posix):
        module.open, module.mkdir, module.utime = guarded_os_open, guarded_mkdir, guarded_utime


def _llmkit_run():
    import os, sys, traceback
    root, result_fd, program_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    token = sys.stdin.buffer.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the program reads an empty stdin, as before
    os.close(null)
    leave = os._exit  # kept before the program can replace it
    # Kept in a closure, not in this frame's variables, which the program's frame can reach by its
    # f_back: that only raises the bar (see run_python: the token catches early exits, not cheats).
    finish = (lambda write, fd, secret: lambda: write(fd, secret))(os.write, result_fd, token)
    del token, result_fd
    sys.argv = [program_file]

    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    try:
        with open(program_file, encoding="utf-8") as f:
            code = compile(f.read(), os.path.join(root, program_file), "exec")
        _llmkit_guard(root)
        exec(code, {"__name__": "__sandbox__", "__file__": program_file, "__builtins__": __builtins__})
    except BaseException as e:
        if isinstance(e, SystemExit):
            print(f"the program exited (SystemExit {e.code!r}) before it ran to its end: not passed", file=sys.stderr)
            status = e.code if isinstance(e.code, int) and e.code != 0 else 1
        else:
            traceback.print_exc()
            status = 1
        flush()
        leave(status)
    flush()
    finish()
    leave(0)


_llmkit_run()
"""

PROGRAM_FILE = "program.py"
RUNNER_FILE = "llmkit_runner.py"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_mib: int = 1024  # address space (RLIMIT_AS)
    file_mib: int = 16  # largest file it may write (RLIMIT_FSIZE)
    processes: int = 16  # RLIMIT_NPROC (per user; root is exempt: the process namespace bounds it instead)
    open_files: int = 64  # RLIMIT_NOFILE
    namespaces: bool = True  # run in fresh Linux namespaces where the system allows it (see ISOLATION)


# What a child is shut in, strongest first; `isolation()` finds the first this system allows.
ISOLATION = ("network, processes, read-only files", "network", "none")


@dataclass
class SandboxResult:
    status: str  # "passed" (ran to its end) | "failed" | "timeout" | "memory" (out of its address space)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str  # one of ISOLATION: the namespaces it ran in (beyond the in-process guard)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs first in the child (inside its namespaces): with a directory to keep writable, makes every other
# mount read-only (the child's own mount namespace: nothing outside changes); sets the limits; then
# becomes the runner (exec, no fork). A launcher rather than Popen's preexec_fn, which is unsafe in a
# process with threads (HumanEval programs run from a thread pool).
LAUNCHER = r"""
import ctypes, os, re, resource, sys
spec, writable, parent, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the process that started this one (kept across exec)
if parent and os.getppid() != parent:  # it died before the line above: no signal will come
    sys.exit("llmkit sandbox: the evaluator is gone")
if writable:
    MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
    # a mount's own flags must be kept when remounting it inside a user namespace (they are locked)
    KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
    if libc.mount(writable.encode(), writable.encode(), None, MS_BIND, None) != 0:
        sys.exit(f"llmkit sandbox: cannot bind {writable} (errno {ctypes.get_errno()})")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == writable:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(KEEP.get(o, 0) for o in fields[5].split(","))
        if libc.mount(None, point.encode(), None, flags, None) != 0 and point == "/":
            sys.exit(f"llmkit sandbox: cannot make / read-only (errno {ctypes.get_errno()})")
    os.chdir(writable)  # the working directory opened before the bind is the read-only one beneath it
for item in spec.split(","):
    name, value = item.split("=")
    resource.setrlimit(getattr(resource, name), (int(value), int(value)))
os.execv(argv[0], argv)
"""


def _limit_spec(limits: SandboxLimits) -> str:
    mib = 1024 * 1024
    values = {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_mib * mib, "RLIMIT_FSIZE": limits.file_mib * mib,
              "RLIMIT_NPROC": limits.processes, "RLIMIT_NOFILE": limits.open_files, "RLIMIT_CORE": 0}
    return ",".join(f"{name}={value}" for name, value in values.items())


# Becomes `unshare` (exec) tied to the evaluator: PR_SET_PDEATHSIG is kept across exec, and a parent that
# died before it was set (no signal would come) is caught by the check after. (util-linux's `setpriv
# --pdeathsig` does the first half, from version 2.33 on, and not the check.)
DEATH_LINK = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):
    sys.exit("llmkit sandbox: the evaluator is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _namespace_prefix(level: str) -> tuple[str, ...]:
    unshare = shutil.which("unshare") or "unshare"
    dies_with_us = (sys.executable, "-I", "-S", "-c", DEATH_LINK, str(os.getpid()))  # `unshare` dies with us
    user = () if os.geteuid() == 0 else ("--map-root-user",)  # unprivileged: a user namespace first
    if level == "network":
        return (*dies_with_us, unshare, *user, "--net")
    # --pid --fork: the program is pid 1 of its own process namespace; it cannot see or signal anything
    # outside, and everything it started dies with it. --mount-proc: a /proc of that namespace alone.
    return (*dies_with_us, unshare, *user, "--net", "--pid", "--fork", "--kill-child", "--mount-proc")


_PROBE_LOCK = threading.Lock()  # run_programs' threads ask at once: one probe, one answer for all


def isolation() -> str:
    with _PROBE_LOCK:
        return _probe_isolation()


@functools.cache
def _probe_isolation() -> str:
    """The strongest of ISOLATION that this system lets this user create: probed once, by starting the
    launcher in it and checking that it holds (a file outside the writable directory cannot be made)."""
    for level in ISOLATION[:-1]:
        with tempfile.TemporaryDirectory(prefix="llmkit-sandbox-probe-") as root:
            outside = os.path.join(os.path.dirname(root), os.path.basename(root) + "-outside")
            writable = root if level == ISOLATION[0] else ""
            # read-only files: writing in its directory works, writing beside it fails
            check = (f"open('inside', 'w').close()\ntry:\n    open({outside!r}, 'w')\nexcept OSError:\n"
                     "    raise SystemExit(0)\nraise SystemExit(3)") if writable else "pass"
            command = [*_namespace_prefix(level), sys.executable, "-I", "-c", LAUNCHER, "RLIMIT_CORE=0", writable,
                       "0", sys.executable, "-I", "-c", check]
            try:
                probe = subprocess.run(command, capture_output=True, timeout=20, cwd=root)
            except (OSError, subprocess.TimeoutExpired):
                continue
            finally:
                if os.path.exists(outside):
                    os.remove(outside)
            if probe.returncode == 0:
                return level
    return ISOLATION[-1]


def _tail(file, limit: int = 4000) -> str:
    """The last `limit` bytes the program wrote to an output file, as text."""
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - limit))
    text = file.read().decode("utf-8", errors="replace")
    return text if size <= limit else "..." + text


def _wait(process: subprocess.Popen, deadline: float) -> tuple[bool, float, int]:
    """Wait for the child until `deadline` (then kill it): (timed out, CPU seconds it and what it reaped
    used, exit code; the kernel's accounting ends a CPU-limited child a few ms short of the limit).
    Its whole process group is killed before it is reaped, so that nothing it started
    outlives it (inside a process namespace the kernel does this too). The CPU time says whether the CPU
    limit ended it: in a process namespace the exit status of `unshare` does not carry the signal."""
    pause, timed_out = 0.001, False
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.perf_counter() > deadline:
            timed_out = True
            break
        time.sleep(pause)
        pause = min(2 * pause, 0.02)
    try:  # not yet reaped, so its process group still exists
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return timed_out, usage.ru_utime + usage.ru_stime, process.returncode


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` in a limited child interpreter (see the module docstring) and report how it ended: it
    passed only when it ran to its end. Nothing the program does is trusted: its output is read as bytes
    and cut to a tail."""
    level = isolation() if limits.namespaces else ISOLATION[-1]
    root = os.path.realpath(tempfile.mkdtemp(prefix="llmkit-sandbox-"))
    token = secrets.token_hex(16).encode()
    done_read, done_write = os.pipe()
    try:
        for name, text in ((PROGRAM_FILE, code), (RUNNER_FILE, RUNNER)):
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        prefix = () if level == ISOLATION[-1] else _namespace_prefix(level)
        command = [*prefix, sys.executable, "-I", "-c", LAUNCHER, _limit_spec(limits),
                   root if level == ISOLATION[0] else "",
                   # its parent, checked after its own PR_SET_PDEATHSIG: the evaluator, through the execs of the
                   # prefix; in a process namespace `unshare` forks it (and dies with the evaluator itself)
                   "0" if level == ISOLATION[0] else str(os.getpid()),
                   sys.executable, "-I", RUNNER_FILE, root, str(done_write), PROGRAM_FILE]
        start = time.perf_counter()
        # Output goes to unlinked files, not pipes: a program printing without end fills a file up to
        # RLIMIT_FSIZE and is killed, instead of filling this process's memory.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                       start_new_session=True, pass_fds=(done_write,))
            os.close(done_write)
            done_write = -1
            try:
                try:  # the token fits a pipe's buffer: this never blocks
                    process.stdin.write(token + b"\n")
                    process.stdin.close()
                except OSError:  # it died before reading: it did not pass
                    pass
                timed_out, cpu_s, returncode = _wait(process, start + limits.timeout_s)
            except BaseException:  # Ctrl-C or an error here: the program must not run on without us
                if process.returncode is None:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                        os.wait4(process.pid, 0)
                    except (ProcessLookupError, ChildProcessError):  # _wait had reaped it just before
                        pass
                    process.returncode = -signal.SIGKILL
                raise
            seconds = time.perf_counter() - start
            stdout, stderr = _tail(out), _tail(err)
        os.set_blocking(done_read, False)
        try:
            finished = os.read(done_read, 64) == token
        except BlockingIOError:  # nothing written
            finished = False
        if finished:
            status = "passed"
        elif timed_out or cpu_s >= limits.cpu_s - 0.1 or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            status = "timeout"
        elif "MemoryError" in stderr:
            status = "memory"
        else:
            status = "failed"
        return SandboxResult(status, returncode, stdout, stderr, seconds, level)
    finally:
        os.close(done_read)
        if done_write >= 0:
            os.close(done_write)
        shutil.rmtree(root, ignore_errors=True)
