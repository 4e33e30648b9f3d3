"""Run benchmark tasks on a model: requests -> tokens -> batched scores -> metrics, with a progress bar.

    from llmkit.eval import evaluate_tasks, parse_task_list
    llm = llmkit.load("smollm2")
    run = evaluate_tasks(llm.model, llm.tokenizer, parse_task_list("arc_easy,copa", shots=0), limit=100)
    run["tasks"]["arc_easy"]["metrics"]["acc_norm"]["value"]

The returned run is plain data (JSON-ready): per task its settings, metrics with 95% Wilson intervals,
truncation count and speed, and the per-example records; plus the CORE score when the whole CORE
suite ran at its published settings (report.py writes it all to disk).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from llmkit.eval.metrics import core_score, example_correct, summarize
from llmkit.eval.prompts import build_requests
from llmkit.eval.scoring import encode_options, score_examples
from llmkit.eval.tasks import LANGUAGE_MODELING, TaskSpec, core_settings, read_examples


def default_batch_tokens(device) -> int:
    # Rows x padded length per forward. On a GPU a larger batch keeps the chip busy; on a CPU the
    # attention mask and activations of more tokens only cost memory without speed.
    return 32768 if str(device).startswith("cuda") else 4096


def evaluate_tasks(model, tokenizer, specs: Sequence[TaskSpec], *, limit: int | None = None, add_bos: bool = True,
                   batch_tokens: int | None = None, progress: bool = True) -> dict:
    device = model.tok_emb.weight.device
    batch_tokens = batch_tokens or default_batch_tokens(device)
    display = Progress(enabled=progress)
    tasks: dict[str, dict] = {}
    examples_out: dict[str, list[dict]] = {}
    try:
        for spec in specs:
            tasks[spec.name], examples_out[spec.name] = _evaluate_task(model, tokenizer, spec, limit, add_bos,
                                                                       batch_tokens, display)
    finally:
        display.close()
    run = {"settings": {"limit": limit, "add_bos": add_bos, "batch_tokens": batch_tokens, "device": str(device),
                        "dtype": str(model.tok_emb.weight.dtype).removeprefix("torch.")},
           "tasks": tasks, "examples": examples_out}
    core = core_subset(specs)
    if core is not None:
        run["core"] = {**core_score({name: tasks[name] for name in core}),
                       "name": f"CORE-{len(core)}", "limited": limit is not None}
    return run


def core_subset(specs: Sequence[TaskSpec]) -> list[str] | None:
    """The task names when the run is the whole CORE suite at its published shots, else None."""
    table = core_settings()["tasks"]
    ran = {s.name: s for s in specs}
    if set(table) - set(ran):
        return None
    if any(ran[name].shots != row["shots"] or ran[name].delimiter != row["delimiter"] for name, row in table.items()):
        return None
    return list(table)


def _evaluate_task(model, tokenizer, spec: TaskSpec, limit: int | None, add_bos: bool, batch_tokens: int,
                   display: "Progress") -> tuple[dict, list[dict]]:
    start = time.perf_counter()
    examples = read_examples(spec.path, spec.kind)
    indices = list(range(len(examples) if limit is None else min(limit, len(examples))))
    requests = build_requests(spec, examples, indices)
    pairs = [pair for r in requests for pair in r.pairs]
    owner = [r.index for r in requests for _ in r.pairs]
    flat = encode_options(tokenizer, pairs, model.config.max_seq_len, add_bos,
                          where=lambda i: f"{spec.path}, example {owner[i] + 1}")
    grouped, k = [], 0
    for r in requests:
        grouped.append(flat[k:k + len(r.pairs)])
        k += len(r.pairs)
    display.start(spec.name, len(requests))
    scores = score_examples(model, grouped, batch_tokens, on_batch=display.advance)
    seconds = time.perf_counter() - start
    records, marks = [], {}
    for r, options, option_scores in zip(requests, grouped, scores):
        picked, correct = example_correct(spec.kind, option_scores, r.choice_chars, r.gold)
        for name, right in correct.items():
            marks.setdefault(name, []).append(right)
        records.append({
            "index": r.index,
            "prompt": r.contexts[0] if len(set(r.contexts)) == 1 else r.contexts,
            "choices": r.continuations,
            "scores": [s.logprob for s in option_scores],
            "tokens": [s.tokens for s in option_scores],
            "prediction": picked["acc"] if picked else None,
            "predictions": picked,
            "gold": r.gold,
            "greedy": [s.greedy for s in option_scores] if spec.kind == LANGUAGE_MODELING else None,
            "correct": correct,
            "truncated": max(o.truncated for o in options),
        })
    truncated = sum(1 for rec in records if rec["truncated"])
    result = {"kind": spec.kind, "path": str(spec.path), "shots": spec.shots, "delimiter": spec.delimiter,
              "baseline": spec.baseline, "n": len(records), "of": len(examples),
              "metrics": {name: summarize(m) for name, m in marks.items()},
              "truncated": truncated, "seconds": seconds, "examples_per_s": len(records) / max(seconds, 1e-9)}
    display.finish(spec.name, result)
    return result, records


class Progress:
    """A rich progress bar with examples/s on a terminal; one line per finished task elsewhere."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.task = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self.bar = RichProgress(TextColumn("{task.description:>24}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                    console=Console(stderr=True))
            self.bar.start()

    def start(self, name: str, total: int) -> None:
        self.started = time.perf_counter()
        self.done = 0
        if self.bar is not None:
            self.task = self.bar.add_task(name, total=total, rate="")

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{rate:.1f} examples/s")

    def finish(self, name: str, result: dict) -> None:
        if self.enabled and self.bar is None:
            acc = result["metrics"]["acc"]["value"]
            print(f"{name}: {result['n']} examples in {result['seconds']:.1f} s "
                  f"({result['examples_per_s']:.1f} examples/s), acc {acc:.4f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
