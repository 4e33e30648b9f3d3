"""llama.cpp through llama-cpp-python, as the benchmarks run it: one sequence decoding (generate.py's
llamacpp row, larger_model.py), many sequences decoding at once (generate.py's llamacpp_scaling rows: the
reference's own batch-32 / batch-1 ratio and aggregate speed, beside llmkit's scaling rows), and its
quantizer.

Many sequences: llama.cpp's server decodes its parallel slots the same way: one `llama_batch` a step holding every
sequence's next token, each under its own sequence id (its own KV cells), one forward over them all. Here
every sequence gets the same chat prompt (prefilled together in the first batch) and is decoded greedily for
a fixed number of tokens, stop tokens ignored: the shape of generate.py's `timed_batch`.

`requantized` gives llama.cpp's other CPU formats from the benchmark's Q4_1 file with llama.cpp's own
quantizer: Q4_0 (the format its AVX2 / AVX-512 "repack" path multiplies 4 or 8 rows at a time) and Q8_0.
Requantizing a Q4_1 file rounds twice, so those files are for speed, not quality.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

FORMATS = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def llamacpp_decode_speeds(llm, prompt: list[int], new_tokens: int, runs: int) -> list[float]:
    """Pure-decode tok/s of `runs` greedy generations of `new_tokens` by a llama_cpp.Llama after `prompt`."""
    speeds = []
    for _ in range(runs):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for i in range(new_tokens):
            token = llm.sample(temp=0)  # greedy
            if i == 0:
                start = time.perf_counter()  # the first token comes from the prefill: not decode
            if i < new_tokens - 1:
                llm.eval([token])
        speeds.append((new_tokens - 1) / (time.perf_counter() - start))
    return speeds


def quantize_gguf(llama_cpp, source: Path, target: Path, ftype: int, threads: int) -> None:
    """`source` written as `target` by llama.cpp's quantizer in format `ftype` (a LLAMA_FTYPE_* value), to a
    temporary name first: whole or absent, an interrupted run leaves no half file."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, threads
    params.allow_requantize = True  # a source that is itself quantized (the Q4_1 file)
    partial = target.with_name(target.name + ".part")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source} to {target.name}")
    partial.replace(target)


def requantized(llama_cpp, source: Path, kind: str, threads: int) -> Path:
    """`source` rewritten by llama.cpp's quantizer as `kind` ("q4_0" or "q8_0"), once, in llmkit's cache folder
    (the source may sit in a read-only package)."""
    from llmkit.cache import cache_root

    target = cache_root() / "bench" / f"{source.stem}.{kind}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        quantize_gguf(llama_cpp, source, target, getattr(llama_cpp, FORMATS[kind]), threads)
    return target


def chat_text(chat: list[dict]) -> str:
    """SmolLM2's chat template applied to `chat`, with the assistant's turn opened."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat) + "<|im_start|>assistant\n"


class BatchedDecoder:
    """One llama.cpp context with room for `max_rows` sequences of `context_per_row` tokens each."""

    def __init__(self, llama_cpp, model_path: Path, threads: int, max_rows: int, context_per_row: int = 256):
        self.cpp = llama_cpp
        # Llama loads the model and the tokenizer; its own context has one sequence, so the batched context
        # is made here with the parameters Llama() does not pass through (n_seq_max)
        self.llm = llama_cpp.Llama(model_path=str(model_path), n_threads=threads, n_threads_batch=threads,
                                   n_ctx=context_per_row, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max = max_rows * context_per_row, max_rows
        params.n_batch, params.n_ubatch = max_rows * context_per_row, 512  # all prompts in one batch
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each sequence its own cells (unified measured 0.8x at 32 rows here)
        self.ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        if not self.ctx:
            raise SystemExit("llama.cpp could not create a context for batched decoding")
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self.vocab, self.context_per_row = self.llm.n_vocab(), context_per_row

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """One llama_decode of (token, position, sequence, wants logits) entries; the greedy next token of
        each entry that wants logits, in order."""
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, logits
        if (code := self.cpp.llama_decode(self.ctx, batch)) != 0:
            raise SystemExit(f"llama_decode failed ({code}) with {len(entries)} tokens")
        outputs = sum(logits for *_, logits in entries)
        logits = np.ctypeslib.as_array(self.cpp.llama_get_logits(self.ctx), shape=(outputs, self.vocab))
        return logits.argmax(axis=1)

    def run(self, prompt: list[int], rows: int, new_tokens: int) -> tuple[float, list[list[int]]]:
        """(decode tok/s of all rows, each row's tokens) for `rows` copies of `prompt` decoding together:
        the prompts prefilled in one batch (each row's first token comes from it, as in timed_batch), then
        timed to `new_tokens` tokens a row."""
        if len(prompt) + new_tokens > self.context_per_row:
            raise SystemExit(f"BatchedDecoder: a {len(prompt)}-token prompt and {new_tokens} new tokens need "
                             f"context_per_row >= {len(prompt) + new_tokens} (it is {self.context_per_row})")
        self.cpp.llama_memory_clear(self.cpp.llama_get_memory(self.ctx), True)
        last = len(prompt) - 1
        tokens = self._decode([(token, position, row, position == last)
                               for row in range(rows) for position, token in enumerate(prompt)])
        outputs = [[int(token)] for token in tokens]
        start = time.perf_counter()
        for step in range(new_tokens - 1):
            tokens = self._decode([(int(tokens[row]), len(prompt) + step, row, True) for row in range(rows)])
            for row in range(rows):
                outputs[row].append(int(tokens[row]))
        return rows * (new_tokens - 1) / (time.perf_counter() - start), outputs

    def close(self) -> None:
        self.cpp.llama_batch_free(self.batch)
        self.cpp.llama_free(self.ctx)


def scaling(model_path: Path, chat: list[dict], threads: int, new_tokens: int, alternating_rounds,
            rounds: int = 4) -> dict:
    """Batch 32 against batch 1 on one llama.cpp context, alternating rounds (generate.py's
    alternating_rounds), as generate.py's scaling rows measure llmkit: both medians, their ratio, each round's
    ratio; and whether every batched row gave the batch-1 row's greedy tokens."""
    import llama_cpp

    decoder = BatchedDecoder(llama_cpp, model_path, threads, 32)
    prompt = decoder.tokenize(chat_text(chat))
    runs = {"b1": lambda: decoder.run(prompt, 1, new_tokens), "b32": lambda: decoder.run(prompt, 32, new_tokens)}
    for run in runs.values():  # warm-up
        run()
    speeds, outputs, _ = alternating_rounds(lambda name: runs[name](), list(runs), rounds)
    decoder.close()
    single, batched = statistics.median(speeds["b1"]), statistics.median(speeds["b32"])
    return {"b1_tok_s": single, "b32_tok_s": batched, "ratio": batched / single, "file_bytes": model_path.stat().st_size,
            "round_ratios": [round(b / a, 2) for a, b in zip(speeds["b1"], speeds["b32"])],
            "rows_equal_batch_1": all(row == outputs["b1"][0] for row in outputs["b32"])}
