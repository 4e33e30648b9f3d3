"""The speedrun: from raw text to an assistant, every stage, in 20 minutes on a laptop CPU.

    corpus -> tokenizer -> token shards -> pretrain -> built-in task -> SFT -> on-policy preference pairs
           -> reward model -> DPO -> RLHF -> evaluation on held-out questions -> report card -> sample chat

The preference pairs are collected after SFT, as in InstructGPT: the SFT model answers the preference
questions and its wrong answers become the rejected replies (`llmkit label --judge answers`; where it
answers right, the task's plausible wrong option stays the rejected one). At the CPU plan's size DPO
and RLHF do not change held-out accuracy significantly (paired tests in the report; BENCHMARKS.md).

Each stage is the ordinary stage function with its config from the same TrainConfig.preset that
`llmkit pretrain / sft / reward / dpo / rlhf` use: a training preset plus the fields of
`llmkit/presets/speedrun/{cpu,gpu}.yaml`; each training stage has a time limit (the Trainer fits its
schedule to it), so the whole run has a budget. The corpus, tokenizer and token shards are the
pretraining stage's built-in ones (cached under $LLMKIT_CACHE/data, so a second run starts at once).
Everything else lands in one directory: base/, sft/, reward/, dpo/, rlhf/ (checkpoints), task/ (the
questions), report.md, report.json, accuracy.png, training.png.
"""

from __future__ import annotations

import json
import shlex
import time
from contextlib import contextmanager
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import ConfigError, text_lines
from llmkit.yaml_config import Located, load_preset, parse_overrides, where

STAGES = ("tokenizer", "task", "pretrain", "sft", "collect", "reward", "dpo", "rlhf")
TRAINING_STAGES = ("pretrain", "sft", "reward", "dpo", "rlhf")


def load_plan(size: str, overrides: list[str] | None = None) -> dict:
    """The plan of llmkit/presets/speedrun/SIZE.yaml with `STAGE.field=value` overrides; each value
    remembers where it was set (the plan's line, or the command line) for error messages."""
    plan, path = load_preset("speedrun", size, "speedrun size")
    plan.path = str(path)  # where stage_config's errors point
    for key, value in parse_overrides(overrides or [], source="command line").items():
        stage, _, field = key.partition(".")
        if stage not in STAGES or not field:
            raise ConfigError(f"speedrun override {key!r}: write STAGE.field=value with STAGE one of {', '.join(STAGES)}")
        if not isinstance(plan.get(stage), Located):
            plan[stage] = Located(plan.get(stage) or {})
        plan[stage][field] = value
        plan[stage].sources[field] = "command line"
    return plan


def stage_config(plan: dict, stage: str, **wiring):
    """A training stage's config: its preset (`preset:` in the plan), the plan's fields over it, then the
    speedrun's wiring (paths) — through the same TrainConfig.preset as `llmkit pretrain / sft / ...`."""
    from llmkit.train.config import TrainConfig
    from llmkit.train.post_config import DPOConfig, RewardConfig, RLConfig, SFTConfig

    config_class = {"pretrain": TrainConfig, "sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig,
                    "rlhf": RLConfig}[stage]
    path = getattr(plan, "path", "speedrun plan")
    fields = plan.get(stage)
    if not isinstance(fields, dict) or not isinstance(fields.get("preset"), str):
        raise ConfigError(f"{where(path, plan, stage)}: a training stage needs `preset: NAME` (llmkit/presets/train)")
    overrides = Located({k: v for k, v in fields.items() if k != "preset"})
    if isinstance(fields, Located):
        overrides.lines, overrides.sources = fields.lines, fields.sources
    for key, value in wiring.items():
        overrides[key] = str(value) if isinstance(value, Path) else value
        overrides.sources[key] = "speedrun wiring"
    try:
        return config_class.preset(fields["preset"], overrides, source=path)
    except ConfigError as e:
        raise ConfigError(f"speedrun stage {stage} (preset {fields['preset']}): {e}") from None


def check_plan(plan: dict, out: Path) -> None:
    """Build every stage's config before the first stage runs, so a misspelt field or a bad value in the
    plan or an override stops the run at once rather than after the stages before it (minutes)."""
    import inspect

    from llmkit.data.assistant_task import write_task
    from llmkit.train.label import label_by_answer

    earlier = sorted(out.glob("*/checkpoints/latest"))
    if earlier:  # each stage would refuse to start among them, minutes in: say so now
        raise ConfigError(f"{out}: holds an earlier run ({earlier[0].parent.parent.name}/ has checkpoints); "
                          f"remove {out} or choose another --out")
    known = {"tokenizer": {"vocab_size"},
             "task": set(inspect.signature(write_task).parameters) - {"out", "corpus_dir"},
             "collect": set(inspect.signature(label_by_answer).parameters) - {"policy", "input_path", "out", "records"}}
    for stage, fields in known.items():
        unknown = sorted(set(plan.get(stage) or {}) - fields)
        if unknown:
            raise ConfigError(f"speedrun stage {stage}: unknown field(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(fields))}")
    check_plain_stages(plan)  # first: the pretraining stage's vocab_size is the tokenizer stage's
    for stage in TRAINING_STAGES:
        stage_config(plan, stage, **stage_wiring(plan, stage, out))


# The values of the stages that are no training config, checked as a config's are (type, then range), so
# that `task.train_per_kind=abc` stops the run at once, naming where it was set, rather than as a traceback
# after minutes of pretraining (it did).
PLAIN_FIELDS = {
    "tokenizer": {"vocab_size": (int, "[1, 2^21]")},
    "task": {"seed": (int, "[0, 2^63)"), "train_per_kind": (int, "[1, 2^31)"), "heldout_per_kind": (int, "[1, 2^31)")},
    "collect": {"max_new_tokens": (int, "[1, 2^31)"), "samples": (int, "[0, 2^31)"), "temperature": (float, "[0, inf)"),
                "seed": (int, "[-2^63, 2^63)")},
}


def check_plain_stages(plan: dict) -> None:
    from llmkit.errors import LLMKitError
    from llmkit.yaml_config import interval, matches_type

    path = getattr(plan, "path", "speedrun plan")
    for stage, kinds in PLAIN_FIELDS.items():
        fields = plan.get(stage) or {}
        for key, (kind, allowed) in kinds.items():
            if key not in fields:
                continue
            value, at = fields[key], where(path, fields, key)
            if not matches_type(value, kind):
                raise ConfigError(f"speedrun stage {stage}: {at}: must be {kind.__name__}, not {value!r}")
            if value not in interval(allowed):  # (NaN is in no interval)
                raise ConfigError(f"speedrun stage {stage}: {at}: {value!r} is out of range: must be in {allowed}")
    collect = plan.get("collect") or {}
    try:  # what the engine itself refuses (a temperature too small to divide by), before any stage runs
        from llmkit.infer import SamplingParams

        SamplingParams(max_new_tokens=collect.get("max_new_tokens", 24), temperature=collect.get("temperature", 1.0),
                       seed=collect.get("seed", 0))
    except LLMKitError as e:
        raise ConfigError(f"speedrun stage collect: {e}") from None


def stage_wiring(plan: dict, stage: str, out: Path, task: dict | None = None) -> dict:
    """The fields the speedrun sets itself: where each stage's data and starting model are. The task's
    files (written by the task stage) stand in as paths under out/task before they exist."""
    if stage == "pretrain":  # the built-in corpus, tokenized with a BPE of the plan's vocabulary
        return {"data": "shakespeare", "vocab_size": plan["tokenizer"]["vocab_size"]}
    task = task or {name: out / "task" / f"{name}.jsonl" for name in ("sft", "preference", "heldout")}
    data = task["sft"] if stage == "sft" else out / "task" / "preference_on_policy.jsonl"
    wiring = {"init_from": out / ("base" if stage == "sft" else "sft"), "data": data, "val_data": task["heldout"],
              "eval_task": False, "plot": True}
    if stage == "rlhf":
        wiring["reward_model"] = out / "reward"
    return wiring


class Clock:
    def __init__(self):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        begin = time.perf_counter()
        print(f"\n=== {name} (at {(begin - self.start) / 60:.1f} min) ===", flush=True)
        yield
        self.stages[name] = time.perf_counter() - begin
        print(f"=== {name}: {self.stages[name]:.0f} s ===", flush=True)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def speedrun(out: str | Path, size: str = "cpu", overrides: list[str] | None = None) -> dict:
    import torch

    from llmkit.atomic import make_output_dir
    from llmkit.data.assistant_task import write_task
    from llmkit.data.corpus import cache_root, fetch_shakespeare
    from llmkit.train.config import machine_note
    from llmkit.train.dpo import run_dpo
    from llmkit.train.label import label_by_answer
    from llmkit.train.pretrain import builtin_shards, pretrain
    from llmkit.train.reward import run_reward
    from llmkit.train.rl import run_rl
    from llmkit.train.sft import run_sft

    plan = load_plan(size, overrides)
    out = Path(out)
    check_plan(plan, out)
    make_output_dir(out)
    clock = Clock()
    results: dict = {"size": size, "overrides": list(overrides or []), "plan": plan, "stages": {}}
    with clock.stage("corpus and tokenizer"):  # the pretraining stage's own preparation (cached for the next run)
        builtin_shards(plan["tokenizer"]["vocab_size"])
        corpus = fetch_shakespeare(cache_root() / "data" / "shakespeare")
    with clock.stage("pretrain"):
        config = stage_config(plan, "pretrain", **stage_wiring(plan, "pretrain", out))
        note = machine_note(plan["pretrain"]["preset"], config)
        if note:
            print(note)
        result = pretrain(config, out / "base")
        results["stages"]["pretrain"] = {"steps": result.steps, "tokens": result.tokens, **result.eval}
    with clock.stage("task"):
        task = write_task(out / "task", corpus / "train", **plan["task"])
    with clock.stage("sft"):
        result = run_sft(stage_config(plan, "sft", **stage_wiring(plan, "sft", out, task)), out / "sft")
        results["stages"]["sft"] = {"steps": result.steps, **result.eval}
    with clock.stage("collect"):
        on_policy = out / "task" / "preference_on_policy.jsonl"
        results["stages"]["collect"] = label_by_answer(out / "sft", task["preference"], on_policy,
                                                       **plan.get("collect", {}))
        print(f"collect: {results['stages']['collect']}", flush=True)
    for stage, run in (("reward", run_reward), ("dpo", run_dpo), ("rlhf", run_rl)):
        with clock.stage(stage):
            result = run(stage_config(plan, stage, **stage_wiring(plan, stage, out, task)), out / stage)
            results["stages"][stage] = {"steps": result.steps, **result.eval}
    with clock.stage("evaluate"):
        results["accuracy"], results["samples"] = evaluate_models(out, task["heldout"])
        results["paired"] = compare_models(results["accuracy"])
    with clock.stage("report"):
        results["chat"] = sample_chat(out / "dpo")
        results["timings_s"] = {k: round(v, 1) for k, v in clock.stages.items()}
        results["total_s"] = round(clock.total, 1)
        results["threads"] = torch.get_num_threads()
        write_report(out, results)
    results["total_s"] = round(clock.total, 1)
    results["report"] = str(out / "report.md")
    atomic_write_text(out / "report.json", json.dumps({k: v for k, v in results.items() if k != "plan"}, indent=2) + "\n")
    return results


MODELS = ("base", "sft", "dpo", "rlhf")


def evaluate_models(out: Path, heldout_file: Path) -> tuple[dict, dict]:
    """Held-out accuracy of each stage's model, greedy, through the engine; and a few of its answers."""
    import llmkit
    from llmkit.train.chat_data import load_records
    from llmkit.train.post_common import task_accuracy

    records = load_records(heldout_file, "preference")
    accuracy, samples = {}, {}
    for name in MODELS:
        llm = llmkit.load(out / name)
        result = task_accuracy(llm.model, llm.tokenizer, records)
        samples[name] = result.pop("examples")
        accuracy[name] = result
        print(f"{name:>5}: accuracy {result['accuracy']:.3f} (95% CI {result['ci95'][0]:.3f}-{result['ci95'][1]:.3f}) "
              + "  ".join(f"{k} {v:.2f}" for k, v in result["by_kind"].items()), flush=True)
    return accuracy, samples


# each stage against the model it started from, on the same questions
PAIRS = (("base", "sft"), ("sft", "dpo"), ("sft", "rlhf"))


def compare_models(accuracy: dict) -> dict:
    """Paired comparisons (difference, questions gained / lost, McNemar p) of each stage with its start;
    removes the per-question lists from `accuracy`."""
    from llmkit.data.assistant_task import paired_comparison

    correct = {name: result.pop("correct") for name, result in accuracy.items()}
    paired = {}
    for before, after in PAIRS:
        paired[f"{after} vs {before}"] = c = paired_comparison(correct[before], correct[after])
        print(f"{after} vs {before}: {c['difference']:+.3f} ({c['gained']} questions gained, {c['lost']} lost; "
              f"McNemar p = {c['p_value']:.3g})", flush=True)
    return paired


def sample_chat(model_dir: Path) -> list[dict]:
    """A short chat with the final model, through the Python API (`llmkit chat --model DIR` does the same)."""
    import llmkit

    llm = llmkit.load(model_dir)
    questions = ["In which play does Shylock appear: The Merchant of Venice or Othello?",
                 "In Romeo and Juliet, who says \"But soft, what light through yonder window breaks?\": Romeo or Tybalt?",
                 "Continue this line from Julius Caesar: \"Friends, Romans, countrymen,\" - \"lend me your ears\" or "
                 "\"the noble Brutus\"?"]
    turns = []
    for q in questions:
        reply = llm.chat([{"role": "user", "content": q}], max_new_tokens=24, temperature=0)
        turns.append({"user": q, "assistant": reply})
    return turns


def write_report(out: Path, results: dict) -> None:
    """report.md with the accuracy table, the stages' figures, timings, plots and the sample chat."""
    plot_accuracy(out / "accuracy.png", results["accuracy"])
    plot_training(out / "training.png", out)
    acc = results["accuracy"]
    kinds = sorted(next(iter(acc.values()))["by_kind"])
    lines = [f"# Speedrun report card ({results['size']})", "",
             f"Total: **{results['total_s'] / 60:.1f} min** on {results['threads']} CPU thread(s). "
             "Every accuracy is on held-out questions (characters and speeches no training question asks about or "
             "shows), greedy decoding through the engine, exact match after normalisation.", "",
             "| model | accuracy | 95% CI | " + " | ".join(kinds) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in kinds) + " |"]
    for name, r in acc.items():
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} | "
                     + " | ".join(f"{r['by_kind'][k]:.3f}" for k in kinds) + " |")
    n = next(iter(acc.values()))["n"]
    stages = results["stages"]
    too_long = next(iter(acc.values())).get("too_long", 0)
    lines += ["", f"{n} held-out questions" + (f" ({too_long} longer than the model's context: unanswered, wrong)"
                                               if too_long else "")
              + ". Chance on the two-option kinds (play, speaker, continue) is 0.5 for a "
              "model that answers with one of the options.", "", "Each stage against the model it started from, on the "
              "same questions (exact McNemar test on the questions only one of the two gets right):", "",
              "| comparison | difference | gained | lost | p |", "| --- | --- | --- | --- | --- |"]
    for name, c in results["paired"].items():
        lines.append(f"| {name} | {c['difference']:+.3f} | {c['gained']} | {c['lost']} | {c['p_value']:.3g} |")
    timings, collect = results["timings_s"], stages["collect"]
    lines += ["", "![accuracy](accuracy.png)", "", "## Stages", "",
              f"Preference pairs: the SFT model answered {collect['prompts']} preference questions (greedy accuracy "
              f"{collect['greedy_accuracy']:.3f}); {collect['on_policy']} of its wrong answers became rejected "
              f"replies, {collect['pairs']} pairs in all ({timings.get('collect', 0):.0f} s)"
              + (f"; {collect['too_long']} questions longer than its context kept their own pairs."
                 if collect.get("too_long") else "."), "",
              "| stage | steps | time (s) | held-out figures |", "| --- | --- | --- | --- |"]
    for name in ("pretrain", "sft", "reward", "dpo", "rlhf"):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in stages[name].items() if k not in ("steps", "tokens"))
        lines.append(f"| {name} | {stages[name]['steps']} | {timings.get(name, 0):.0f} | {figures} |")
    other = {k: v for k, v in timings.items() if k not in stages}
    lines += ["", "Other stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in other.items()), "",
              "![training curves](training.png)", "", "## Sample answers on held-out questions", ""]
    for name, examples in results["samples"].items():
        for ex in examples[:2]:
            lines.append(f"- **{name}** | Q: {ex['prompt'][-160:]!r} | A: {ex['reply']!r} (right: {ex['answer']!r})")
    lines += ["", "## A short chat with the DPO model", ""]
    for turn in results["chat"]:
        lines += [f"> **user:** {turn['user']}", ">", f"> **assistant:** {turn['assistant']}", ""]
    command = " ".join(["llmkit speedrun --out DIR"] + (["--gpu"] if results["size"] == "gpu" else [])
                       + [shlex.quote(o) for o in results["overrides"]])
    lines += [f"Reproduce: `{command}`; chat: `llmkit chat --model DIR/dpo`."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def plot_accuracy(path: Path, accuracy: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(accuracy)
    kinds = sorted(accuracy[names[0]]["by_kind"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / (len(kinds) + 1)
    for j, kind in enumerate(["all"] + kinds):
        values = [accuracy[n]["accuracy"] if kind == "all" else accuracy[n]["by_kind"][kind] for n in names]
        xs = [i + (j - len(kinds) / 2) * width for i in range(len(names))]
        if kind == "all":
            errors = [[v - accuracy[n]["ci95"][0] for v, n in zip(values, names)],
                      [accuracy[n]["ci95"][1] - v for v, n in zip(values, names)]]
            ax.bar(xs, values, width, yerr=errors, capsize=3, label="all (95% CI)", color="black")
        else:
            ax.bar(xs, values, width, label=kind)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=5)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("base", "pretrain: loss", ["loss", "val_loss"]), ("sft", "SFT: loss", ["loss", "val_loss"]),
              ("reward", "reward model: pairwise accuracy", ["accuracy", "val_accuracy"]),
              ("dpo", "DPO: implicit reward accuracy", ["reward_accuracy", "val_reward_accuracy"]),
              ("rlhf", "RLHF: reward of samples", ["reward", "val_reward"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (name, title, keys) in zip(axes, panels):
        metrics = out / name / "metrics.jsonl"
        records = [json.loads(line) for line in text_lines(metrics.read_text()) if line.strip()] if metrics.exists() else []
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), "o-" if key.startswith("val") else "-", label=key, markersize=3, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
