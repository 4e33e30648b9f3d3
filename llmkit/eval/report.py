"""What an evaluation run leaves behind, and how two runs are compared.

    OUT/results.json           settings, per-task metrics (value, 95% Wilson interval, n), CORE score
    OUT/results.md             the same as a Markdown table
    OUT/examples/TASK.jsonl    one line per example: prompt, choices, scores, prediction, gold, correct
                               (generative tasks: prompt, prediction = the generated text, extracted
                               answers or the sandbox's status, gold, correct, finish_reason)

`llmkit eval --text FILES --out DIR` writes the same two summary files for bits per byte (kind
"bits_per_byte": the settings, the total and each file's tokens, bytes and bits per byte); it has no
examples to pair, so --compare refuses it.

`compare_runs(A, B)` pairs the two runs' examples of each task they share and tests the difference in
accuracy with McNemar's exact test (llmkit/eval/stats.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import DataError, text_lines
from llmkit.eval.generative import GENERATIVE
from llmkit.eval.gsm8k import METRICS as GSM8K_METRICS
from llmkit.eval.metrics import CHOICE_METRICS, CORE_METRIC, centred
from llmkit.eval.stats import paired_comparison


COMPARABLE_METRICS = (*CHOICE_METRICS, *GSM8K_METRICS, "pass@1")


def write_run(out: str | Path, run: dict) -> Path:
    out = Path(out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    for name, records in run["examples"].items():
        atomic_write_text(out / "examples" / f"{name}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary = {k: v for k, v in run.items() if k != "examples"}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "results.md", format_table(summary) + "\n")
    return out


BPB_KIND = "bits_per_byte"


def bpb_record(result) -> dict:
    """A BpbResult as JSON: the sums (which add up over files) and the figures derived from them."""
    return {"tokens": result.tokens, "bytes": int(result.bytes), "nats": result.nats,
            "bpb": result.bpb if result.bytes else None, "loss": result.loss if result.tokens else None,
            "perplexity": result.perplexity if result.tokens else None}


def write_bpb_run(out: str | Path, run: dict) -> Path:
    """results.json and results.md of a bits-per-byte run, each written atomically (complete or absent)."""
    out = Path(out)
    atomic_write_text(out / "results.json", json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "results.md", format_bpb(run) + "\n")
    return out


def format_bpb(run: dict) -> str:
    """Markdown: one row per file, then the total (summed nats over summed bytes, not a mean of rows)."""
    def row(name: str, r: dict) -> str:
        bpb = "" if r["bpb"] is None else f"{r['bpb']:.4f}"
        ppl = "" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        return f"| {name} | {r['tokens']:,} | {r['bytes']:,} | {bpb} | {ppl} |"

    settings = run["settings"]
    lines = [f"model: {run.get('model', '?')}",
             f"bits per byte of {len(run['files'])} of {run['of']} file(s); windows of {settings['seq_len']} tokens, "
             + ("each file after a BOS token" if settings["add_bos"] else "no BOS token"),
             "", "| file | tokens | bytes | bits per byte | perplexity |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [row(f["path"], f) for f in run["files"]]
    lines.append(row("**total**", run["total"]))
    return "\n".join(lines)


def _percent(metric: dict | None) -> str:
    if metric is None:
        return ""
    low, high = metric["ci95"]
    return f"{100 * metric['value']:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def format_table(run: dict) -> str:
    """Markdown: one row per log-likelihood task, accuracies in % with their 95% Wilson intervals; then
    one row per metric of each generative task."""
    lines = [f"model: {run.get('model', '?')}" + (" (chat template)" if run.get("settings", {}).get("chat") else "")]
    if run.get("complete") is False:
        lines.append("interrupted: the tasks below finished; the same `llmkit eval` command resumes the run")
    scored = {name: t for name, t in run["tasks"].items() if t["kind"] != GENERATIVE}
    generated = {name: t for name, t in run["tasks"].items() if t["kind"] == GENERATIVE}
    if scored:
        lines += ["", "| task | kind | shots | n | acc % (95% CI) | acc_norm % | acc_per_token % | centred | truncated | "
                  "examples/s |",
                  "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    intervals = (run.get("core") or {}).get("centred_ci95", {})
    for name, t in scored.items():
        m = t["metrics"]
        shown = ("" if t["baseline"] is None
                 else f"{centred(m[CORE_METRIC[t['kind']]]['value'], t['baseline']):.3f}")
        if name in intervals:
            shown += f" ({intervals[name][0]:.2f} to {intervals[name][1]:.2f})"
        lines.append(f"| {name} | {t['kind']} | {t['shots']} | {t['n']} | {_percent(m.get('acc'))} | "
                     f"{_percent(m.get('acc_norm'))} | {_percent(m.get('acc_per_token'))} | {shown} | "
                     f"{t['truncated']} | {t['examples_per_s']:.1f} |")
    if generated:
        lines += ["", "| task | shots | n | metric | % (95% CI) | truncated | errors | examples/s |",
                  "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for name, t in generated.items():
        for metric, m in t["metrics"].items():
            lines.append(f"| {name} | {t['shots']} | {t['n']} | {metric} | {_percent(m)} | {t['truncated']} | "
                         f"{t['errors']} | {t['examples_per_s']:.2f} |")
    core = run.get("core")
    if core:
        limited = (" (on the first --limit examples of each task: not a random sample, so no interval)"
                   if core["limited"] else "")
        if core.get("sample"):
            low, high = core["ci95"]
            limited = (f", 95% CI {low:.4f} to {high:.4f} (an estimate from {core['sample']} random examples of "
                       "each task, --sample)")
        lines += ["", f"{core['name']}: {core['score']:.4f}{limited} — the mean centred accuracy over "
                  f"{core['tasks']} of DCLM's 22 CORE tasks (multiple choice and schema by acc_per_token), not comparable with "
                  "a published CORE score"]
    return "\n".join(lines)


def load_run(directory: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """(results.json, {task: per-example records}) of a run directory."""
    directory = Path(directory)
    results = directory / "results.json"
    if not results.is_file():
        raise DataError(f"{directory}: not an evaluation run (no results.json); pass a directory written by "
                        "`llmkit eval --tasks ... --out DIR`")
    damaged = "the run directory is damaged; run `llmkit eval` again"
    try:
        summary = json.loads(results.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{results}: not valid JSON ({e}); {damaged}") from None
    if isinstance(summary, dict) and summary.get("kind") == BPB_KIND:
        raise DataError(f"{directory}: a bits-per-byte run (`llmkit eval --text`), with no examples to pair; "
                        "--compare takes two `llmkit eval --tasks` runs")
    tasks = summary.get("tasks") if isinstance(summary, dict) else None
    if not isinstance(tasks, (dict, list)) or not all(isinstance(name, str) for name in tasks):
        raise DataError(f"{results}: has no \"tasks\" naming the tasks run; {damaged}")
    examples = {}
    for name in tasks:
        path = directory / "examples" / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing; the run directory is incomplete")
        records = []
        for number, line in enumerate(text_lines(path.read_text(encoding="utf-8")), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e}); {damaged}") from None
            missing = [k for k in ("index", "gold", "choices", "correct")
                       if not isinstance(record, dict) or k not in record]
            if missing or not isinstance(record["correct"], dict) or not record["correct"]:
                what = f"field {missing[0]!r} missing" if missing else "\"correct\" must map metrics to results"
                raise DataError(f"{path}:{number}: {what}; {damaged}")
            records.append(record)
        examples[name] = records
    return summary, examples


def compare_runs(run_a: str | Path, run_b: str | Path, metric: str = "acc") -> list[dict]:
    """Per shared task: paired accuracies of the examples both runs scored and McNemar's p-value."""
    if metric not in COMPARABLE_METRICS:
        raise DataError(f"--metric {metric}: use one of {', '.join(COMPARABLE_METRICS)}")
    (_, a), (_, b) = load_run(run_a), load_run(run_b)
    shared = [name for name in a if name in b]
    if not shared:
        raise DataError(f"{run_a} ran {', '.join(a)} and {run_b} ran {', '.join(b)}: no task in common")
    rows = []
    for name in shared:
        by_index = {r["index"]: r for r in b[name]}
        pairs = [(r, by_index[r["index"]]) for r in a[name] if r["index"] in by_index]
        for ra, rb in pairs:
            if ra["gold"] != rb["gold"] or ra["choices"] != rb["choices"]:
                raise DataError(f"{name} example {ra['index']}: the two runs did not score the same question "
                                "(different task files?)")
        if not pairs:
            raise DataError(f"{name}: the two runs share no example (different --limit ranges?)")
        # a task without the metric is compared by its first: LM tasks have acc only, GSM8K strict match
        used = metric if all(metric in r["correct"] for r, _ in pairs) else next(iter(pairs[0][0]["correct"]))
        result = paired_comparison([ra["correct"][used] for ra, _ in pairs], [rb["correct"][used] for _, rb in pairs])
        rows.append({"task": name, "metric": used, **result.__dict__, "difference": result.difference})
    return rows


def format_comparison(rows: list[dict], run_a: str, run_b: str) -> str:
    lines = [f"A = {run_a}", f"B = {run_b}", "",
             "| task | metric | n | A % | B % | B - A (points) | only A right | only B right | McNemar p |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['n']} | {100 * r['acc_a']:.1f} | {100 * r['acc_b']:.1f} | "
                     f"{100 * r['difference']:+.1f} | {r['only_a']} | {r['only_b']} | {r['p_value']:.3g} |")
    return "\n".join(lines)
