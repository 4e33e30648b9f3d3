"""Evaluation: bits per byte; benchmark tasks from JSONL files (multiple choice, schema, language
modelling; the CORE suite) scored in batches with shared prefixes; generative tasks (GSM8K with answer
extraction, HumanEval pass@1 in a sandbox) through the engine; a local checkpoint or an OpenAI-compatible
server (remote.py); statistics (Wilson, McNemar). (Later: judges, scaling laws.)"""

from llmkit.eval.generative import GenerativeSpec, generative_task_names
from llmkit.eval.report import compare_runs, format_comparison, format_table, load_run, write_run
from llmkit.eval.runner import evaluate_tasks, evaluate_with
from llmkit.eval.stats import mcnemar_exact, paired_comparison, wilson_interval
from llmkit.eval.tasks import TaskSpec, core_task_names, fetch_core_tasks, fetch_tasks, parse_task_list

__all__ = ["GenerativeSpec", "TaskSpec", "compare_runs", "core_task_names", "evaluate_tasks", "evaluate_with",
           "fetch_core_tasks", "fetch_tasks", "format_comparison", "format_table", "generative_task_names", "load_run",
           "mcnemar_exact", "paired_comparison", "parse_task_list", "wilson_interval", "write_run"]
