"""Evaluation: bits per byte; benchmark tasks from JSONL files (multiple choice, schema, language
modelling; the CORE suite) scored in batches with shared prefixes; generative tasks (GSM8K with answer
extraction, HumanEval pass@1 in a sandbox) through the engine; a local checkpoint or an OpenAI-compatible
server (remote.py); statistics (Wilson, McNemar, bootstrap, Cohen's kappa); a judge (judge.py: MT-Bench
grading, pairwise Bradley-Terry ratings, agreement with people)."""

import importlib

# Names re-exported from the submodules, imported on first use (PEP 562): `llmkit --help` imports this
# package to build the eval, answer and judge verbs' parsers (commands.py, judge_cli.py) without torch.
_EXPORTS = {
    "generative": ["GenerativeSpec", "generative_task_names"],
    "report": ["compare_runs", "format_comparison", "format_table", "load_run", "write_run"],
    "runner": ["evaluate_tasks", "evaluate_with"],
    "stats": ["mcnemar_exact", "paired_comparison", "wilson_interval"],
    "tasks": ["TaskSpec", "core_task_names", "fetch_core_tasks", "fetch_tasks", "parse_task_list"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"llmkit.eval.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'llmkit.eval' has no attribute {name!r}")
