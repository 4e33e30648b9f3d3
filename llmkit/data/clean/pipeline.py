"""`llmkit data clean`: run a pipeline YAML over the inputs, on all local cores or on a Dask cluster.

    pass 1 (parallel, streaming)  read -> per-document stages before dedup -> p1 shard + signatures
    dedup  (once)                 exact clusters from text hashes; near clusters from LSH bands, one
                                  parallel task per group of bands; the drop list of each task
    pass 2 (parallel, streaming)  p1 shard - duplicates -> stages after dedup -> mixing -> output

Without a dedup stage the whole pipeline is one pass. Work is a list of independent tasks (groups of
files or byte ranges of large ones); an engine only has to map a function over them, so the local
engine is a process pool and the cluster engine is Dask's `Client.map`, with no scheduler of our own.
Every task writes its own files (atomically), so results do not depend on the engine or worker count.

Output: OUT/train/part-NNNNN.jsonl (the mix; {"text", "id", "source", ...} per line, the input of
`llmkit data prepare --input OUT/train`), OUT/anneal/ (the high-quality subset), OUT/report/. A run builds
them in OUT/.work and moves them into OUT only when complete: a failed or interrupted rerun leaves the
previous output as it was. A part is written only if a document goes into it, so a run that keeps no
document has no OUT/train.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from llmkit.atomic import atomic_open, overlapping_input
from llmkit.data.clean.config import InputSpec, PipelineConfig
from llmkit.data.clean.dedup import SignatureWriter, find_duplicates, lookup_ids
from llmkit.data.clean.document import Document, Rejection
from llmkit.data.clean.mixing import copies, in_anneal, mixture_summary
from llmkit.data.clean.output_folder import WORK_MARKER, prepare_out, swap_in
from llmkit.data.clean.quality import QualityModel
from llmkit.data.clean.readers import FORMAT_PACKAGES, ReadTask, plan_tasks, read_part
from llmkit.data.clean.report import RunStats, snippet, write_report
from llmkit.data.clean.safety import load_word_list
from llmkit.data.clean.shared import import_extra, require_extra
from llmkit.data.clean.stages import STAGES
from llmkit.errors import ConfigError, DataError

_STAGE_CACHE: dict[str, list] = {}


def build_stages(config: PipelineConfig, names: list[str]) -> list:
    """The stage objects for `names`, built once per process (loading a language or quality model
    takes time) and reused by every task the process runs."""
    key = repr([(s.name, s.params) for s in config.stages if s.name in names])
    if key not in _STAGE_CACHE:
        _STAGE_CACHE.clear()
        _STAGE_CACHE[key] = [STAGES[s.name].factory(s.params) for s in config.stages if s.name in names]
    return _STAGE_CACHE[key]


def split_stages(config: PipelineConfig) -> tuple[list[str], list[str], list[str]]:
    """(per-document stages before dedup, dedup stages, per-document stages after)."""
    before, dedup, after = [], [], []
    for spec in config.stages:
        if STAGES[spec.name].is_global:
            dedup.append(spec.name)
        else:
            (after if dedup else before).append(spec.name)
    return before, dedup, after


def run_stages(doc: Document, stages: list, stats: RunStats) -> Document | None:
    for stage in stages:
        entry = stats.stage(stage.name)
        before = doc.text if doc.html is None else doc.html
        nbytes = len(before.encode("utf-8"))
        entry["docs_in"] += 1
        entry["bytes_in"] += nbytes
        t0 = time.perf_counter()
        result = stage(doc)
        entry["seconds"] += time.perf_counter() - t0
        if isinstance(result, Rejection):
            entry["removed"][result.rule] = entry["removed"].get(result.rule, 0) + 1
            stats.add_example(entry, result.rule, {"id": doc.id, "detail": result.detail, "text": snippet(before)})
            return None
        doc = result
        entry["docs_out"] += 1
        entry["bytes_out"] += nbytes if doc.text is before else len(doc.text.encode("utf-8"))
        if doc.text is not before and doc.text != before:
            entry["modified"] += 1
        if stage.name == "quality_model":
            stats.add_quality(doc.meta["quality"])
    return doc


def _flush_counts(stages: list, stats: RunStats) -> None:
    for stage in stages:
        counts = getattr(stage, "counts", None)
        if counts:
            entry = stats.stage(stage.name)["counts"]
            for k, v in counts.items():
                entry[k] = entry.get(k, 0) + v
            counts.clear()


class _OutputFile:
    """A task's output file, made only if something is written to it (a task whose documents all go
    elsewhere leaves no empty part). It is an `atomic_open` file entered on `files`: it appears whole
    when the task ends, and a failed task leaves neither it nor its temporary file behind."""

    def __init__(self, files: ExitStack, path: Path):
        self.files, self.path, self.f = files, path, None

    def write(self, data: bytes) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = self.files.enter_context(atomic_open(self.path, "wb"))
        self.f.write(data)


class OutputWriter:
    """Writes kept documents into the mix (weighted) and the annealing subset."""

    def __init__(self, out: Path, task: int, config: PipelineConfig, stats: RunStats, files: ExitStack):
        self.train = _OutputFile(files, out / "train" / f"part-{task:05d}.jsonl")
        self.anneal = _OutputFile(files, out / "anneal" / f"part-{task:05d}.jsonl")
        self.mixing, self.stats = config.mixing, stats

    def write(self, doc: Document) -> None:
        record = {"text": doc.text, "id": doc.id, "source": doc.source}
        for key in ("url", "quality", "language"):
            if key in doc.meta:
                record[key] = doc.meta[key]
        line = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        nbytes = len(doc.text.encode("utf-8"))
        src = self.stats.source(doc.source)
        src["docs_kept"] += 1
        src["bytes_kept"] += nbytes
        n = copies(doc, self.mixing)
        for _ in range(n):
            self.train.write(line)
        src["docs_out"] += n
        src["bytes_out"] += n * nbytes
        if in_anneal(doc, self.mixing.anneal):
            self.anneal.write(line)
            src["anneal_docs"] += 1
            src["anneal_bytes"] += nbytes


def _stage_names(config: PipelineConfig) -> list[str]:
    return [s.name for s in config.stages]


def first_pass(args: tuple) -> dict:
    """Pass 1 of one task: read, run the stages before dedup, write the p1 shard and signatures (or,
    with no dedup stage, run everything and write the output directly)."""
    config, task, workdir, out = args
    workdir, out = Path(workdir), Path(out)
    before, dedup, after = split_stages(config)
    stats = RunStats(_stage_names(config), config.report_examples)
    stages = build_stages(config, before + ([] if dedup else after))
    bad: list[int] = []
    with ExitStack() as files:  # every file of the task appears when it ends, or none if it fails
        if dedup:
            signatures = SignatureWriter(workdir, task.index, config.stage("near_dedup"))
            shard = files.enter_context(atomic_open(workdir / f"p1-{task.index:05d}.jsonl", "wb"))
        else:
            writer = OutputWriter(out, task.index, config, stats, files)
        local = 0
        for part in task.parts:
            for doc in read_part(part, config.skip_bad_records, bad):
                raw = doc.html if doc.html is not None else doc.text
                nbytes = len(raw.encode("utf-8"))
                stats.data["read"]["documents"] += 1
                stats.data["read"]["bytes"] += nbytes
                src = stats.source(doc.source)
                src["docs_in"] += 1
                src["bytes_in"] += nbytes
                doc = run_stages(doc, stages, stats)
                if doc is None:
                    continue
                if dedup:
                    t0 = time.perf_counter()
                    signatures.add(local, doc)  # hashing and MinHash: the cost of deduplication per document
                    stats.stage(dedup[-1])["seconds"] += time.perf_counter() - t0
                    shard.write(json.dumps(doc.to_record(), ensure_ascii=False).encode("utf-8") + b"\n")
                    local += 1
                else:
                    writer.write(doc)
        if dedup:
            signatures.close()
    stats.data["read"]["bad_records"] += len(bad)
    _flush_counts(stages, stats)
    return stats.data


def second_pass(args: tuple) -> dict:
    """Pass 2 of one task: drop the duplicates, run the stages after dedup, write the output."""
    config, task, workdir, out = args
    workdir, out = Path(workdir), Path(out)
    _, _, after = split_stages(config)
    stats = RunStats(_stage_names(config), config.report_examples)
    stages = build_stages(config, after)
    drop = set(np.load(workdir / f"drop-{task.index:05d}.npy").tolist())
    with ExitStack() as files, open(workdir / f"p1-{task.index:05d}.jsonl", "rb") as f:
        writer = OutputWriter(out, task.index, config, stats, files)
        for local, line in enumerate(f):
            if local in drop:
                continue
            doc = run_stages(Document.from_record(json.loads(line)), stages, stats)
            if doc is not None:
                writer.write(doc)
    _flush_counts(stages, stats)
    return stats.data


def _tick(result, progress):
    if progress is not None:
        progress(result)
    return result


class _Progress:
    """One line per finished task on stderr: tasks done, MB read, MB/s (long runs show progress)."""

    def __init__(self, log, name: str, total_tasks: int, total_mb: float):
        self.log, self.name, self.total, self.total_mb = log, name, total_tasks, total_mb
        self.done, self.mb, self.start = 0, 0.0, time.perf_counter()

    def __call__(self, result: dict) -> None:
        self.done += 1
        self.mb += result["read"]["bytes"] / 1e6
        if self.done == self.total or self.total <= 20 or self.done % max(1, self.total // 20) == 0:
            rate = self.mb / max(1e-9, time.perf_counter() - self.start)
            shown = f", {self.mb:,.1f}/{self.total_mb:,.1f} MB, {rate:.2f} MB/s" if self.mb else ""
            self.log(f"clean: {self.name} {self.done}/{self.total} tasks{shown}")


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """All local cores: a process pool (forkserver, so workers start clean of the parent's threads)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def map(self, fn, items: list, progress=None) -> list:
        if self.workers <= 1 or len(items) <= 1:
            return [_tick(fn(item), progress) for item in items]
        if self.pool is None:
            import multiprocessing as mp

            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(["llmkit.data.clean.pipeline"])
            self.pool = ctx.Pool(self.workers)
        return [_tick(result, progress) for result in self.pool.imap(fn, items, chunksize=1)]

    def close(self, failed: bool = False) -> None:
        if self.pool is not None:
            if failed:
                self.pool.terminate()  # imap queued every task: close() would run them all before the error shows
            else:
                self.pool.close()
            self.pool.join()


class DaskExecutor:
    """Dask's distributed scheduler: `address` of a running cluster, or a local cluster of `workers`
    single-threaded processes (the local mode the tests run). Work and output directories must be on
    storage every worker sees (a shared filesystem) when the cluster spans machines."""

    def __init__(self, workers: int, address: str | None):
        import logging

        distributed = import_extra("distributed", "engine: dask")
        Client, LocalCluster = distributed.Client, distributed.LocalCluster
        if address:
            self.cluster = None
            self.client = Client(address)
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    def map(self, fn, items: list, progress=None) -> list:
        as_completed = import_extra("distributed", "engine: dask").as_completed
        futures = self.client.map(fn, items, pure=False)
        for future in as_completed(futures):
            _tick(future.result(), progress)
        return self.client.gather(futures)

    def close(self, failed: bool = False) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _check(config: PipelineConfig) -> None:
    before, dedup, _ = split_stages(config)
    for name in dedup:
        if config.stage(name).keep == "quality" and "quality_model" not in before:
            raise DataError(f"{config.path}: {name}.keep is 'quality' but no quality_model stage runs before "
                            "deduplication; move quality_model before the dedup stages or use keep: first")
    # A weight or an annealing source is looked up by source name, so a misspelt name would silently
    # leave that source at 1.0 (or the subset empty): every name must be one of the inputs' sources.
    sources = sorted({spec.source for spec in config.inputs})
    named = [("mixing.weights", name) for name in config.mixing.weights]
    named += [("mixing.anneal.sources", name) for name in config.mixing.anneal.sources or []]
    for field_name, name in named:
        if name not in sources:
            raise ConfigError(f"{config.path}: {field_name} names the source {name!r}, which no input has (sources: "
                              f"{', '.join(sources)}); name a source as NAME in --input NAME=PATH or `source:` of an input")
    # Files the stages need are checked here, before OUT is cleared and workers start.
    quality = config.stage("quality_model")
    if quality is not None:
        if not quality.model:
            raise ConfigError(f"{config.path}: stage quality_model: field 'model' is not set; train a model with "
                              "`llmkit data train-quality` and set its path, or set `enabled: false`")
        QualityModel.load(quality.model, weights=False)  # the header only: the driver never scores
    bad_words = config.stage("bad_words")
    if bad_words is not None:
        load_word_list(bad_words.word_list)


def _check_inputs(config: PipelineConfig, tasks: list[ReadTask], out: Path) -> None:
    # Every stage reads `doc.text`, which an HTML page only has once `extract` ran: without it first, pages
    # would be removed as empty (normalize) or all be "exact duplicates" of one another (dedup).
    if not config.stages or config.stages[0].name != "extract":
        for task in tasks:
            for part in task.parts:
                if part.format == "html" or (part.format == "warc" and ".wet" not in Path(part.path).name.lower()):
                    raise DataError(f"{part.path}: HTML input needs `- stage: extract` as the first stage in "
                                    f"{config.path}; add it (text inputs pass through it unchanged)")
    clash = overlapping_input(out, [spec.path for spec in config.inputs])
    if clash is not None:
        raise DataError(f"{out}: the output directory overlaps the input {clash}; a previous output "
                        "would be read as input (or an input deleted); choose --out outside the inputs")


def _packages_needed(config: PipelineConfig, tasks: list[ReadTask], engine: str) -> list[str]:
    """The packages of the `clean` extra this run imports (its stages, input formats and engine): all are
    checked before the output is cleared and workers start, not when a worker first needs one."""
    needed = [package for spec in config.stages for package in STAGES[spec.name].needs]
    needed += [FORMAT_PACKAGES[part.format] for task in tasks for part in task.parts if part.format in FORMAT_PACKAGES]
    if engine == "dask":
        needed.append("distributed")
    return list(dict.fromkeys(needed))


def run_pipeline(config: PipelineConfig, out: str | Path, inputs: list[InputSpec] | None = None,
                 workers: int | None = None, engine: str | None = None, log=None) -> dict:
    """Run the pipeline; return the summary (also written to OUT/report/report.json)."""
    start = time.perf_counter()
    if inputs:
        config.inputs = inputs
    engine = engine or config.engine
    workers = workers if workers is not None else config.workers
    workers = workers if workers and workers > 0 else default_workers()
    log = log or (lambda message: print(message, file=sys.stderr))
    _check(config)
    tasks: list[ReadTask] = plan_tasks(config.inputs, config.task_mb)
    require_extra(_packages_needed(config, tasks, engine), "data clean")
    out = Path(out)
    _check_inputs(config, tasks, out)
    created, lock = prepare_out(out)
    # Everything is built in OUT/.work and swapped in at the end: a run that fails (bad input, Ctrl-C, a
    # missing package in a worker) leaves the previous output as it was, and a killed one leaves it beside .work.
    workdir = out / ".work"
    staged = workdir / "output"
    try:
        staged.mkdir(parents=True)
        (workdir / WORK_MARKER).touch()
        summary = _run(config, tasks, workdir, staged, workers, engine, log, start)
        swap_in(staged, out, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    finally:  # after .work is gone: the next run must not find this one's scratch
        if lock is not None:
            os.close(lock)
    return summary


def _run(config: PipelineConfig, tasks: list[ReadTask], workdir: Path, staged: Path, workers: int, engine: str,
         log, start: float) -> dict:
    """Both passes and the report, written into `staged` (train/, anneal/, report/)."""
    before, dedup, after = split_stages(config)
    executor = DaskExecutor(workers, config.dask_address) if engine == "dask" else LocalExecutor(workers)
    stats = RunStats(_stage_names(config), config.report_examples)
    failed = True
    try:
        total_mb = sum(t.nbytes for t in tasks) / 1e6
        log(f"clean: {len(tasks)} task(s), {total_mb:,.1f} MB, {workers} worker(s), engine {engine}")
        progress = _Progress(log, "pass 1", len(tasks), total_mb)
        for result in executor.map(first_pass, [(config, t, str(workdir), str(staged)) for t in tasks], progress):
            stats.merge(result)
        dedup_info = None
        if dedup:
            reaching = stats.data["stages"][before[-1]]["docs_out"] if before else stats.data["read"]["documents"]
            log(f"clean: deduplicating {reaching:,} documents")
            dedup_info = find_duplicates(workdir, [t.index for t in tasks], config.stage("exact_dedup"),
                                         config.stage("near_dedup"), executor.map, n_band_tasks=2 * workers)
            for name, step in dedup_info["steps"].items():
                entry = stats.stage(name)
                entry.update(docs_in=step["docs_in"], docs_out=step["docs_in"] - step["dropped"],
                             bytes_in=step["bytes_in"], bytes_out=step["bytes_in"] - step["bytes_dropped"])
                if step["dropped"]:
                    entry["removed"][f"{name}.duplicate"] = step["dropped"]
            progress = _Progress(log, "pass 2", len(tasks), 0.0)
            for result in executor.map(second_pass, [(config, t, str(workdir), str(staged)) for t in tasks], progress):
                stats.merge(result)
        failed = False
    finally:
        executor.close(failed)
    summary = _summary(config, stats, dedup_info, workdir, workers, engine, time.perf_counter() - start)
    report_dir = staged / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    if dedup_info:
        summary["dedup"]["largest"] = _name_clusters(dedup_info["largest"], workdir)
        _write_named_clusters(Path(dedup_info["clusters_file"]), workdir, report_dir / "dedup_clusters.jsonl")
    write_report(report_dir, summary)
    return summary


def _name_clusters(clusters: list[dict], workdir: Path) -> list[dict]:
    """Clusters with document ids and sources in place of keys."""
    names = lookup_ids(workdir, {k for c in clusters for k in c["members"]})
    out = []
    for c in clusters:
        entry = {"kind": c["kind"], "kept": c["kept"], "kept_id": names[c["kept"]][0],
                 "members": c["members"], "member_ids": [names[k][0] for k in c["members"]],
                 "sources": [names[k][1] for k in c["members"]]}
        if "jaccard_to_kept" in c:
            entry["jaccard_to_kept"] = {names[int(k)][0]: v for k, v in c["jaccard_to_kept"].items()}
        out.append(entry)
    return out


def _write_named_clusters(src: Path, workdir: Path, dest: Path) -> None:
    """Stream the cluster log into the report, a block of clusters at a time."""
    with open(src, encoding="utf-8") as f, atomic_open(dest, "w") as g:
        while True:
            block = [json.loads(line) for _, line in zip(range(10_000), f)]
            if not block:
                break
            for c in _name_clusters(block, workdir):
                g.write(json.dumps(c, ensure_ascii=False) + "\n")


def _summary(config, stats: RunStats, dedup_info, workdir, workers, engine, seconds) -> dict:
    d = stats.data
    stages = [{"name": s.name, **d["stages"][s.name]} for s in config.stages]
    sources = d["sources"]
    output = {"train_docs": sum(s["docs_out"] for s in sources.values()),
              "train_bytes": sum(s["bytes_out"] for s in sources.values()),
              "anneal_docs": sum(s["anneal_docs"] for s in sources.values()),
              "anneal_bytes": sum(s["anneal_bytes"] for s in sources.values())}
    summary = {"config": config.path, "inputs": [vars(i) for i in config.inputs], "engine": engine,
               "workers": workers, "seconds": seconds, "read": d["read"], "stages": stages, "output": output,
               "mixing": mixture_summary(sources, config.mixing),
               "quality": {"histogram": d["quality_hist"], "bins": len(d["quality_hist"])}}
    if dedup_info:
        summary["dedup"] = {"documents": dedup_info["documents"], "dropped": dedup_info["dropped"],
                            "exact_clusters": dedup_info["counts"]["exact"],
                            "near_clusters": dedup_info["counts"]["near"]}
    return summary
