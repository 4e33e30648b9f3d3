"""Does one heavy request stall `llmkit serve` for everyone else? A real server process; while each heavy
request below is in flight, another client polls `GET /health` every 20 ms and we record its worst wait.

    python benchmarks/serve_stalls.py                      # llmkit serve on smollm2
    python benchmarks/serve_stalls.py --model runs/tiny    # any checkpoint

Heavy requests (each is a client's legitimate or careless request, answered 200 or 400):
- a chat message of 2.7 M characters (far beyond any context: refused from a prefix of it);
- /tokenize of 2.7 M characters (answered: tokenized on a worker thread that releases the GIL);
- a 30,001-turn conversation with `truncate: "oldest"` (a binary search over how many turns to drop);
- 16 stop strings of 1,000 characters on a 200-token reply.
A request's seconds include its model work (the truncated conversation's prefill of ~8,000 tokens on SmolLM2
takes most of its time); the worst /health wait is what the other clients felt.
Before the fixes of 2026-12-07 the first stalled /health for ~26 s and the third for over 10 minutes on the
audit's tiny model. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx

from serve import start_llmkit


def heavy_requests() -> list[tuple[str, str, dict]]:
    text = "ab " * 900_000
    turns = [{"role": ("user", "assistant")[i % 2], "content": f"Turn {i}: ab ab"} for i in range(30_001)]
    return [
        ("chat, 2.7 M characters", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": text}], "max_tokens": 2}),
        ("/tokenize, 2.7 M characters", "/tokenize", {"prompt": text}),
        ("truncate oldest, 30,001 turns", "/v1/chat/completions",
         {"messages": turns, "truncate": "oldest", "max_tokens": 2}),
        ("16 stop strings of 1,000 characters", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200, "temperature": 0,
          "stop": [chr(ord("A") + i) + "x" * 999 for i in range(16)]}),
    ]


def measure(base: str, path: str, body: dict) -> dict:
    waits, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            httpx.get(f"{base}/health", timeout=900)
            waits.append(time.perf_counter() - start)
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    start = time.perf_counter()
    response = httpx.post(f"{base}{path}", json=body, timeout=900)
    took = time.perf_counter() - start
    stop.set()
    poller.join()
    row = {"status": response.status_code, "seconds": round(took, 3), "health_worst_s": round(max(waits), 3),
           "health_polls": len(waits)}
    reply = response.json()
    if "usage" in reply:  # what the engine then had to do: the prompt it prefilled (truncated or not)
        row["prompt_tokens"] = reply["usage"]["prompt_tokens"]
    if "truncated_messages" in reply:
        row["truncated_messages"] = reply["truncated_messages"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-body-mib", type=float, default=8)
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp()) / "server.log"
    process, url = start_llmkit(args.model, ["--max-body-mib", str(args.max_body_mib)], log)
    base = url.removesuffix("/v1")
    try:
        rows = {name: measure(base, path, body) for name, path, body in heavy_requests()}
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"llmkit serve --model {args.model}; GET /health polled every 20 ms during each request")
    print("| request | status | seconds | worst /health wait (s) | polls | prompt tokens (turns dropped) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, row in rows.items():
        prompt = f"{row.get('prompt_tokens', '-')}" + (f" ({row['truncated_messages']})" if "truncated_messages" in row
                                                        else "")
        print(f"| {name} | {row['status']} | {row['seconds']} | {row['health_worst_s']} | {row['health_polls']} "
              f"| {prompt} |")
    print(json.dumps({"benchmark": "serve_stalls", "model": args.model,
                      "worst_health_wait_s": max(r["health_worst_s"] for r in rows.values()),
                      **{name: row for name, row in rows.items()}}))


if __name__ == "__main__":
    main()
