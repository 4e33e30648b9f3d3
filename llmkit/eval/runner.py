"""Run benchmark tasks on a model: requests -> scores or generations -> metrics, with a progress bar.

    from llmkit.eval import evaluate_tasks, parse_task_list
    llm = llmkit.load("smollm2")
    run = evaluate_tasks(llm.model, llm.tokenizer, parse_task_list("arc_easy,copa", shots=0), limit=100)
    run["tasks"]["arc_easy"]["metrics"]["acc_norm"]["value"]

The model is reached through a backend: `LocalBackend` (a checkpoint in this process, backends.py) or
`RemoteBackend` (an OpenAI-compatible server, remote.py); `evaluate_with(backend, specs)` runs any
tasks on either. Log-likelihood tasks (multiple choice, schema, language modelling) are scored;
generative tasks (GSM8K, HumanEval: generative.py) are generated greedily and graded.

The returned run is plain data (JSON-ready): per task its settings, metrics with 95% Wilson intervals,
truncation count and speed, and the per-example records; plus the CORE score when the whole CORE
suite ran at its published settings (report.py writes it all to disk).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable, Sequence

from llmkit.errors import ConfigError
import llmkit.eval.gsm8k as gsm8k
import llmkit.eval.humaneval as humaneval
from llmkit.eval.backends import LocalBackend, default_batch_tokens
from llmkit.eval.generative import GENERATIVE, GenerativeSpec
from llmkit.eval.metrics import core_score, example_correct, summarize
from llmkit.eval.prompts import build_requests
from llmkit.eval.sandbox import SandboxLimits
from llmkit.eval.tasks import LANGUAGE_MODELING, TaskSpec, core_settings, read_examples

__all__ = ["default_batch_tokens", "evaluate_tasks", "evaluate_with"]


def evaluate_tasks(model, tokenizer, specs: Sequence[TaskSpec | GenerativeSpec], *, limit: int | None = None,
                   sample: int | None = None, sample_seed: int = 0, add_bos: bool = True,
                   batch_tokens: int | None = None, progress: bool = True, chat: bool = False,
                   engine=None, sandbox: SandboxLimits = SandboxLimits(), resume: tuple[dict, dict] | None = None,
                   on_task: Callable[[dict], None] | None = None) -> dict:
    """Tasks on a model in this process. limit: the first N examples of each task; sample: N drawn at
    random (chosen_indices). chat: render every prompt with the tokenizer's chat template (the user turn
    is the question, the assistant's reply the continuation). engine: the Engine that generates (default:
    a new one on the model). resume, on_task: see evaluate_with."""
    backend = LocalBackend(model, tokenizer, engine=engine, add_bos=add_bos, batch_tokens=batch_tokens, chat=chat)
    return evaluate_with(backend, specs, limit=limit, sample=sample, sample_seed=sample_seed, progress=progress,
                         sandbox=sandbox, resume=resume, on_task=on_task)


def chosen_indices(total: int, task: str, limit: int | None = None, sample: int | None = None,
                   seed: int = 0) -> list[int]:
    """The examples of a task that run, in file order: all; the first `limit` (quick, but a file's order
    is often not random: sorted by source or difficulty); or `sample` drawn without replacement, seeded by
    the seed and the task's name so every model and rerun scores the same ones. nanochat's CORE runs take
    a seeded shuffle's head the same way; a random sample is what an interval on the score assumes."""
    if sample is not None:
        # a str seed is hashed with SHA-512 by random.Random: the same draw in every process and version
        return sorted(random.Random(f"{seed}:{task}").sample(range(total), sample)) if sample < total \
            else list(range(total))
    return list(range(total if limit is None else min(limit, total)))


def evaluate_with(backend, specs: Sequence[TaskSpec | GenerativeSpec], *, limit: int | None = None,
                  sample: int | None = None, sample_seed: int = 0, progress: bool = True,
                  sandbox: SandboxLimits = SandboxLimits(), resume: tuple[dict, dict] | None = None,
                  on_task: Callable[[dict], None] | None = None) -> dict:
    """resume: (results.json, examples) of an interrupted run (report.load_run): its tasks run with the
    same settings are taken as they are, not run again. on_task: called with the run so far (its
    "complete" false until the last task) after each task, so that an interruption loses one task at most."""
    if backend.chat and not getattr(backend, "scores_chat", True) and any(
            not isinstance(s, GenerativeSpec) for s in specs):
        raise ConfigError("--chat with log-likelihood tasks needs the chat template on this side; a server's "
                          "/v1/chat/completions returns no prompt log-probabilities. Evaluate the checkpoint "
                          "locally, or drop --chat for those tasks")
    if limit is not None and sample is not None:
        raise ConfigError("give --limit (the first N examples) or --sample (N at random), not both")
    subset = {"limit": limit, "sample": sample, "seed": sample_seed}
    settings = {"limit": limit, **({"sample": sample, "sample_seed": sample_seed} if sample is not None else {}),
                **backend.settings()}
    done = _resumable(resume, settings, specs)
    data = {spec.name: _read_task(spec) for spec in specs if spec.name not in done}
    display = Progress(enabled=progress)
    tasks: dict[str, dict] = {}
    examples_out: dict[str, list[dict]] = {}
    try:
        for spec in specs:
            if spec.name in done:
                result = done[spec.name]
            elif isinstance(spec, GenerativeSpec):
                result = _evaluate_generative(backend, spec, data.pop(spec.name), subset, display, sandbox)
            else:
                result = _evaluate_task(backend, spec, data.pop(spec.name), subset, display)
            result[0]["spec"] = spec_record(spec)
            tasks[spec.name], examples_out[spec.name] = result
            if on_task is not None:
                on_task(_run(settings, tasks, examples_out, specs, limit, sample))
    finally:
        display.close()
    return _run(settings, tasks, examples_out, specs, limit, sample)


def _run(settings: dict, tasks: dict, examples: dict, specs: Sequence, limit: int | None, sample: int | None) -> dict:
    run = {"settings": settings, "tasks": dict(tasks), "examples": dict(examples), "complete": len(tasks) == len(specs)}
    core = core_subset(specs) if run["complete"] else None
    if core is not None:
        run["core"] = {**core_score({name: tasks[name] for name in core}, sampled=sample is not None),
                       "name": f"CORE-{len(core)}", "limited": limit is not None, "sample": sample}
    return run


def spec_record(spec: TaskSpec | GenerativeSpec) -> dict:
    """A task's settings as JSON (files, shots, delimiters, stop strings ...): what a resumed run's task
    must share with the interrupted run's to be taken from it."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))


def check_resumed_settings(summary: dict, settings: dict, only_given: bool = False) -> None:
    """Refuse to resume an interrupted run (its results.json `summary`) under other settings. only_given:
    compare just the keys of `settings` (the ones known before the model loads: `llmkit eval` checks
    those first, so a mismatch is not found only after a large model has loaded)."""
    before = summary.get("settings") or {}
    keys = set(settings) if only_given else set(before) | set(settings)
    differ = sorted(k for k in keys if before.get(k) != settings.get(k))
    if differ:
        raise ConfigError("the output folder holds an interrupted run with other settings ("
                          + ", ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
                          + "); rerun with its settings to resume it, or choose another --out")


def _resumable(resume: tuple[dict, dict] | None, settings: dict, specs: Sequence) -> dict[str, tuple[dict, list]]:
    """The interrupted run's tasks that this run would compute again alike: {name: (result, records)}."""
    if resume is None:
        return {}
    summary, examples = resume
    check_resumed_settings(summary, settings)
    done = {}
    for spec in specs:
        result = summary["tasks"].get(spec.name) if isinstance(summary["tasks"], dict) else None
        if isinstance(result, dict) and result.get("spec") == spec_record(spec) and spec.name in examples:
            done[spec.name] = (result, examples[spec.name])
    return done


def core_subset(specs: Sequence[TaskSpec]) -> list[str] | None:
    """The task names when the run is the whole CORE suite at its published shots, else None."""
    table = core_settings()["tasks"]
    ran = {s.name: s for s in specs}
    if set(table) - set(ran):
        return None
    if any(ran[name].shots != row["shots"] or ran[name].delimiter != row["delimiter"] for name, row in table.items()):
        return None
    return list(table)


def _read_task(spec: TaskSpec | GenerativeSpec):
    """A task's examples, read and checked before the first task runs: a bad line in the last task's file is
    said at once, not after hours of the tasks before it (whose results would be kept, but the run not done)."""
    if not isinstance(spec, GenerativeSpec):
        return read_examples(spec.path, spec.kind)
    if spec.family == "gsm8k":
        return gsm8k.read_gsm8k(spec.files[0]), gsm8k.read_gsm8k(spec.files[1])
    return humaneval.read_problems(spec.files[0])


def _evaluate_task(backend, spec: TaskSpec, examples: list[dict], subset: dict,
                   display: "Progress") -> tuple[dict, list[dict]]:
    start = time.perf_counter()
    indices = chosen_indices(len(examples), spec.name, **subset)
    requests = build_requests(spec, examples, indices, chat=backend.render_chat if backend.chat else None)
    owner = [r.index for r in requests for _ in r.pairs]
    display.start(spec.name, len(requests))
    scored = backend.loglikelihood(requests, where=lambda i: f"{spec.path}, example {owner[i] + 1}",
                                   on_batch=display.advance)
    seconds = time.perf_counter() - start
    records, marks = [], {}
    for r, example in zip(requests, scored):
        option_scores = example.scores
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
            "truncated": example.truncated,
        })
    truncated = sum(1 for rec in records if rec["truncated"])
    result = {"kind": spec.kind, "path": str(spec.path), "shots": spec.shots, "delimiter": spec.delimiter,
              "baseline": spec.baseline, "n": len(records), "of": len(examples),
              "metrics": {name: summarize(m) for name, m in marks.items()},
              "truncated": truncated, "seconds": seconds, "examples_per_s": len(records) / max(seconds, 1e-9)}
    display.finish(spec.name, result)
    return result, records


def _evaluate_generative(backend, spec: GenerativeSpec, data, subset: dict, display: "Progress",
                         sandbox: SandboxLimits) -> tuple[dict, list[dict]]:
    """(the task's result, its per-example records) through a backend (backends.py or remote.py); data:
    _read_task's (test, train) questions of GSM8K, or HumanEval's problems."""
    start = time.perf_counter()
    chat = backend.chat
    if spec.family == "gsm8k":
        test, train = data
        shots = gsm8k.exemplars(train, spec.shots, spec.fewshot_seed)
        indices = chosen_indices(len(test), spec.name, **subset)
        items, total = [test[i] for i in indices], len(test)
        prompts = [gsm8k.build_prompt(q["question"], shots, spec.style, spec.example_delimiter, chat) for q in items]
    else:
        problems = data
        indices = chosen_indices(len(problems), spec.name, **subset)
        items, total = [problems[i] for i in indices], len(problems)
        prompts = [humaneval.build_prompt(p, chat) for p in items]
    # With --chat the reply is the answer and HumanEval runs its first code block, whose own lines the
    # completion stops (a top-level def, #, if) would cut: only the end of the turn ends it.
    stop = () if chat and spec.family == "humaneval" else spec.stop
    display.start(spec.name, len(items))
    generated = backend.generate(prompts, spec.max_new_tokens, stop, on_done=display.advance)
    records, isolation = [], {}
    if spec.family == "gsm8k":
        for i, item, prompt, g in zip(indices, items, prompts, generated):
            extracted, correct = gsm8k.grade(g.text, item["answer"], spec.style)
            records.append(_record(i, prompt, g, gsm8k.gsm8k_gold(item["answer"]), correct, extracted=extracted))
    else:
        programs = [humaneval.program(p, g.text, chat) for p, g in zip(items, generated)]
        display.start(f"{spec.name} (tests)", len(items))
        results = humaneval.run_programs(programs, sandbox, on_done=display.advance)
        isolation = {"sandbox": sorted({r.isolation for r in results})}  # what the programs were shut in
        for i, item, prompt, g, r in zip(indices, items, prompts, generated, results):
            records.append(_record(i, prompt, g, item["task_id"], {"pass@1": r.passed}, status=r.status,
                                   stderr=r.stderr[-1000:], seconds=round(r.seconds, 3)))
    seconds = time.perf_counter() - start
    metric_names = gsm8k.METRICS if spec.family == "gsm8k" else ("pass@1",)
    result = {"kind": GENERATIVE, "family": spec.family, "path": str(spec.path), "shots": spec.shots,
              "style": spec.style, "delimiter": spec.delimiter, "baseline": None, "max_new_tokens": spec.max_new_tokens,
              "stop": list(stop), "n": len(records), "of": total,
              "metrics": {m: summarize([r["correct"][m] for r in records]) for m in metric_names},
              "truncated": sum(1 for r in records if r["truncated"]),
              "errors": sum(1 for r in records if r["finish_reason"] == "error"),
              "seconds": seconds, "examples_per_s": len(records) / max(seconds, 1e-9), **isolation}
    display.finish(spec.name, result)
    return result, records


def _record(index: int, prompt, g, gold: str, correct: dict, **extra) -> dict:
    return {"index": index, "prompt": prompt, "choices": None, "prediction": g.text, "gold": gold, **extra,
            "correct": correct, "finish_reason": g.finish_reason, "tokens": g.tokens, "truncated": g.truncated,
            **({"error": g.error} if g.error else {})}


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
            shown = ", ".join(f"{metric} {m['value']:.4f}" for metric, m in result["metrics"].items())
            print(f"{name}: {result['n']} examples in {result['seconds']:.1f} s "
                  f"({result['examples_per_s']:.1f} examples/s), {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
