"""The same tasks through lm-evaluation-harness (EleutherAI's `lm_eval`), to check llmkit's numbers
against the harness the field uses: task YAMLs that read llmkit's JSONL task files and build exactly
the prompts llmkit builds, and a runner for lm-eval's Hugging Face (`hf`) model.

    names = write_task_yamls(specs, folder)          # one lm-eval task per TaskSpec (0 shots)
    lm = hf_model(hf_dir, add_bos=False)             # lm_eval.models.huggingface.HFLM on a CPU
    result = run_lm_eval(lm, folder, names[0], limit=200)

Why the YAMLs match llmkit's prompts (prompts.py, scoring.py), token for token:
- multiple choice: llmkit scores `query + delimiter | choice` and moves the context's trailing
  whitespace onto the continuation before tokenizing; lm-eval scores `doc_to_text | target_delimiter +
  choice` and moves whitespace the same way (`_encode_pair`). So doc_to_text is the query plus the
  delimiter without its trailing whitespace, and target_delimiter is that whitespace: for
  `\\nAnswer: ` the prompt is `Question: ...\\nAnswer:` and the continuation ` choice`, lm-eval's own ARC
  and PIQA format.
- schema (WinoGrande): lm-eval's "multiple input" form, as its own winogrande task: doc_to_text returns
  the gold index, doc_to_choice the contexts, doc_to_target the shared continuation.
- llmkit strips the query and the shared continuation (Mosaic's datasets do; PIQA's queries end in a
  newline), not the choices or context options; the YAMLs do the same.
- acc_norm: both divide by the characters of the choice without the delimiter. For a schema task the
  options share their continuation, so llmkit's acc_norm equals its acc; lm-eval would divide by the
  context's characters (its doc_to_choice), a quirk its own winogrande avoids by reporting acc only,
  and so do these YAMLs.
- BOS: lm-eval's `add_bos_token` and llmkit's `add_bos` must agree (llmkit's own models want one;
  SmolLM2's BOS is its chat-turn marker and neither lm-eval nor lighteval adds it).
Few-shot prompts are not mirrored: lm-eval samples shots its own way, so only 0 shots is offered.

`lm_eval` is imported only by `hf_model` and `run_lm_eval`; it is a test dependency, not llmkit's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmkit.errors import ConfigError
from llmkit.eval.tasks import MULTIPLE_CHOICE, SCHEMA, TaskSpec

TASK_PREFIX = "llmkit_"

_MULTIPLE_CHOICE_FUNCTIONS = '''
def doc_to_text(doc):
    return doc["query"].strip() + PROMPT_END


def doc_to_choice(doc):
    return list(doc["choices"])


def doc_to_target(doc):
    return int(doc["gold"])
'''

_SCHEMA_FUNCTIONS = '''
def doc_to_text(doc):  # an int: lm-eval's "multiple input" form, the contexts are the choices
    return int(doc["gold"])


def doc_to_choice(doc):
    return [option + PROMPT_END for option in doc["context_options"]]


def doc_to_target(doc):
    return doc["continuation"].strip()
'''


def split_delimiter(delimiter: str) -> tuple[str, str]:
    """(what ends the prompt, lm-eval's target_delimiter): the delimiter without and with only its
    trailing whitespace."""
    kept = delimiter.rstrip()
    return kept, delimiter[len(kept):]


def write_task_yamls(specs: list[TaskSpec], folder: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """One lm-eval task per spec in `folder` (a YAML and its functions' module, named llmkit_TASK),
    reading the spec's JSONL file; returns the task names for TaskManager(include_path=folder).
    cache_dir: where `datasets` keeps its Arrow copy of the file (default: its own cache)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for spec in specs:
        if spec.kind not in (MULTIPLE_CHOICE, SCHEMA):
            raise ConfigError(f"{spec.name}: a {spec.kind} task; lm-eval parity covers multiple-choice and schema "
                              "tasks")
        if spec.shots:
            raise ConfigError(f"{spec.name}: {spec.shots} shots; lm-eval draws few-shot examples its own way, so "
                              "only 0-shot prompts are mirrored (pass shots=0)")
        name = TASK_PREFIX + spec.name
        prompt_end, target_delimiter = split_delimiter(spec.delimiter)
        functions = _MULTIPLE_CHOICE_FUNCTIONS if spec.kind == MULTIPLE_CHOICE else _SCHEMA_FUNCTIONS
        module = (f'"""lm-eval functions for llmkit task {spec.name} ({spec.kind}); written by '
                  f'llmkit.eval.lm_eval_bridge."""\n\nPROMPT_END = {prompt_end!r}\n{functions}')
        (folder / f"{name}.py").write_text(module, encoding="utf-8")
        kwargs = {"data_files": {"train": str(Path(spec.path).resolve())}}
        if cache_dir is not None:
            kwargs["cache_dir"] = str(cache_dir)
        metrics = ["acc", "acc_norm"] if spec.kind == MULTIPLE_CHOICE else ["acc"]
        config = {
            "task": name, "dataset_path": "json", "dataset_kwargs": kwargs, "test_split": "train",
            "output_type": "multiple_choice", "target_delimiter": target_delimiter,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
            "metadata": {"version": 1.0},
        }
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        text += "".join(f"{key}: !function {name}.{key}\n" for key in ("doc_to_text", "doc_to_choice", "doc_to_target"))
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
        names.append(name)
    return names


def hf_model(directory: str | Path, *, add_bos: bool, batch_size: int = 16, device: str = "cpu",
             dtype: str = "float32"):
    """lm-eval's Hugging Face model (HFLM) on a Hugging Face directory (`llmkit convert M --to hf`)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(directory), dtype=dtype, batch_size=batch_size, device=device, add_bos_token=add_bos)


@dataclass
class HarnessResult:
    metrics: dict[str, float]  # acc, acc_norm (multiple choice) as fractions
    n: int
    seconds: float  # the whole simple_evaluate call: reading the file, building requests, scoring
    loglikelihoods: dict[int, list[float]] = field(default_factory=dict)  # example index -> one per option

    @property
    def examples_per_s(self) -> float:
        return self.n / max(self.seconds, 1e-9)


def run_lm_eval(lm, folder: str | Path, name: str, limit: int | None = None) -> HarnessResult:
    """One task of `folder` (write_task_yamls) on lm-eval's model `lm`: its metrics, time and each
    example's per-option log-likelihoods."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    # include_defaults=False: index only these YAMLs, not lm-eval's thousands of built-in tasks
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager,
                                  limit=limit, num_fewshot=0, bootstrap_iters=0, log_samples=True)
    seconds = time.perf_counter() - started
    row = out["results"][name]
    metrics = {m: float(row[f"{m},none"]) for m in ("acc", "acc_norm") if f"{m},none" in row}
    samples = out["samples"][name]
    lls = {int(s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in samples}
    return HarnessResult(metrics, len(samples), seconds, lls)
