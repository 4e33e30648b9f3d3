"""Batching, continuous batching and prefix caching, each against one request run alone."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer import Engine, SamplingParams
from llmkit.infer.kv_cache import kv_bytes_per_token
from llmkit.infer.scheduler import CAPACITY_STEP
from llmkit.model import Transformer


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(preset="tiny", **overrides):
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset(preset, **overrides)).eval()


PROMPTS = [[5, 17, 99, 3, 250, 7], [1], [400, 2, 2, 9, 31, 8, 8, 100, 12, 77, 3], [60, 61]]
GREEDY = SamplingParams(max_new_tokens=20, temperature=0)


def alone(model, prompt, params=GREEDY):
    return Engine(model, prefix_cache_mib=0).complete(prompt, params)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_batched_equals_one_by_one(preset):
    model = make_model(preset)
    expected = [alone(model, p).token_ids for p in PROMPTS]
    batched = Engine(model, prefix_cache_mib=0).generate_batch(PROMPTS, GREEDY)
    assert [c.token_ids for c in batched] == expected


def test_batched_logprobs_equal_alone_within_tolerance():
    model = make_model()
    params = SamplingParams(max_new_tokens=10, temperature=0, logprobs=0)
    batched = Engine(model, prefix_cache_mib=0).generate_batch(PROMPTS, params)
    for prompt, completion in zip(PROMPTS, batched):
        single = alone(model, prompt, params)
        diffs = [abs(a.logprob - b.logprob) for a, b in zip(completion.logprobs, single.logprobs)]
        assert max(diffs) < 1e-5


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = make_model()
    params = [SamplingParams(max_new_tokens=15, temperature=1.0, top_p=0.95, seed=s) for s in (1, 2, 3, 4)]
    batched = Engine(model).generate_batch(PROMPTS, params)
    for prompt, p, completion in zip(PROMPTS, params, batched):
        assert completion.token_ids == alone(model, prompt, p).token_ids
    # the same seed on the same prompt in one batch: identical texts; another seed: another text
    twins = Engine(model).generate_batch([PROMPTS[0]] * 2 + [PROMPTS[0]], [params[0], params[0], params[1]])
    assert twins[0].token_ids == twins[1].token_ids != twins[2].token_ids


def test_continuous_batching_requests_join_midway():
    model = make_model()
    engine = Engine(model, max_batch_size=3, prefix_cache_mib=0)
    lengths = [12, 5, 20, 9, 14]
    params = [SamplingParams(max_new_tokens=n, temperature=0) for n in lengths]
    prompts = PROMPTS + [[7, 7, 7, 300]]
    first = [engine.submit(prompts[i], params[i]) for i in range(2)]
    for _ in range(3):
        engine.step()
    later = [engine.submit(prompts[i], params[i]) for i in range(2, 5)]  # join while the first two run
    seen_rows = set()
    while engine.has_work:
        engine.step()
        assert len(engine.scheduler.running) <= 3
        assert [r.row for r in engine.scheduler.running] == list(range(len(engine.scheduler.running)))
        seen_rows.add(len(engine.scheduler.running))
    assert 3 in seen_rows  # the batch was full at some point, and requests waited
    for request, prompt, p in zip(first + later, prompts, params):
        assert request.output_ids == alone(model, prompt, p).token_ids
        assert request.finish_reason == "length"


def test_requests_finishing_in_one_step_leave_with_one_move_at_most(monkeypatch):
    """Rows 0 and 3 of 5 finish in the same step: the running request of row 4 moves into row 0 and the
    others stay, one move (one at a time, row 4 moved into row 0, then the new last row into row 3); a
    whole batch finishing together moves nothing. Every reply as if run alone."""
    model = make_model()
    moves = []
    engine = Engine(model, max_batch_size=5, prefix_cache_mib=0)
    prompts = PROMPTS + [[7, 7, 7, 300]]
    lengths = [6, 12, 12, 6, 12]
    requests = [engine.submit(p, SamplingParams(max_new_tokens=n, temperature=0)) for p, n in zip(prompts, lengths)]
    engine.step()
    assert [r.row for r in requests] == [0, 1, 2, 3, 4]
    original = engine.scheduler.cache.move_rows
    monkeypatch.setattr(engine.scheduler.cache, "move_rows",
                        lambda sources, destinations, length: (moves.append((list(sources), list(destinations))),
                                                               original(sources, destinations, length)))
    while not requests[0].done:
        engine.step()
    assert requests[3].done and moves == [([4], [0])]
    assert [r.row for r in requests] == [None, 1, 2, None, 0]
    while engine.has_work:
        engine.step()
    assert moves == [([4], [0])] and engine.scheduler.running == []
    for request, prompt, n in zip(requests, prompts, lengths):
        assert request.output_ids == alone(model, prompt, SamplingParams(max_new_tokens=n, temperature=0)).token_ids


def test_memory_budget_bounds_the_cache_and_queues_requests():
    model = make_model()
    capacity = min(CAPACITY_STEP, model.config.max_seq_len)  # every request here fits one row this long
    per_row = capacity * kv_bytes_per_token(model.config, torch.float32)
    budget_mib = 2 * per_row / 2**20  # room for two requests at a time
    engine = Engine(model, kv_cache_mib=budget_mib, prefix_cache_mib=0)
    prompts = PROMPTS * 2
    requests = [engine.submit(p, GREEDY) for p in prompts]
    peak_running = 0
    while engine.has_work:
        engine.step()
        peak_running = max(peak_running, len(engine.scheduler.running))
        assert engine.scheduler.memory_in_use <= budget_mib * 2**20
    assert peak_running == 2
    for request, prompt in zip(requests, prompts):
        assert request.output_ids == alone(model, prompt).token_ids
    with pytest.raises(GenerationError, match="budget"):
        Engine(model, kv_cache_mib=0.01).generate([1, 2, 3], GREEDY)


def test_a_long_request_after_the_cache_widened_is_admitted_once_the_batch_drains():
    """Short requests widen the cache to as many rows as the budget allows; a long request then cannot
    have a row that long in so wide a cache, but fits alone: the cache is reshaped for it rather than
    left waiting forever (an idle engine once spun without end here)."""
    model = make_model(max_seq_len=4 * CAPACITY_STEP)
    per_position = kv_bytes_per_token(model.config, torch.float32)
    engine = Engine(model, kv_cache_mib=4 * CAPACITY_STEP * per_position / 2**20, prefix_cache_mib=0)
    long_prompt = [(7 * i) % 500 + 3 for i in range(2 * CAPACITY_STEP + 40)]  # 3 x CAPACITY_STEP reserved
    prompts = PROMPTS + [long_prompt] + PROMPTS[:2]
    requests = [engine.submit(p, GREEDY) for p in prompts]
    for _ in range(1000):
        if not engine.has_work:
            break
        engine.step()
        assert engine.scheduler.memory_in_use <= 4 * CAPACITY_STEP * per_position
    assert not engine.has_work, "requests left unfinished"
    for request, prompt in zip(requests, prompts):
        assert request.output_ids == alone(model, prompt).token_ids


def test_prefix_cache_equals_uncached():
    model = make_model()
    system = list(range(3, 50))  # a shared "system prompt" of 47 tokens: two full blocks of 16
    engine = Engine(model, block_size=16)
    params = SamplingParams(max_new_tokens=12, temperature=0, logprobs=0)
    first = engine.complete(system + [400, 401], params)
    second = engine.complete(system + [402, 403, 404], params)
    assert first.cached_tokens == 0 and second.cached_tokens == 32
    for prompt, cached in ((system + [400, 401], first), (system + [402, 403, 404], second)):
        uncached = alone(model, prompt, params)
        assert cached.token_ids == uncached.token_ids
        assert max(abs(a.logprob - b.logprob) for a, b in zip(cached.logprobs, uncached.logprobs)) < 1e-5
    # multi-turn: the next prompt holds the whole previous exchange, reply included
    follow_up = system + [402, 403, 404] + second.token_ids + [405, 406]
    third = engine.complete(follow_up, params)
    assert third.cached_tokens == (len(follow_up) - 1) // 16 * 16
    assert third.token_ids == alone(model, follow_up, params).token_ids


def test_prefix_cache_evicts_under_its_budget():
    model = make_model()
    block_bytes = 16 * kv_bytes_per_token(model.config, torch.float32)
    engine = Engine(model, block_size=16, prefix_cache_mib=3 * block_bytes / 2**20)  # three blocks
    pool = engine.prefix_cache
    assert pool.n_blocks == 3
    prompts = [[i] * 40 for i in (10, 20, 30)]  # two full blocks each: six in all
    for prompt in prompts:
        assert engine.complete(prompt, GREEDY).token_ids == alone(model, prompt).token_ids
    assert pool.evictions > 0 and len(pool.table) <= 3
    again = engine.complete(prompts[-1], GREEDY)  # the most recent prompt is still cached
    assert again.cached_tokens > 0 and again.token_ids == alone(model, prompts[-1]).token_ids


def test_token_prefix_cache_reuses_all_but_the_last_prompt_token():
    """The default blocks are one token: a prompt reuses every cached token it shares, and a follow-up
    turn holding the whole previous exchange prefills only its last token's worth of new positions."""
    model = make_model()
    system = list(range(3, 50))  # 47 shared tokens: 16-token blocks would reuse 32 of them
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=12, temperature=0, logprobs=0)
    first = engine.complete(system + [400, 401], params)
    second = engine.complete(system + [402, 403, 404], params)
    assert first.cached_tokens == 0 and second.cached_tokens == 47
    again = engine.complete(system + [402, 403, 404], params)
    assert again.cached_tokens == len(system) + 2  # all but the last prompt token
    follow_up = system + [402, 403, 404] + second.token_ids + [405]
    third = engine.complete(follow_up, params)
    # the reply's last token never entered the cache (it was emitted, not run), so that and [405] are prefilled
    assert third.cached_tokens == len(follow_up) - 2
    for completion, prompt in ((second, system + [402, 403, 404]), (again, system + [402, 403, 404]),
                               (third, follow_up)):
        uncached = alone(model, prompt, params)
        assert completion.token_ids == uncached.token_ids
        assert max(abs(a.logprob - b.logprob) for a, b in zip(completion.logprobs, uncached.logprobs)) < 1e-5


def test_a_reserved_cache_is_not_reallocated_by_a_burst():
    """A server allocates its KV cache up front: a burst of max_batch_size requests runs in that one
    cache (no resize copying every row while they wait), within the budget, and gives the same tokens."""
    model = make_model(max_seq_len=4 * CAPACITY_STEP)
    per_row = CAPACITY_STEP * kv_bytes_per_token(model.config, torch.float32)
    engine = Engine(model, max_batch_size=8, kv_cache_mib=8 * 2.5 * per_row / 2**20, prefix_cache_mib=0)
    assert engine.reserve_cache() == (8, 2 * CAPACITY_STEP)  # 2.5 steps' worth a row, rounded down
    cache = engine.scheduler.cache
    prompts = (PROMPTS * 2)[:8]
    completions = engine.generate_batch(prompts, GREEDY)
    assert engine.scheduler.cache is cache
    assert [c.token_ids for c in completions] == [alone(model, p).token_ids for p in prompts]
    # too small a budget for max_batch_size rows of CAPACITY_STEP: fewer rows, never over the budget
    small = Engine(model, max_batch_size=8, kv_cache_mib=3 * per_row / 2**20, prefix_cache_mib=0)
    assert small.reserve_cache() == (2, CAPACITY_STEP)
    assert small.generate_batch(prompts, GREEDY)[3].token_ids == completions[3].token_ids
