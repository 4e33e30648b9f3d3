"""llmkit on a CUDA GPU: its tests and figures in one run, for the few minutes a lent GPU gives.

    python benchmarks/gpu.py --out DIR [--only STAGE ...] [--shape SMOLLM2_DIR] [--limit SECONDS]

Each stage runs in its own process under its own time limit, its output kept in DIR/STAGE.log; one that
fails or runs out of time is reported and the next one runs. Stages, in this order:
- machine: the GPU, PyTorch and CUDA; the ceilings measured here (a 2 GiB device-to-device copy, bytes
  read + written; an 8192^3 bf16 matmul); and causal training attention (forward + backward, bf16, 16 x
  1024 tokens) at GPT-2's shape (12 heads) and SmolLM2's (9 query heads on 3 key/value heads) on each of
  SDPA's backends: which accept it and how long each takes.
- tests: tests/test_cuda.py (bf16 with fused attention, the engine, compiled pretraining, FSDP2 + NCCL).
- decode: pure decode (128 new tokens after a chat prompt, greedy) of a SmolLM2-135M-shaped model in
  bf16 at batch 1, 32 and 128, eager and compiled, against transformers' `generate()` on a LlamaForCausalLM
  of the same shape in the same process: its default (dynamic cache, eager) and its fast path (static
  cache, `torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs). The weights are random (seeded): a
  real checkpoint does not travel to a lent GPU, and the time of a step does not depend on the values.
  Batch 1 also reports the bytes it reads per token and that as a fraction of the measured bandwidth.
- train: benchmarks/train_throughput.py at GPT-2 small (bf16, compiled, 16 x 1024 tokens a micro-batch),
  MFU against the bf16 matmul measured in that run.
- serve: benchmarks/serve.py: `llmkit serve` of the SmolLM2-shaped model on the GPU, 1/16/64 clients.

--shape: a SmolLM2-135M checkpoint directory whose config and tokenizer to use (default: the converted
named model in llmkit's cache); its weights are not read. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["machine", "tests", "decode", "train", "serve"]
# seconds per stage; on a lent GPU whose minutes are counted, `--only` and `--limit` cut the run to fit
# (the compiled engine's warm-up alone took over 200 s on an H200's host: four graphs, Triton kernels)
LIMITS = {"machine": 60, "tests": 300, "decode": 600, "train": 300, "serve": 300}
NEW_TOKENS = 128
DEVICE = "cuda"  # the decode stage's device (a dry run of the script's logic can set "cpu")


# --- machine ------------------------------------------------------------------------------------------
def time_cuda(fn, repeats: int = 10) -> float:
    """Median seconds of `fn()` on the GPU, timed with CUDA events after three warm-up calls."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def stage_machine() -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    props = torch.cuda.get_device_properties(0)
    src = torch.randn(2**29, device="cuda")  # 2 GiB of fp32, many times the L2
    dst = torch.empty_like(src)
    copy_s = time_cuda(lambda: dst.copy_(src))
    src = dst = None  # free the 4 GiB before the matmuls
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_s = time_cuda(lambda: a @ b)
    attention = {}
    for name, heads, kv_heads in (("gpt2", 12, 12), ("smollm2", 9, 3)):
        q = torch.randn(16, heads, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(16, kv_heads, 1024, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            def step():
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads).sum().backward()
            try:
                attention[f"{name}_{backend.name.lower()}_ms"] = round(time_cuda(step) * 1e3, 3)
            except RuntimeError as error:
                attention[f"{name}_{backend.name.lower()}_ms"] = f"refused: {str(error).splitlines()[0][:120]}"
    return {"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
            "copy_gbs": round(2 * 2**31 / copy_s / 1e9, 1), "bf16_matmul_tflops": round(2 * 8192**3 / matmul_s / 1e12, 1),
            "attention": attention}


# --- decode -------------------------------------------------------------------------------------------
def random_checkpoint(shape: Path, out: Path) -> Path:
    """A checkpoint with `shape`'s config, tokenizer and generation config and seeded random weights."""
    import torch

    from llmkit.checkpoint import load_config, load_generation_config, load_tokenizer, save_checkpoint
    from llmkit.model import Transformer

    torch.manual_seed(0)
    model = Transformer(load_config(shape))
    save_checkpoint(out, model, load_tokenizer(shape), load_generation_config(shape))
    return out


def hf_llama(config, torch):
    """transformers' LlamaForCausalLM of llmkit `config`'s shape, random weights, bf16 on the GPU."""
    import transformers

    hf = transformers.LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.d_model,
                                  intermediate_size=config.d_ff, num_hidden_layers=config.n_layers,
                                  num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
                                  max_position_embeddings=config.max_seq_len, rope_theta=config.rope_theta,
                                  rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf).to(DEVICE, torch.bfloat16).eval()


def hf_decode(model, prompt: list[int], rows: int, torch, **generate_kwargs) -> float:
    """transformers' pure decode tokens/s (all rows) for `rows` copies of `prompt` (generate.py's timing)."""
    from generate import hf_decode_speed

    ids = torch.tensor([prompt] * rows, device=DEVICE)
    synchronize = torch.cuda.synchronize if DEVICE == "cuda" else None
    return hf_decode_speed(model, ids, torch, synchronize, attention_mask=torch.ones_like(ids), **generate_kwargs)


def profile_steps(engine, prompt: list[int], torch, steps: int = 16) -> str:
    """torch.profiler's table (host and device time per operator) over `steps` batch-1 decode steps."""
    from llmkit.infer import SamplingParams

    engine.submit(prompt, SamplingParams(max_new_tokens=steps + 2, temperature=0))
    engine.step()  # the prefill, left out
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profile:
        while engine.has_work:
            engine.step()
    return profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)


def stage_decode(directory: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generate import chat_prompt, timed_batch, timed_stream
    from machine import kv_bytes_per_token, weight_bytes_per_token

    from llmkit.checkpoint import load_config, load_model, load_tokenizer
    from llmkit.infer import Engine, SamplingParams
    from llmkit.infer.compiled import warm_up

    tokenizer = load_tokenizer(directory)
    prompt = chat_prompt(tokenizer)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    results = {"prompt_tokens": len(prompt)}
    config = load_config(directory)
    hf = None
    # the eager figures first, then the compiled ones: a stage cut short by its time limit keeps the first
    for compiled in (False, True):
        model = load_model(directory, device=DEVICE, dtype=torch.bfloat16)
        engine = Engine(model, compile=compiled, max_batch_size=128, prefix_cache_mib=0, prefill_chunk=8192)
        name = "compiled" if compiled else "eager"
        start = time.perf_counter()
        warm_up(engine)
        timed_stream(engine, prompt, params)
        results[f"{name}_warmup_s"] = round(time.perf_counter() - start, 1)
        results[f"b1_{name}"] = sorted(timed_stream(engine, prompt, params)[1] for _ in range(3))[1]
        for rows in (32, 128):
            timed_batch(engine, prompt, params, rows)  # its first run: the batch's shapes
            results[f"b{rows}_{name}"] = max(timed_batch(engine, prompt, params, rows)[0] for _ in range(2))
        results["bytes_per_token"] = weight_bytes_per_token(model) + kv_bytes_per_token(
            config, len(prompt) + NEW_TOKENS / 2, 2)
        print(json.dumps(results), flush=True)
        if not compiled:  # where a batch-1 eager step's time goes, host and device, for the log
            print(profile_steps(engine, prompt, torch), flush=True)
        del engine, model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        if hf is None:  # transformers' default generate() (dynamic cache, eager)
            hf = hf_llama(config, torch)
            for rows in (1, 32):
                results[f"hf_b{rows}"] = hf_decode(hf, prompt, rows, torch)
                print(json.dumps(results), flush=True)
    # transformers' fast path: a static cache and the forward compiled with CUDA graphs
    hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
    try:
        results["hf_b1_static_compiled"] = hf_decode(hf, prompt, 1, torch, cache_implementation="static")
    except Exception as error:  # a failure of the reference is a figure we report, not a crash of the run
        results["hf_b1_static_compiled"] = f"failed: {str(error).splitlines()[0][:200]}"
    return results


# --- orchestration ------------------------------------------------------------------------------------
def run_stage(stage: str, args, out: Path) -> dict:
    """Run one stage in its own process under its limit; returns its figures (or its failure)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if stage == "tests":
        command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    elif stage == "train":
        command = [sys.executable, "benchmarks/train_throughput.py", "--steps", "30", "--warmup-steps", "10",
                   "--threads", "8", "model=gpt2-124m", "device=cuda", "seq_len=1024", "micro_batch=16"]
    elif stage == "serve":
        command = [sys.executable, "benchmarks/serve.py", "--llmkit", f"{args.model} --device cuda",
                   "--llmkit-args", "--max-batch-size 64", "--max-concurrency", "1", "16", "64", "--max-tokens", "64"]
    else:
        command = [sys.executable, __file__, "--worker", stage, "--out", str(out), "--model", str(args.model)]
    log = out / f"{stage}.log"
    start = time.perf_counter()
    with open(log, "w") as file:
        try:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=file, stderr=subprocess.STDOUT,
                                    timeout=LIMITS[stage] if args.limit is None else args.limit)
            code = result.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = round(time.perf_counter() - start, 1)
    text = log.read_text(errors="replace")
    figures = {}
    for line in reversed(text.splitlines()):  # the last JSON line a stage printed (partial figures too)
        if line.startswith("{"):
            try:
                figures = json.loads(line)
                break
            except ValueError:
                continue
    if stage == "tests":
        found = re.findall(r"(\d+) (passed|failed|skipped|error)", text)
        figures = {kind: int(n) for n, kind in found}
    return {"stage": stage, "exit": code, "seconds": seconds, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the stages' logs and gpu.json")
    parser.add_argument("--only", nargs="+", choices=STAGES, help="run only these stages")
    parser.add_argument("--shape", type=Path, default=None, help="SmolLM2-135M checkpoint directory (config, tokenizer)")
    parser.add_argument("--limit", type=int, default=None, help="seconds for every stage (default: each stage's own)")
    parser.add_argument("--worker", choices=["machine", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)  # the random checkpoint, for the workers
    args = parser.parse_args()
    if args.shape is None:
        from llmkit.data.corpus import cache_root

        args.shape = cache_root() / "models" / "smollm2"
    if args.worker == "machine":
        print(json.dumps(stage_machine()))
        return
    if args.worker == "decode":
        print(json.dumps(stage_decode(args.model)))
        return
    import torch

    from llmkit.atomic import atomic_write_text

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; this PyTorch sees none")
    needs_model = bool({"decode", "serve"} & set(args.only or STAGES))
    if needs_model and not ((args.shape / "config.json").is_file() and (args.shape / "tokenizer.json").is_file()):
        raise SystemExit(f"--shape {args.shape}: no config.json and tokenizer.json there; convert SmolLM2 first "
                         "(`llmkit convert smollm2 DIR`) or name a directory that has them")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if needs_model:
            args.model = random_checkpoint(args.shape, Path(work) / "smollm2-random")
        for stage in args.only or STAGES:
            rows.append(run_stage(stage, args, args.out))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_text(args.out / "gpu.json", json.dumps(rows, indent=1))  # kept if a later stage hangs
    print("| stage | exit | seconds | figures |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        figures = {k: v for k, v in row.items() if k not in ("stage", "exit", "seconds")}
        print(f"| {row['stage']} | {row['exit']} | {row['seconds']} | {json.dumps(figures)[:400]} |")
    print(json.dumps({"benchmark": "gpu", "stages": rows}))


if __name__ == "__main__":
    main()
