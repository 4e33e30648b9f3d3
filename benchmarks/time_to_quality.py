"""Time to quality of the built-in default: bits per byte on the Shakespeare val plays (hamlet, macbeth,
tempest) after a fixed amount of training time with the `shakespeare-cpu` preset.

Each budget is its own run of the preset with `time_limit_s` set: the Trainer times its first steps,
fits the number of steps (and so the whole LR schedule) to the budget, and stops at it. Training time
counts every optimizer step, including the first ones; data preparation and evaluation do not count.

    python benchmarks/time_to_quality.py [--budgets 50 600] [overrides ...]

Targets (issue 3): <= 2.83 bits per byte within 50 s, <= 2.2 within 10 minutes, on a 2-core CPU.
Prints a table, then one JSON line: bpb_<budget>s and train_s_<budget>s for each budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[50, 600])
    parser.add_argument("overrides", nargs="*", help="extra field=value overrides of the preset")
    args = parser.parse_args()

    from llmkit.train.config import TrainConfig
    from llmkit.train.pretrain import pretrain

    figures, rows = {}, []
    for budget in args.budgets:
        config = TrainConfig.preset("shakespeare-cpu", [f"time_limit_s={budget}", "ckpt_every=0", "plot=false",
                                                        *args.overrides])
        with tempfile.TemporaryDirectory() as out:
            result = pretrain(config, out)
        key = f"{budget:g}s"
        figures[f"bpb_{key}"] = round(result.eval["val_bpb"], 4)
        figures[f"train_s_{key}"] = round(result.train_time_s, 1)
        figures[f"steps_{key}"] = result.steps
        rows.append((key, result.steps, result.tokens, result.train_time_s, result.eval["val_bpb"]))
    print(f"{'budget':>8}  {'steps':>6}  {'tokens':>11}  {'trained':>8}  val bits/byte")
    for key, steps, tokens, seconds, bpb in rows:
        print(f"{key:>8}  {steps:>6}  {tokens:>11,}  {seconds:>7.1f}s  {bpb:.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
