"""LoRA vs full fine-tuning (and prompt tuning) of SmolLM2-135M-Instruct: trainable parameters, peak
memory and training tokens/s, each through the real SFT stage (`llmkit.train.sft.run_sft`).

Each method runs in its own process so that its peak resident memory (the kernel's VmHWM: weights,
gradients, AdamW state, activations) is its own. Data: the chosen conversations of the HH-RLHF file in
../shared/data (SFT on preferred replies), packed into rows of seq_len; bf16 autocast on this CPU.

    python benchmarks/peft_memory.py [--steps 12] [--seq-len 256] [--micro-batch 4]

Prints a table, then one JSON line (keys per method: <method>_trainable, <method>_peak_rss_mib,
<method>_tok_s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
METHODS = {
    "full": [],
    "lora_r16_all": ["peft=lora", "lora_rank=16", "lora_alpha=32"],
    "lora_r8_qkv": ["peft=lora", "lora_rank=8", "lora_alpha=16", "lora_targets=[attn.qkv]"],
    "prompt_20": ["peft=prompt", "prompt_tokens=20"],
}


def child(method: str, steps: int, seq_len: int, micro_batch: int, warmup: int) -> None:
    from llmkit.train.config import merge_overrides
    from llmkit.train.peft import trainable_parameters
    from llmkit.train.post_config import SFTConfig
    from llmkit.train import sft

    base = {"init_from": "smollm2", "data": str(HH), "data_records": [0, 400], "seq_len": seq_len,
            "micro_batch": micro_batch, "max_steps": steps, "log_every": 1, "eval_every": 0, "ckpt_every": 0,
            "lr": 1e-4, "warmup_steps": 2, "dtype": "bf16", "threads": 2, "plot": False, "eval_task": False}
    config = SFTConfig.from_dict(merge_overrides(base, METHODS[method]), source="benchmark")
    import torch

    from llmkit.checkpoint import load_config
    from llmkit.convert import resolve_model
    from llmkit.model import Transformer
    from llmkit.train.peft import apply_peft

    with torch.device("meta"):  # parameter counts without a second copy of the weights in memory
        skeleton = Transformer(load_config(resolve_model("smollm2")))
        apply_peft(skeleton, config)
    counts = dict(zip(("trainable", "total"), trainable_parameters(skeleton)))
    with tempfile.TemporaryDirectory() as out:
        sft.run_sft(config, out)
        records = [json.loads(line) for line in open(f"{out}/metrics.jsonl") if '"loss"' in line]
    measured = [r for r in records if r["step"] > warmup]
    tokens = len(measured) * micro_batch * seq_len
    seconds = sum(micro_batch * seq_len / r["tokens_per_s"] for r in measured)
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print("RESULT " + json.dumps({"method": method, "trainable": counts["trainable"], "total": counts["total"],
                                  "peak_rss_mib": round(peak_kib / 1024, 1), "tok_s": round(tokens / seconds, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.seq_len, args.micro_batch, args.warmup_steps)
        return
    results = {}
    for method in METHODS:
        proc = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(args.steps),
                               "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
                               "--warmup-steps", str(args.warmup_steps)], capture_output=True, text=True, cwd=ROOT)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
        results[method] = json.loads(line.removeprefix("RESULT "))
    print(f"SmolLM2-135M-Instruct SFT, seq_len {args.seq_len} x micro-batch {args.micro_batch}, bf16 autocast, "
          f"{args.steps - args.warmup_steps} steps measured")
    print(f"{'method':<14} {'trainable':>12} {'share':>7} {'peak RSS':>10} {'tokens/s':>9}")
    for method, r in results.items():
        print(f"{method:<14} {r['trainable']:>12,} {r['trainable'] / r['total']:>7.2%} {r['peak_rss_mib']:>7.0f} MiB "
              f"{r['tok_s']:>9,.0f}")
    flat = {}
    for method, r in results.items():
        flat.update({f"{method}_trainable": r["trainable"], f"{method}_peak_rss_mib": r["peak_rss_mib"],
                     f"{method}_tok_s": r["tok_s"]})
    print(json.dumps(flat))


if __name__ == "__main__":
    main()
