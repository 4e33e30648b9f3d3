"""The server's `/metrics`: Prometheus text exposition format (version 0.0.4), written by hand: a few
gauges, counters and two histograms need no client library.

Gauges are set by the engine thread after every step; counters and histograms are updated by the
engine thread (tokens, latencies) and the HTTP handlers (rejections), under one lock.
"""

from __future__ import annotations

import bisect
import threading

# Latency buckets in seconds: from a fast GPU decode step (~1 ms) to a slow CPU prefill (tens of s).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip([*map(_float, self.buckets), "+Inf"], self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return out + [f"{name}_sum {_float(self.sum)}", f"{name}_count {self.count}"]


def _float(x: float) -> str:
    return repr(float(x))


class ServerMetrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0  # reserved positions of running requests / positions the budget allows
        self.kv_cache_bytes = 0
        self.prefix_cache_hit_rate = 0.0  # prompt tokens served by the prefix cache / all prompt tokens
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.rejected = 0  # 429: the waiting queue was full
        self.abandoned = 0  # embeddings / echo requests stopped between forwards: their client hung up
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def count_finished(self, reason: str) -> None:
        with self.lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def count_rejected(self) -> None:
        with self.lock:
            self.rejected += 1

    def count_abandoned(self) -> None:
        with self.lock:
            self.abandoned += 1

    def render(self) -> str:
        with self.lock:
            rows = [
                ("llmkit_requests_running", "gauge", "Requests in the running batch.", [f"{self.running}"]),
                ("llmkit_requests_waiting", "gauge", "Requests accepted and waiting for a batch row.",
                 [f"{self.waiting}"]),
                ("llmkit_kv_cache_usage_ratio", "gauge",
                 "KV-cache positions reserved by running requests / positions the cache budget allows.",
                 [_float(self.kv_cache_usage)]),
                ("llmkit_kv_cache_bytes", "gauge", "Bytes of KV cache allocated.", [f"{self.kv_cache_bytes}"]),
                ("llmkit_prefix_cache_hit_ratio", "gauge",
                 "Prompt tokens served by the prefix cache / all prompt tokens, since start.",
                 [_float(self.prefix_cache_hit_rate)]),
                ("llmkit_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
                 [f"{self.prompt_tokens}"]),
                ("llmkit_generation_tokens_total", "counter", "Tokens generated.", [f"{self.generation_tokens}"]),
                ("llmkit_requests_finished_total", "counter", "Finished engine requests by finish reason.",
                 [f'{{reason="{k}"}} {v}' for k, v in sorted(self.finished.items())] or ['{reason="stop"} 0']),
                ("llmkit_requests_rejected_total", "counter", "Requests refused with 429 (waiting queue full).",
                 [f"{self.rejected}"]),
                ("llmkit_requests_abandoned_total", "counter",
                 "Embedding and prompt log-probability requests stopped between forwards: the client hung up.",
                 [f"{self.abandoned}"]),
            ]
            text = []
            for name, kind, help_text, values in rows:
                text += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                text += [f"{name}{v}" if v.startswith("{") else f"{name} {v}" for v in values]
            for name, hist, help_text in (
                    ("llmkit_time_to_first_token_seconds", self.ttft, "Time from request accepted to first token."),
                    ("llmkit_inter_token_latency_seconds", self.itl, "Time between successive tokens of a request.")):
                text += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *hist.lines(name)]
        return "\n".join(text) + "\n"
