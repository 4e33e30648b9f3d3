"""Evaluation: bits per byte; benchmark tasks from JSONL files (multiple choice, schema, language
modelling; the CORE suite) scored in batches with shared prefixes; generative tasks (GSM8K with answer
extraction, HumanEval pass@1 in a sandbox) through the engine; a local checkpoint or an OpenAI-compatible
server (remote.py); statistics (Wilson, McNemar, bootstrap, Cohen's kappa); a judge (judge.py: MT-Bench
grading, pairwise Bradley-Terry ratings, agreement with people). (Later: scaling laws.)"""

import importlib

# Imported on first use (PEP 562), so that `llmkit.cli` can import llmkit.eval.judge_cli (argument
# parsing only) without loading torch for every verb.
_WHERE = {"GenerativeSpec": "generative", "generative_task_names": "generative", "compare_runs": "report",
          "format_comparison": "report", "format_table": "report", "load_run": "report", "write_run": "report",
          "evaluate_tasks": "runner", "evaluate_with": "runner", "mcnemar_exact": "stats",
          "paired_comparison": "stats", "wilson_interval": "stats", "TaskSpec": "tasks", "core_task_names": "tasks",
          "fetch_core_tasks": "tasks", "fetch_tasks": "tasks", "parse_task_list": "tasks"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"llmkit.eval.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'llmkit.eval' has no attribute {name!r}")
