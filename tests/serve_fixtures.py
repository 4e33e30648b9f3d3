"""A real `llmkit serve` process on 127.0.0.1 for the server tests: started as a user starts it, on a
free port (--port 0; the URL is read from its first line), ready when /health answers 200, killed at
the end. Its log is printed if it dies."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import REPO


@contextlib.contextmanager
def running_server(args: list, log: Path, env_extra: dict | None = None, timeout_s: float = 180):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env_extra or {})}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "serve", "--port", "0", *map(str, args)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_ready(process, log, timeout_s)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(process: subprocess.Popen, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        if url is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else None
        if url is not None:
            try:
                status = httpx.get(f"{url}/health", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                return url
        time.sleep(0.05)
    raise RuntimeError(f"the server was not ready within {timeout_s} s:\n{log.read_text()}")


def metric(url: str, name: str, headers: dict | None = None) -> float:
    """One sample of /metrics (a name with its labels, e.g. 'llmkit_requests_running')."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def save_wide_tiny_model(out: Path, tokenizer, context: int) -> Path:
    """A random tiny model, its weights drawn wide (std 0.3) so that its greedy text varies with the prompt
    and wanders over the whole vocabulary (stray bytes, half characters), not one token repeated."""
    import torch

    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", max_seq_len=context)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    save_checkpoint(out, model, tokenizer)
    return out
