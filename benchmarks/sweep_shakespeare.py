"""The sweep behind the `shakespeare-cpu` preset: which shape, vocabulary, batch and learning rate give
the best bits per byte on the Shakespeare val plays in a fixed training time on this CPU?

Each candidate is the preset with some fields overridden, trained for --seconds of training time
(the Trainer fits its LR schedule to the time limit), then scored on the whole val set.

    python benchmarks/sweep_shakespeare.py --seconds 50 [--grid NAME]

Prints one row per candidate, best first, then one JSON line with the best candidate and its figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

GRIDS = {
    # shape x learning rate (round 1, at vocabulary 4096 and micro-batch 16)
    "shape": [
        {"model.n_layers": n, "model.d_model": d, "model.n_heads": d // 64, "model.n_kv_heads": d // 64,
         "model.d_ff": 8 * d // 3 // 64 * 64, "lr": lr}
        for n, d in [(4, 256), (6, 256), (4, 384), (6, 384)] for lr in (2e-3, 4e-3)
    ],
    "lr": [{"lr": lr} for lr in (1e-3, 2e-3, 3e-3)],
    "vocab": [{"vocab_size": v} for v in (2048, 4096, 8192)],
    "batch": [{"micro_batch": b} for b in (8, 16, 32)],
    "compile": [{"compile": c} for c in (False, True)],
}


def run(candidate: dict, seconds: float) -> dict:
    from llmkit.train.config import TrainConfig
    from llmkit.train.pretrain import pretrain

    overrides = [f"{k}={v}" for k, v in candidate.items()] + [f"time_limit_s={seconds}", "eval_every=0",
                                                             "ckpt_every=0", "plot=false", "log_every=50"]
    config = TrainConfig.preset("shakespeare-cpu", overrides)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = pretrain(config, out)
        wall = time.perf_counter() - start
    return {**candidate, "val_bpb": round(result.eval["val_bpb"], 4), "steps": result.steps,
            "train_time_s": round(result.train_time_s, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=50)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="shape")
    args = parser.parse_args()
    rows = [run(candidate, args.seconds) for candidate in GRIDS[args.grid]]
    rows.sort(key=lambda r: r["val_bpb"])
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    print(json.dumps({"grid": args.grid, "seconds": args.seconds, "best": rows[0]}))


if __name__ == "__main__":
    main()
