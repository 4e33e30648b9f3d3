"""What grammar-constrained decoding costs a decode step: the engine's step time with and without a JSON-schema
constraint, at batch 1 and batch 16, on SmolLM2-135M-Instruct (or the random tiny model: --model tiny).

    flock /tmp/llmkit-heavy.lock python benchmarks/grammar_cost.py          # ~5 minutes on 2 idle cores

Each configuration: B identical greedy chat requests, all admitted at once, then 32 decode steps timed one
by one (only steps where all B rows are running count; the median is reported). The constrained run gives
every request a JSON schema that keeps it writing (an array of at least 40 short strings), so no request
ends early. The grammar's own share of a step is measured too, by timing the two places it runs: the
batched mask (`grammar.constrain_logits`: llguidance fills the bitmasks, numpy unpacks them, one
masked_fill) and the per-token advance (`Constraint.advance`).

overhead_pct = (constrained step - plain step) / plain step. Target: < 5% at batch 1 and 16.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

THREADS = 2
STEPS = 32
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["fruits"],
          "properties": {"fruits": {"type": "array", "minItems": 40,
                                    "items": {"type": "string", "maxLength": 24}}}}
CHAT = [{"role": "user", "content": "List fifty fruits, as a JSON object with a list called fruits."}]


def load(name: str, dtype: str):
    import torch

    torch.set_num_threads(THREADS)
    if name == "tiny":
        from llmkit.config import ModelConfig
        from llmkit.model import Transformer
        from llmkit.tokenizer import Tokenizer

        torch.manual_seed(0)
        model = Transformer(ModelConfig.preset("tiny", max_seq_len=1024)).eval()
        words = ["apple banana cherry " * 50, '{"fruits": ["kiwi", "lime"]}' * 20]
        return model, Tokenizer.train(words, vocab_size=512)
    from llmkit.checkpoint import load_model, load_tokenizer
    from llmkit.convert import resolve_model

    directory = resolve_model("smollm2")
    model = load_model(directory)
    return model.to(getattr(torch, dtype)), load_tokenizer(directory)


class Timer:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, owner, name):
        self.owner, self.name, self.inner, self.seconds = owner, name, getattr(owner, name), 0.0
        timer = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return timer.inner(*args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start

        setattr(owner, name, timed)

    def restore(self):
        setattr(self.owner, self.name, self.inner)


def run(engine, prompt, batch: int, grammar) -> dict:
    import llmkit.infer.grammar as grammar_module
    import llmkit.infer.sampling as sampling_module
    from llmkit.infer import SamplingParams

    params = SamplingParams(max_new_tokens=STEPS + 16, temperature=0, grammar=grammar)
    requests = [engine.submit(prompt, params) for _ in range(batch)]
    engine.step()  # admits and prefills all of them
    assert len(engine.scheduler.running) == batch
    mask = Timer(sampling_module, "constrain_logits")  # sampling.py calls it by this name
    advance = Timer(grammar_module.Constraint, "advance")
    steps, in_grammar = [], []
    try:
        for _ in range(STEPS):
            before = mask.seconds + advance.seconds
            start = time.perf_counter()
            engine.step()
            elapsed = time.perf_counter() - start
            if len(engine.scheduler.running) == batch:
                steps.append(elapsed)
                in_grammar.append(mask.seconds + advance.seconds - before)
    finally:
        mask.restore()
        advance.restore()
        for request in requests:
            engine.cancel(request)
    assert len(steps) >= STEPS // 2, "requests ended early: the schema should keep them writing"
    return {"step_ms": 1000 * statistics.median(steps), "grammar_ms": 1000 * statistics.median(in_grammar),
            "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="SmolLM2's weights (bf16: what `llmkit serve` runs on a CPU with bf16 units)")
    args = parser.parse_args()
    from llmkit.infer import Engine
    from llmkit.infer.grammar import GrammarCompiler

    model, tokenizer = load(args.model, args.dtype)
    prompt = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)) \
        if tokenizer.chat_template else tokenizer.encode("List fifty fruits as JSON:", add_bos=True)
    engine = Engine(model, stop_token_ids=tokenizer.stop_token_ids, tokenizer=tokenizer, max_batch_size=16,
                    prefix_cache_mib=0)
    start = time.perf_counter()
    compiler = GrammarCompiler(tokenizer, model.config.vocab_size, tokenizer.stop_token_ids)
    tokenizer_s = time.perf_counter() - start
    start = time.perf_counter()
    grammar = compiler.json_schema(SCHEMA)
    compile_s = time.perf_counter() - start
    rows = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        run(engine, prompt, batch, grammar)  # warm-up (allocates the cache rows, starts llguidance's threads)
        plain, constrained = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            plain.append(run(engine, prompt, batch, None))
            constrained.append(run(engine, prompt, batch, grammar))
        p = statistics.median(r["step_ms"] for r in plain)
        c = statistics.median(r["step_ms"] for r in constrained)
        g = statistics.median(r["grammar_ms"] for r in constrained)
        rows[f"b{batch}"] = {"plain_step_ms": round(p, 3), "constrained_step_ms": round(c, 3),
                             "grammar_ms": round(g, 3), "overhead_pct": round(100 * (c - p) / p, 2),
                             "grammar_share_pct": round(100 * g / c, 2)}
        print(f"batch {batch}: {rows[f'b{batch}']}", flush=True)
    print(f"grammar cost on {args.model} {args.dtype if args.model != 'tiny' else ''} ({THREADS} threads, eager, greedy, {STEPS} decode steps, median of "
          f"{args.repeats}); llguidance tokenizer {tokenizer_s:.2f} s, schema compile {1000 * compile_s:.1f} ms")
    print(f"{'batch':>6} {'plain ms':>10} {'json ms':>10} {'overhead':>9} {'in grammar ms':>14} {'share':>7}")
    for name, row in rows.items():
        print(f"{name[1:]:>6} {row['plain_step_ms']:>10.2f} {row['constrained_step_ms']:>10.2f} "
              f"{row['overhead_pct']:>8.1f}% {row['grammar_ms']:>14.3f} {row['grammar_share_pct']:>6.1f}%")
    print(json.dumps({"benchmark": "grammar_cost", "model": args.model, "dtype": args.dtype, "threads": THREADS,
                      "llguidance_tokenizer_s": round(tokenizer_s, 3), "schema_compile_ms": round(1000 * compile_s, 2),
                      **{f"{k}_{field}": v for k, row in rows.items() for field, v in row.items()}}))


if __name__ == "__main__":
    main()
