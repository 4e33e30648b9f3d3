"""Throughput and memory of `llmkit data clean` on a generated messy web corpus.

    python benchmarks/data_clean.py            # 16 MB and 160 MB of JSONL, 8 MB of WARC, all cores

The corpus is the tests' generator (tests/data_clean_web.py): articles, spam, boilerplate, code, lorem
ipsum, adult spam, other languages, PII, exact and near duplicates. The pipeline is the shipped default
(llmkit/presets/clean/default.yaml) with a quality model trained first on a separate sample.
Each run is a separate process; peak RSS is read from /proc (VmHWM, the kernel's high-water mark) of the
driver and of every worker it starts, so it is exact per process. Throughput is input MB / wall time /
workers. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_jsonl(path: Path, mb: float, seed0: int) -> float:
    from data_clean_web import generate

    written, seed = 0, seed0
    with open(path, "w", encoding="utf-8") as f:
        while written < mb * 1e6:
            for d in generate(seed=seed):
                line = json.dumps({"id": d.id, "text": d.text, "url": d.url}) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
            seed += 1
    return written / 1e6


def make_warc(directory: Path, mb: float, seed0: int) -> float:
    """Crawl-like WARC files of ~1 MB of HTML each (a gzipped WARC cannot be split, so a crawl comes as
    many files, which is also what lets every core work)."""
    from data_clean_web import generate, write_warc

    directory.mkdir()
    size, seed = 0, seed0
    while size < mb * 1e6:
        batch = generate(seed=seed)
        write_warc(batch, directory / f"crawl-{seed:05d}.warc.gz")
        size += sum(len(d.html.encode("utf-8")) for d in batch)
        seed += 1
    return size / 1e6


def tree_peaks(pid: int, seen: dict[int, int]) -> int:
    """Record VmHWM (peak RSS, KiB) of `pid` and its descendants; return their current RSS sum (KiB)."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        seen[p.pid] = max(seen.get(p.pid, 0), int(line.split()[1]))
                    elif line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure(config: Path, inputs: str, out: Path, workers: int) -> dict:
    """Run the CLI as its own process tree and watch its memory."""
    cmd = [sys.executable, "-m", "llmkit.cli", "data", "clean", "--config", str(config), "--input", inputs,
           "--out", str(out), "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    tree_max = 0
    while proc.poll() is None:
        tree_max = max(tree_max, tree_peaks(proc.pid, peaks))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"clean failed:\n{stderr}")
    report = json.loads((out / "report" / "report.json").read_text())
    driver = peaks.get(proc.pid, 0)
    workers_peak = max((v for k, v in peaks.items() if k != proc.pid), default=0)
    return {"wall_s": wall, "report": report, "driver_mib": driver / 1024, "worker_mib": workers_peak / 1024,
            "tree_mib": tree_max / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=16.0, help="size of the 1x JSONL corpus (the 10x run is 10 times)")
    parser.add_argument("--warc-mb", type=float, default=8.0, help="HTML in the WARC run")
    parser.add_argument("--workers", type=int, default=0, help="0 = every core")
    parser.add_argument("--task-mb", type=float, default=8.0, help="input per task (JSONL is split, small files grouped)")
    args = parser.parse_args()
    import yaml

    from llmkit.data.clean import InputSpec, train_quality
    from llmkit.data.clean.pipeline import default_workers
    from data_clean_web import KEEP_LABELS, JUNK, generate, write_jsonl

    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-clean-") as tmp:
        tmp = Path(tmp)
        sample = generate(seed=10_000)
        write_jsonl([d for d in sample if d.label in KEEP_LABELS], tmp / "good.jsonl")
        write_jsonl([d for d in sample if d.label in JUNK], tmp / "bad.jsonl")
        train_quality([InputSpec(str(tmp / "good.jsonl"))], [InputSpec(str(tmp / "bad.jsonl"))], tmp / "q.safetensors")
        config = yaml.safe_load((ROOT / "llmkit" / "presets" / "clean" / "default.yaml").read_text())
        config["task_mb"] = args.task_mb
        for stage in config["stages"]:
            if stage["stage"] == "quality_model":
                stage.update(enabled=True, model=str(tmp / "q.safetensors"))
        (tmp / "pipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        runs = {}
        for name, mb in (("1x", args.mb), ("10x", 10 * args.mb)):
            size = make_jsonl(tmp / f"{name}.jsonl", mb, seed0=0)
            runs[name] = {"input_mb": size, **measure(tmp / "pipe.yaml", f"web={tmp / f'{name}.jsonl'}",
                                                      tmp / f"out-{name}", workers)}
            (tmp / f"{name}.jsonl").unlink()
        size = make_warc(tmp / "crawl", args.warc_mb, seed0=500)
        runs["warc"] = {"input_mb": size, **measure(tmp / "pipe.yaml", f"web={tmp / 'crawl'}", tmp / "out-warc",
                                                    workers)}

    print(f"llmkit data clean, default pipeline + quality model, {workers} worker(s), task_mb {args.task_mb}")
    print(f"{'run':6s} {'input MB':>9s} {'docs in':>9s} {'docs out':>9s} {'wall s':>7s} {'MB/s/core':>10s} "
          f"{'driver MiB':>11s} {'worker MiB':>11s} {'tree MiB':>9s}")
    for name, r in runs.items():
        rep = r["report"]
        r["mb_s_per_core"] = r["input_mb"] / r["wall_s"] / workers
        print(f"{name:6s} {r['input_mb']:9.1f} {rep['read']['documents']:9,d} {rep['output']['train_docs']:9,d} "
              f"{r['wall_s']:7.1f} {r['mb_s_per_core']:10.2f} {r['driver_mib']:11.0f} {r['worker_mib']:11.0f} "
              f"{r['tree_mib']:9.0f}")
    print("\nCPU seconds per stage (10x run; the MinHash signatures count under near_dedup):")
    for s in runs["10x"]["report"]["stages"]:
        rate = f"{s['bytes_in'] / 1e6 / s['seconds']:8.1f} MB/s" if s["seconds"] >= 0.05 else "       -"
        print(f"  {s['name']:18s} {s['seconds']:7.1f} s  {rate}")
    one, ten = runs["1x"], runs["10x"]
    print(json.dumps({
        "workers": workers,
        "input_mb": round(one["input_mb"], 1), "input_10x_mb": round(ten["input_mb"], 1),
        "mb_s_per_core": round(one["mb_s_per_core"], 3), "mb_s_per_core_10x": round(ten["mb_s_per_core"], 3),
        "warc_mb_s_per_core": round(runs["warc"]["mb_s_per_core"], 3),
        "peak_rss_mib": round(max(one["driver_mib"], one["worker_mib"]), 1),
        "peak_rss_10x_mib": round(max(ten["driver_mib"], ten["worker_mib"]), 1),
        "peak_rss_driver_mib": round(one["driver_mib"], 1), "peak_rss_driver_10x_mib": round(ten["driver_mib"], 1),
        "peak_rss_worker_mib": round(one["worker_mib"], 1), "peak_rss_worker_10x_mib": round(ten["worker_mib"], 1),
        "peak_rss_tree_mib": round(one["tree_mib"], 1), "peak_rss_tree_10x_mib": round(ten["tree_mib"], 1),
    }))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
