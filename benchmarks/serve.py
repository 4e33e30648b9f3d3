"""Serving under load, in the style of `vllm bench serve`: fixed chat prompts streamed through
`/v1/chat/completions` by many clients at once, against `llmkit serve` and any other OpenAI-compatible
server given by URL (llama.cpp's `llama-server`, llama-cpp-python's server), in one invocation.

    python benchmarks/serve.py                                   # llmkit serve on smollm2 (fp32), 1/4/16 clients
    python benchmarks/serve.py --llmkit smollm2 --llmkit runs/smollm2-int4 --max-concurrency 1 4 16 64
    python benchmarks/serve.py --llmkit "smollm2 --compile" --llmkit runs/smollm2-int4  # options per server
    python benchmarks/serve.py --url llama-server=http://127.0.0.1:8080/v1 --max-concurrency 16
    python benchmarks/serve.py --request-rate 2 --num-prompts 64 # also Poisson arrivals at 2 requests/s
    python benchmarks/serve.py --soak 2000 --disconnect 0.1      # the soak test: leaks and stuck requests

Each request streams (`stream_options.include_usage`), so per request we see: TTFT (time to the first
content token), ITL (every gap between streamed content chunks), TPOT ((end-to-end - TTFT) / (output
tokens - 1)) and end-to-end latency; output tokens are the server's own `usage.completion_tokens`, or
the content chunks it streamed where it reports no usage (llama-cpp-python's server: one token a chunk).
Every server gets the same prompts, `max_tokens` and `temperature=0`, and `ignore_eos`-free requests,
so the reply lengths can differ between servers: output tokens/s is what compares them.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

# Fixed chat prompts of mixed lengths (the benchmark's own; what a chat server sees).
PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a lighthouse keeper.",
    "What are three tips for learning a new language?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "How does a refrigerator keep food cold?",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "List five animals that live in the Arctic and one fact about each.",
    "Why do we have leap years?",
    "Describe how to change a flat bicycle tyre.",
    "What is photosynthesis? Answer for a ten-year-old.",
    "Write a polite email declining a meeting invitation.",
    "What causes the seasons on Earth?",
    "Suggest a name for a bakery and explain why.",
    "How do vaccines train the immune system?",
    "Tell me a short story about a robot who learns to paint.",
]


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    cancelled: bool = False


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
                      disconnect_after: int | None = None) -> Result:
    """One streamed chat completion; with `disconnect_after`, the client hangs up after that many chunks."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    result, start, last = Result(), time.perf_counter(), None
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            chunks, usage_seen = 0, False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage_seen = True
                    result.output_tokens = event["usage"].get("completion_tokens", 0)
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if last is None:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
                        chunks += 1
                if disconnect_after is not None and chunks >= disconnect_after:
                    result.cancelled = True
                    return result  # leaving the `async with` closes the connection mid-stream
        result.e2e = time.perf_counter() - start
        if not usage_seen:  # a server that never reports usage (llama-cpp-python's): count what it streamed
            result.output_tokens = chunks
        result.ok = last is not None or result.output_tokens == 0
        if not result.ok:
            result.error = "no content streamed"
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def run_load(url: str, model: str, num_prompts: int, concurrency: int, rate: float | None,
                   max_tokens: int, seed: int = 0) -> dict:
    """`num_prompts` requests with at most `concurrency` in flight; with `rate`, Poisson arrivals."""
    rng = random.Random(seed)
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def limited(i: int) -> Result:
            async with semaphore:
                return await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens)

        tasks, start = [], time.perf_counter()
        for i in range(num_prompts):
            tasks.append(asyncio.create_task(limited(i)))
            if rate:
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarise(results, duration, concurrency, rate)


def summarise(results: list[Result], duration: float, concurrency: int, rate: float | None) -> dict:
    ok = [r for r in results if r.ok]
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itl = [x for r in ok for x in r.itl]
    out_tokens = sum(r.output_tokens for r in ok)
    ms = lambda xs, q: round(1000 * percentile(xs, q), 1)  # noqa: E731
    return {"concurrency": concurrency, "request_rate": rate, "requests": len(results), "failed": len(results) - len(ok),
            "errors": sorted({r.error for r in results if not r.ok})[:3], "duration_s": round(duration, 2),
            "output_tokens": out_tokens, "output_tok_s": round(out_tokens / duration, 1),
            "requests_per_s": round(len(ok) / duration, 2),
            "ttft_p50_ms": ms([r.ttft for r in ok], 50), "ttft_p99_ms": ms([r.ttft for r in ok], 99),
            "tpot_p50_ms": ms(tpot, 50), "tpot_p99_ms": ms(tpot, 99),
            "itl_p50_ms": ms(itl, 50), "itl_p99_ms": ms(itl, 99),
            "e2e_p50_ms": ms([r.e2e for r in ok], 50), "e2e_p99_ms": ms([r.e2e for r in ok], 99)}


def start_llmkit(model: str, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`llmkit serve --model MODEL` on a free port, as a user starts it; returns (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "serve", "--model", model, "--port", "0", *extra],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline, url = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llmkit serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if url is None and (found := re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())):
            url = found.group(1)
        if url is not None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return process, url + "/v1"
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"llmkit serve was not ready in 600 s:\n{log.read_text()[-3000:]}")


def served_model(url: str) -> str:
    try:
        return httpx.get(f"{url}/models", timeout=10).json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return "default"


def resident_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def running_requests(url: str) -> float:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
    found = re.search(r"^llmkit_requests_running (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


async def soak(url: str, model: str, pid: int, total: int, disconnect: float, concurrency: int, max_tokens: int) -> dict:
    """`total` requests, a `disconnect` fraction of whose clients hang up at a random chunk; resident
    memory after the first 200 requests and at the end, and the running requests left afterwards."""
    rng = random.Random(0)
    semaphore = asyncio.Semaphore(concurrency)
    done, rss_after_200 = 0, None
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        async def one(i: int) -> Result:
            nonlocal done, rss_after_200
            async with semaphore:
                cut = rng.randint(1, max_tokens // 2) if rng.random() < disconnect else None
                r = await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens, disconnect_after=cut)
            done += 1
            if done == 200:
                rss_after_200 = resident_mib(pid)
            return r

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(total)))
        duration = time.perf_counter() - start
    await asyncio.sleep(1.0)  # a cancelled request is dropped within one engine step
    rss_end = resident_mib(pid)
    unexpected = [r for r in results if not r.ok and not r.cancelled]
    return {"requests": total, "disconnected": sum(r.cancelled for r in results), "errors": len(unexpected),
            "error_kinds": sorted({r.error for r in unexpected})[:3], "running_after": running_requests(url),
            "rss_after_200_mib": round(rss_after_200 or float("nan"), 1), "rss_end_mib": round(rss_end, 1),
            "rss_growth": round(rss_end / rss_after_200 - 1, 4) if rss_after_200 else None,
            "duration_s": round(duration, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llmkit", action="append", default=None, metavar="MODEL",
                        help="start `llmkit serve --model MODEL` (repeatable; default: smollm2); options for that "
                        "server alone may follow the model in the same argument: 'smollm2 --compile'")
    parser.add_argument("--llmkit-args", default="", help="extra `llmkit serve` options for every llmkit server")
    parser.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                        help="an already running OpenAI-compatible server, e.g. llama-server=http://127.0.0.1:8080/v1")
    parser.add_argument("--max-concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--request-rate", type=float, nargs="+", default=[], help="also Poisson arrivals at these "
                        "rates (requests/s), at most the largest --max-concurrency in flight, after the all-at-once rows")
    parser.add_argument("--num-prompts", type=int, default=None, help="requests per setting (default: 4 x concurrency, >= 16)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="instead: N requests, some clients hanging up")
    parser.add_argument("--disconnect", type=float, default=0.1, help="soak: the fraction of clients that hang up")
    args = parser.parse_args()

    targets, processes = [], []
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        for spec in (args.llmkit if args.llmkit is not None else ([] if args.url else ["smollm2"])):
            model, *own = spec.split()
            log = log_dir / f"bench-serve-{len(processes)}.log"
            process, url = start_llmkit(model, own + args.llmkit_args.split(), log)
            processes.append(process)
            targets.append((f"llmkit:{Path(model).name}" + "".join(f" {o}" for o in own), url, process.pid))
        for spec in args.url:
            name, _, url = spec.partition("=")
            targets.append((name, url.rstrip("/"), None))

        if args.soak:
            name, url, pid = targets[0]
            if pid is None:
                raise SystemExit("--soak measures the server's memory: give it an --llmkit model")
            figures = asyncio.run(soak(url, served_model(url), pid, args.soak, args.disconnect,
                                       max(args.max_concurrency), args.max_tokens))
            print("| server | requests | disconnected | errors | running after | RSS after 200 | RSS end | growth |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            print(f"| {name} | {figures['requests']} | {figures['disconnected']} | {figures['errors']} | "
                  f"{figures['running_after']:.0f} | {figures['rss_after_200_mib']} MiB | {figures['rss_end_mib']} MiB | "
                  f"{100 * (figures['rss_growth'] or 0):+.2f}% |")
            print(json.dumps({"benchmark": "serve_soak", "server": name, **figures}))
            return

        rows = []
        for name, url, _ in targets:
            model = served_model(url)
            asyncio.run(run_load(url, model, 2, 1, None, 8))  # warm-up: first-call costs stay out of the figures
            settings = [(c, None) for c in args.max_concurrency] + [(max(args.max_concurrency), r)
                                                                     for r in args.request_rate]
            for concurrency, rate in settings:
                n = args.num_prompts or max(16, 4 * concurrency)
                figures = asyncio.run(run_load(url, model, n, concurrency, rate, args.max_tokens))
                rows.append({"server": name, **figures})
                print(f"  {name} c={concurrency} rate={rate or 'all at once'}: {figures['output_tok_s']} tok/s, "
                      f"{figures['failed']} failed", file=sys.stderr, flush=True)
        header = ["server", "concurrency", "request_rate", "requests", "failed", "output_tok_s", "ttft_p50_ms", "ttft_p99_ms",
                  "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms", "e2e_p50_ms", "e2e_p99_ms"]
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for row in rows:
            print("| " + " | ".join("at once" if row[h] is None else str(row[h]) for h in header) + " |")
        ratios = {}
        base = [r for r in rows if r["server"].startswith("llmkit:")]
        for other in {r["server"] for r in rows} - {r["server"] for r in base}:
            for r in base:
                match = next((o for o in rows if o["server"] == other and o["concurrency"] == r["concurrency"]
                              and o["request_rate"] == r["request_rate"]), None)
                if match and match["output_tok_s"]:
                    where = f"c{r['concurrency']}" + (f"@rate{r['request_rate']:g}" if r["request_rate"] else "")
                    ratios[f"{r['server']}/{other}@{where}"] = round(r["output_tok_s"] / match["output_tok_s"], 2)
        print(json.dumps({"benchmark": "serve", "max_tokens": args.max_tokens, "request_rates": args.request_rate,
                          "rows": rows, "output_tok_s_ratios": ratios}))
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
