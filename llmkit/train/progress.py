"""What a training run shows and leaves behind: a progress bar (step, loss, tokens/s, MFU, ETA),
`metrics.jsonl` (one JSON object per logged step or evaluation) and a loss-curve PNG."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from llmkit.atomic import atomic_open, atomic_write_text
from llmkit.errors import text_lines


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int | None = None,
                       repeats: int = 8) -> float:
    """Achieved FLOP/s of a large square matmul, the best of a few runs: the denominator of MFU
    measured on this machine, now, rather than a datasheet figure the CPU never reaches."""
    # 1024 on a CPU: within a few percent of larger sizes (cache-blocked kernels peak early) at 1/8 of the
    # time, which every training process pays (2.8 s vs 0.36 s on one core of a 2-core EPYC).
    size = size or (8192 if device.type == "cuda" else 1024)
    # its own generator: measuring (at the start, or again mid-run) never moves the run's random stream
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    best = float("inf")
    for _ in range(3):
        a @ b  # warm-up: kernels chosen, memory touched
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


class MetricsLog:
    """Append-only metrics.jsonl; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            # A process killed mid-write leaves a torn last line: dropped with the lines past the checkpoint.
            kept = [line for line in text_lines(path.read_text(errors="replace"))
                    if (record := _parse(line)) is not None and record.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class ProgressDisplay:
    """A rich progress bar on a terminal; plain log lines elsewhere (CI, files, pipes)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, status="")
            self.bar.start()

    def update(self, step: int, status: str, log_line: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, status=status)
        elif log_line:
            print(f"step {step}  {status}", flush=True)

    def set_total(self, total_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=total_steps)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Training loss per step and validation loss per evaluation, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for line in text_lines(metrics_path.read_text(errors="replace")) if (r := _parse(line)) is not None]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(png_path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
