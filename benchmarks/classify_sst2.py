"""SST-2 sentiment (Socher et al. 2013; GLUE split) accuracy on the 872 dev sentences, each with a Wilson
95% interval and the time it took:

1. majority class: the commonest label of the training set, for every sentence (floor; 50.9% expected).
2. zero-shot SmolLM2-135M-Instruct (`smollm2`) by label words: "{text} It was" + " terrible" / " great"
   (LM-BFF's SST-2 template, Gao et al. 2021), uncalibrated and with contextual calibration (Zhao et al.
   2021: content-free inputs N/A, "", [MASK]); both from one scoring pass, calibration is a rescaling.
3. SmolLM2 + LoRA + a classification head (last-token pooling), trained with `llmkit classify train
   --lora` on a seeded random subsample of SST-2 train for a fixed training time.
4. all-MiniLM-L6-v2 (`all-minilm`, the sentence encoder from its PyPI wheel) + head ([CLS] pooling, as BERT
   is fine-tuned), fully fine-tuned the same way (BERT's lr range, Devlin et al. 2019 appendix A.3).
5. The CPU-trained BERT-style encoder (`llmkit pretrain --preset bert-shakespeare-cpu`, given by
   --bert-model) + head, fully fine-tuned the same way: what ten minutes of masked-LM pretraining on
   Shakespeare carry over to modern film reviews.

    python benchmarks/classify_sst2.py [--train-examples 2000] [--time-limit 600] [--run-dir runs/sst2-lora]
    python benchmarks/classify_sst2.py --parts lora --micro-batch 64 --lr 1e-3 --warmup 2   # the LoRA row alone
    python benchmarks/classify_sst2.py --parts minilm,bert --bert-model runs/bert   # the encoder rows

--parts picks the rows (majority, zero-shot, lora, minilm, bert): each trained row takes --time-limit.

Anchor: BERT-base 93.5% (Devlin et al. 2019, table 1). Data: ../shared/data/eval/sentiment (read only
here, never by tests). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "eval" / "sentiment"


def row(key: str, name: str, probs, y: list[int], seconds: float, note: str = "") -> dict:
    """One method's figures, printed at once (flushed): a long run on a shared machine keeps what it measured."""
    from llmkit.classify.train import accuracy_with_interval

    result = {"key": key, "name": name, **accuracy_with_interval(probs, y), "seconds": seconds, "note": note}
    print(f"  {name}: {result['accuracy']:.1%} [{result['ci95_low']:.1%}, {result['ci95_high']:.1%}] "
          f"in {seconds:.0f} s; {note}", flush=True)
    return result


def majority_row(train, labels, y) -> dict:
    from llmkit.classify.data import label_indices

    t0 = time.perf_counter()
    train_y = label_indices(train, labels)
    top = max(range(len(labels)), key=train_y.count)
    majority = torch.nn.functional.one_hot(torch.full((len(y),), top), len(labels)).float()
    return row("majority", "majority class (of train)", majority, y, time.perf_counter() - t0, f"always {labels[top]}")


def zero_shot_rows(args, texts, y) -> list[dict]:
    """Both rows from one scoring pass: calibration rescales the same label probabilities."""
    import llmkit
    from llmkit.classify.zero_shot import (DEFAULT_TEMPLATE, calibrate, content_free_probabilities, label_logprobs,
                                           label_probabilities, parse_label_words)

    words = parse_label_words("0=terrible,1=great")
    llm = llmkit.load(args.model, device="cpu")
    t0 = time.perf_counter()
    probs = label_probabilities(label_logprobs(llm.model, llm.tokenizer, texts, words, DEFAULT_TEMPLATE))
    seconds = time.perf_counter() - t0
    out = [row("zero_shot", f"zero-shot {args.model}", probs, y, seconds, f"{DEFAULT_TEMPLATE!r} + terrible/great")]
    t0 = time.perf_counter()
    p_cf = content_free_probabilities(llm.model, llm.tokenizer, words, DEFAULT_TEMPLATE)
    out.append(row("zero_shot_calibrated", f"zero-shot {args.model}, calibrated", calibrate(probs, p_cf), y,
                   seconds + time.perf_counter() - t0, "p_cf " + "/".join(f"{float(p):.3f}" for p in p_cf)))
    return out


def head_row(args, texts, y, key: str, name: str, model: str, run_dir: Path, lr: float, peft: str = "none",
             pooling: str = "auto") -> tuple[dict, int]:
    """(the row, optimizer steps): `model` + a head (LoRA or full fine-tuning) trained for --time-limit s on a
    subsample of SST-2 train, scored on dev."""
    from llmkit.classify.head import classify_texts, load_classifier
    from llmkit.classify.train import ClassifyConfig, run_classify

    train_s = 0.0
    if not args.skip_train:
        shutil.rmtree(run_dir, ignore_errors=True)
        config = ClassifyConfig.preset("classify", {
            "init_from": model, "data": str(args.data_dir / "sst2_train.tsv"), "peft": peft, "lr": lr,
            "pooling": pooling, "micro_batch": args.micro_batch, "warmup_steps": args.warmup,
            "train_examples": args.train_examples, "time_limit_s": args.time_limit, "threads": args.threads,
            "eval_every": 0, "plot": False})
        result = run_classify(config, run_dir)
        train_s, steps = result.train_time_s, result.steps
    else:
        steps = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1]).get("step", 0)
    classifier, tokenizer = load_classifier(run_dir)
    t0 = time.perf_counter()
    probs = classify_texts(classifier, tokenizer, texts, max_len=128)
    note = (f"{'LoRA' if peft == 'lora' else 'full fine-tuning'}, {classifier.pooling} pooling; subsample of "
            f"{args.train_examples}: {steps} steps x {args.micro_batch} sentences, lr {lr:g}; "
            f"dev scored in {time.perf_counter() - t0:.0f} s")
    return row(key, name, probs, y, train_s, note), steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=SST2)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--parts", default="majority,zero-shot,lora", help="rows to measure (comma-separated)")
    parser.add_argument("--train-examples", type=int, default=2000, help="random subsample of SST-2 train for LoRA")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds of LoRA training")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA and head learning rate")
    parser.add_argument("--micro-batch", type=int, default=64, help="sentences per optimizer step (on a busy CPU a step costs about the same for 8 or 64)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "sst2-lora", help="the LoRA row's run "
                        "(the encoder rows: beside it, sst2-minilm and sst2-bert)")
    parser.add_argument("--encoder-lr", type=float, default=5e-5, help="full fine-tuning lr of the encoder rows")
    parser.add_argument("--minilm-model", default="all-minilm")
    parser.add_argument("--bert-model", default=str(ROOT / "runs" / "bert"),
                        help="a bert-shakespeare-cpu run (llmkit pretrain --preset bert-shakespeare-cpu --out DIR)")
    parser.add_argument("--skip-train", action="store_true", help="score an existing --run-dir")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from llmkit.classify.data import label_indices, label_names, read_examples

    train = read_examples(args.data_dir / "sst2_train.tsv")
    dev = read_examples(args.data_dir / "sst2_dev.tsv")
    labels = label_names(train)  # ["0", "1"]: 1 = positive
    y = label_indices(dev, labels)
    texts = [e.text for e in dev]
    parts = set(args.parts.split(","))
    load_before = os.getloadavg()[0]
    rows, steps = [], {}
    if "majority" in parts:
        rows.append(majority_row(train, labels, y))
    if "zero-shot" in parts:
        rows += zero_shot_rows(args, texts, y)
    trained = [("lora", "lora_head", f"{args.model} + LoRA + head", args.model, args.run_dir, args.lr, "lora"),
               ("minilm", "minilm_head", "all-MiniLM-L6-v2 + head", args.minilm_model,
                args.run_dir.with_name("sst2-minilm"), args.encoder_lr, "none"),
               ("bert", "bert_head", "CPU-trained BERT + head", args.bert_model,
                args.run_dir.with_name("sst2-bert"), args.encoder_lr, "none")]
    for part, key, name, model, run_dir, lr, peft in trained:
        if part in parts:
            result, steps[key] = head_row(args, texts, y, key, name, model, run_dir, lr, peft)
            rows.append(result)

    print(f"SST-2 dev, {len(y)} sentences (Wilson 95% intervals); anchor BERT-base 93.5% (Devlin et al. 2019)")
    print(f"{'method':<40} {'accuracy':>9} {'95% CI':>16} {'time s':>8}  note")
    for r in rows:
        print(f"{r['name']:<40} {r['accuracy']:>9.1%} {r['ci95_low']:>7.1%}-{r['ci95_high']:<8.1%} "
              f"{r['seconds']:>8.1f}  {r['note']}")
    print(f"machine load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
          f"({os.cpu_count()} cores, {args.threads} threads)")
    out = {"n": len(y), "train_examples": args.train_examples, "time_limit_s": args.time_limit,
           **{f"{key}_steps": n for key, n in steps.items()}, "lora_lr": args.lr, "encoder_lr": args.encoder_lr,
           "micro_batch": args.micro_batch}
    for r in rows:
        key = r["key"]
        out[f"{key}_acc"] = round(r["accuracy"], 4)
        out[f"{key}_ci95"] = [round(r["ci95_low"], 4), round(r["ci95_high"], 4)]
        out[f"{key}_s"] = round(r["seconds"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
