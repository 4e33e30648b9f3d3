"""Held-out accuracy of models on the built-in assistant task, with paired comparisons.

Each model answers the same held-out questions (greedy, through the engine; exact match after
normalisation, llmkit/data/assistant_task.py); the table gives accuracy with a Wilson 95% interval per
model and by kind, the share of replies that are neither offered answer (every question offers two, so
a model that always picks one of them scores ~0.5 by chance), and each model against its start (the one
before it unless `--start` says otherwise): questions gained / lost and the exact McNemar p-value. Held-out questions share no subject with any training question of the same task seed,
whatever `--heldout-per-kind` is (the split is by a hash of the held-out unit: a character or a block of speeches), so more of them only adds
statistical power.

    python benchmarks/assistant_task.py smollm2 runs/smol-sft runs/smol-dpo runs/smol-rlhf --start 3:1 --train

With --train the SmolLM2 + LoRA runs of BENCHMARKS.md are made first, into the directories given as the
second, third and fourth models (2-core CPU: SFT ~4 min, DPO ~6 min, RLHF ~7 min; evaluating the four
models ~10 min). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# the task the SmolLM2 runs train on: the first 1,000 questions of the task made with 5,000 a kind asked for
# (seed 0). The plays give fewer passage and play questions than that: the SFT file holds 5,021 speaker /
# 4,982 continue / 885 passage / 121 play questions (questions.json's "by_kind"), its first 1,000 are
# 449 / 452 / 87 / 12. The held-out questions do not depend on the training size.
TRAIN_PER_KIND = 5000
TASK = ["data=assistant", f"task_train_per_kind={TRAIN_PER_KIND}", "data_records=[0,1000]"]


# RLHF from the SFT model on the next 1,000 questions' prompts, rewarded by the answer key (a verifiable
# reward, `reward_model=answers`), LoRA like the other two stages
RLHF = ["data=assistant", f"task_train_per_kind={TRAIN_PER_KIND}", "data_records=[1000,2000]", "reward_model=answers",
        "peft=lora", "lora_rank=16", "lora_alpha=32", "lora_dropout=0", "lr=1e-4", "micro_batch=8",
        "max_new_tokens=16", "max_steps=40", "time_limit_s=0", "log_every=5"]


def train(sft_dir: Path, dpo_dir: Path, rlhf_dir: Path) -> None:
    from llmkit.train.dpo import run_dpo
    from llmkit.train.post_config import DPOConfig, RLConfig, SFTConfig
    from llmkit.train.rl import run_rl
    from llmkit.train.sft import run_sft

    run_sft(SFTConfig.preset("sft-smollm2-lora", TASK + ["lr=5e-4"]), sft_dir)
    run_dpo(DPOConfig.preset("dpo-smollm2-lora", TASK + [f"init_from={sft_dir}", "lr=3e-4"]), dpo_dir)
    run_rl(RLConfig.preset("rlhf-assistant", RLHF + [f"init_from={sft_dir}"]), rlhf_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="checkpoint directories or named models, in stage order")
    parser.add_argument("--heldout-per-kind", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="the task seed the models were trained with")
    parser.add_argument("--start", nargs="*", default=[], metavar="I:J",
                        help="compare model I (0-based) with model J instead of with model I-1, e.g. 3:1")
    parser.add_argument("--train", action="store_true", help="first train the SmolLM2 SFT, DPO and RLHF runs "
                        "into the second, third and fourth model directories")
    args = parser.parse_args()

    import llmkit
    from llmkit.data.assistant_task import builtin_task, paired_comparison
    from llmkit.train.chat_data import load_records
    from llmkit.train.post_common import task_accuracy

    starts = {i: i - 1 for i in range(1, len(args.models))}
    for pair in args.start:
        i, _, j = pair.partition(":")
        if not (i.isdigit() and j.isdigit() and 0 <= int(j) < len(args.models) and 0 < int(i) < len(args.models)):
            parser.error(f"--start {pair!r}: expected I:J, two model positions (0-{len(args.models) - 1})")
        starts[int(i)] = int(j)
    if args.train:
        if len(args.models) != 4:
            parser.error("--train needs four models: the start (smollm2) and the SFT, DPO and RLHF directories")
        train(*(Path(m) for m in args.models[1:]))
    heldout = load_records(builtin_task(args.seed, TRAIN_PER_KIND, args.heldout_per_kind)["heldout"], "preference")
    results, correct = {}, {}
    for name in args.models:
        start = time.perf_counter()
        llm = llmkit.load(name)
        result = task_accuracy(llm.model, llm.tokenizer, heldout)
        correct[name] = result.pop("correct")
        result.pop("examples")
        result["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = result
        print(f"{name}: {result['accuracy']:.3f}, off-option {result['off_option']:.3f} ({result['seconds']} s)",
              flush=True)

    kinds = sorted(next(iter(results.values()))["by_kind"])
    print(f"\n{len(heldout)} held-out questions (task seed {args.seed})\n")
    print("| model | accuracy | 95% CI | " + " | ".join(kinds) + " | off-option | vs start | gained / lost | McNemar p |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in kinds) + " | --- | --- | --- | --- |")
    paired = {}
    for i, name in enumerate(args.models):
        r = results[name]
        versus = "- | - | -"
        if i:
            start = args.models[starts[i]]
            c = paired[f"{name} vs {start}"] = paired_comparison(correct[start], correct[name])
            versus = f"{start}: {c['difference']:+.3f} | {c['gained']} / {c['lost']} | {c['p_value']:.2g}"
        print(f"| {name} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} | "
              + " | ".join(f"{r['by_kind'][k]:.3f}" for k in kinds) + f" | {r['off_option']:.3f} | {versus} |")
    print(json.dumps({"questions": len(heldout), "accuracy": {n: r["accuracy"] for n, r in results.items()},
                      "off_option": {n: r["off_option"] for n, r in results.items()}, "paired": paired}))


if __name__ == "__main__":
    main()
