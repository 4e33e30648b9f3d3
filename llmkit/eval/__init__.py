"""Evaluation: bits per byte; benchmark tasks from JSONL files (multiple choice, schema, language
modelling; the CORE suite) scored in batches with shared prefixes; statistics (Wilson, McNemar).
(Later: generative tasks, judges, scaling laws.)"""

from llmkit.eval.report import compare_runs, format_comparison, format_table, load_run, write_run
from llmkit.eval.runner import evaluate_tasks
from llmkit.eval.stats import mcnemar_exact, paired_comparison, wilson_interval
from llmkit.eval.tasks import TaskSpec, core_task_names, fetch_core_tasks, parse_task_list

__all__ = ["TaskSpec", "compare_runs", "core_task_names", "evaluate_tasks", "fetch_core_tasks", "format_comparison",
           "format_table", "load_run", "mcnemar_exact", "paired_comparison", "parse_task_list", "wilson_interval",
           "write_run"]
