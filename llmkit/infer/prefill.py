"""Chunked prefill (Sarathi-Serve, Agrawal et al. 2024): which prompt tokens one engine step prefills, and
the forward of left-padded rows that runs them.

Each step spends a budget of prompt tokens (`Engine(prefill_chunk=...)`) on the prompts still being
prefilled, oldest first, each continuing its cache row from `request.length` (`plan_chunks`). Requests in
consecutive rows run as one forward, left-padded to the longest chunk, unless the padding would waste too
much of it (`padding_groups`, `prefill_forward`). The engine (engine.py) owns the requests and the caches,
and decides what a prompt that completes does next; a forward that raises reaches it as `ForwardFailed`,
naming the requests that ran in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmkit.infer.scheduler import Request

# A prefill forward of left-padded rows computes rows x longest-chunk tokens. Rows join one forward
# while the filler stays within this fraction of the real tokens (or under PAD_SLACK tokens): the
# weight-only int4/int8 kernels cost about the same per row, so filler is wasted work, while every
# extra forward pays its own per-layer overhead.
PAD_FRACTION, PAD_SLACK = 0.25, 64


class ForwardFailed(Exception):
    """A prefill forward raised: `requests` ran in it; `completed` finished their prompts before it."""

    def __init__(self, requests: list[Request], error: Exception, completed: list):
        super().__init__(str(error))
        self.requests, self.error, self.completed = requests, error, completed


def plan_chunks(requests: Sequence[Request], budget: int) -> list[tuple[Request, int]]:
    """(request, prompt tokens to prefill now) for at most `budget` tokens in all, the oldest requests
    served first (they then complete in order); in row order, as the forwards take them."""
    plan: list[tuple[Request, int]] = []
    for request in sorted(requests, key=lambda r: r.id):
        if budget <= 0:
            break
        n = min(len(request.prompt_ids) - request.length, budget)
        if n > 0:
            plan.append((request, n))
            budget -= n
    return sorted(plan, key=lambda item: item[0].row)


def padding_groups(plan: list[tuple[Request, int]]) -> list[list[tuple[Request, int]]]:
    """Split a row-ordered prefill plan into forwards of consecutive rows with little padding."""
    groups: list[list[tuple[Request, int]]] = []
    for item in plan:
        group = groups[-1] if groups else None
        if group is not None and item[0].row == group[-1][0].row + 1:
            real = sum(n for _, n in group) + item[1]
            padded = (len(group) + 1) * max(item[1], max(n for _, n in group))
            if padded - real <= max(PAD_SLACK, PAD_FRACTION * real):
                group.append(item)
                continue
        groups.append([item])
    return groups


def prefill_forward(model, cache, group: list[tuple[Request, int]]) -> torch.Tensor:
    """One forward of the next chunk of each request in `group` (consecutive rows of `cache`); each request's
    `length` then counts its chunk. Returns the logits after each row's last token, float32 (rows, vocab)."""
    width = max(n for _, n in group)
    tokens, positions, pad = [], [], []
    for request, n in group:
        begin = request.length
        pad.append(width - n)
        tokens.append([0] * (width - n) + request.prompt_ids[begin:begin + n])
        # filler tokens sit at the row's first real position: they see the keys it sees, never none
        positions.append([begin] * (width - n) + list(range(begin, begin + n)))
    first, device = group[0][0].row, model.tok_emb.weight.device
    cache.bind(first, first + len(group), max(r.length + n for r, n in group), pad)
    logits = model(torch.tensor(tokens, device=device), kv_cache=cache, last_token_only=True,
                   positions=torch.tensor(positions, device=device))
    for request, n in group:
        request.length += n
    return logits[:, -1].float()
