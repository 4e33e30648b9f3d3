"""Chunked prefill: prompts are prefilled a per-step budget at a time, several prompts in one
left-padded forward, while the running requests keep decoding (Sarathi-Serve, Agrawal et al. 2024).

Every test checks the outputs against the same prompt prefilled whole and generated alone (greedy
decoding is deterministic), and the engine's row invariants."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.infer import Engine, SamplingParams
from llmkit.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

# Ragged lengths, all longer than the small budgets below (the last one spans many chunks).
PROMPTS = [list(range(3, 50)), [5, 17, 99, 3, 250, 7, 8, 9, 10, 11, 12], [400, 2, 2, 9, 31, 8, 8, 100, 12, 77, 3] * 3,
           [60, 61, 62, 63, 64, 65, 66, 67, 68], [(7 * i) % 500 + 1 for i in range(90)]]
WHOLE = 10_000  # a budget no prompt here reaches: the prompt in one forward, as before chunking


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny")).eval()


def greedy(n=10, logprobs=None):
    return SamplingParams(max_new_tokens=n, temperature=0, logprobs=logprobs)


def alone(model, prompt, n=10, logprobs=None):
    return Engine(model, prefix_cache_mib=0, prefill_chunk=WHOLE).complete(prompt, greedy(n, logprobs))


def check_rows(engine):
    running = engine.scheduler.running
    assert [r.row for r in running] == list(range(len(running))), "rows are not compact"
    flags = [r.needs_prefill for r in running]
    assert flags == sorted(flags), "a prefilling request sits before a decoding one"


def drain(engine, requests):
    while engine.has_work:
        engine.step()
        check_rows(engine)
    assert all(r.done for r in requests) and engine.scheduler.running == []


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_chunked_prefill_equals_whole_prompt_prefill(model, chunk):
    """Tokens identical, log-probabilities equal to float rounding, for every prompt, batched together."""
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=chunk)
    completions = engine.generate_batch(PROMPTS, greedy(logprobs=2))
    for prompt, completion in zip(PROMPTS, completions):
        reference = alone(model, prompt, logprobs=2)
        assert completion.token_ids == reference.token_ids
        assert completion.finish_reason == reference.finish_reason == "length"
        for got, want in zip(completion.logprobs, reference.logprobs, strict=True):
            assert got.token_id == want.token_id and abs(got.logprob - want.logprob) < 1e-5
            assert [t for t, _ in got.top] == [t for t, _ in want.top]
    assert engine.stats["prefill_tokens"] == sum(map(len, PROMPTS))


def test_prompts_of_one_burst_are_prefilled_in_one_padded_forward(model):
    """Prompts arriving together share forwards (rows > 1, left-padded); filler tokens write nothing."""
    shapes = []
    handle = model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        engine = Engine(model, prefix_cache_mib=0, prefill_chunk=WHOLE)
        short, longer = [9, 8, 7], list(range(20, 60))
        # lengths within the padding allowance (< 64 filler tokens): one forward of 2 rows x 40
        requests = [engine.submit(p, greedy()) for p in (longer, short)]
        engine.step()
        assert shapes[:1] == [(2, 40)]
        solo = Engine(model, prefix_cache_mib=0, prefill_chunk=WHOLE)
        solo.submit(short, greedy())
        solo.step()
        cache, solo_cache, row = engine.scheduler.cache, solo.scheduler.cache, requests[1].row
        # the short row holds its 3 prompt positions and its first token's (decoded in the same step), zeros after
        assert requests[1].length == 4
        for layer in range(model.config.n_layers):
            for mine, theirs in ((cache.keys, solo_cache.keys), (cache.values, solo_cache.values)):
                assert torch.allclose(mine[layer][row, :, :4], theirs[layer][0, :, :4], atol=1e-6)
                assert mine[layer][row, :, 4:].abs().sum() == 0
        drain(engine, requests)
    finally:
        handle.remove()
    assert [r.output_ids for r in requests] == [alone(model, longer).token_ids, alone(model, short).token_ids]


def test_running_requests_decode_while_a_long_prompt_is_prefilled(model):
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=8)
    running = engine.submit(PROMPTS[3], greedy(20))  # 9 tokens: two steps of prefill
    engine.step()
    engine.step()  # the last prompt token, its first token, and that token decoded in the same step
    assert len(running.output_ids) == 2
    long = engine.submit(PROMPTS[4], greedy())  # 90 tokens: 12 steps at 8 a step
    for step in range(12):
        events: dict[int, list[int]] = {}
        for request, tokens in engine.step():
            events.setdefault(id(request), []).extend(tokens)
        check_rows(engine)
        assert len(events[id(running)]) == 1, f"step {step}: the running request did not decode"
        if step < 11:
            assert long.needs_prefill and long.output_ids == [] and id(long) not in events
            assert long.length == 8 * (step + 1)
        else:  # the last chunk completes the prompt: its first token, then its second from the decode forward
            assert not long.needs_prefill and len(events[id(long)]) == 2
    assert len(running.output_ids) == 14
    drain(engine, [running, long])
    assert running.output_ids == alone(model, PROMPTS[3], 20).token_ids
    assert long.output_ids == alone(model, PROMPTS[4]).token_ids


def test_budget_is_shared_oldest_first(model):
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=32)
    first, second = engine.submit(PROMPTS[0], greedy()), engine.submit(PROMPTS[1], greedy())
    engine.step()  # 47 and 11 tokens: the oldest takes the whole budget
    assert (first.length, second.length) == (32, 0)
    engine.step()  # the oldest's last 15 tokens, then 11 of the next: both complete, and both decode once
    assert (first.length, second.length) == (48, 12) and len(first.output_ids) == len(second.output_ids) == 2
    drain(engine, [first, second])
    assert first.output_ids == alone(model, PROMPTS[0]).token_ids
    assert second.output_ids == alone(model, PROMPTS[1]).token_ids


@pytest.mark.parametrize("after_steps", [1, 3])
def test_request_cancelled_between_chunks_frees_its_row(model, after_steps):
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=10)
    running = engine.submit(PROMPTS[1], greedy(30))
    engine.step()
    engine.step()
    victim = engine.submit(PROMPTS[4], greedy())
    later = engine.submit(PROMPTS[2], greedy())  # waits behind the victim for its budget
    for _ in range(after_steps):
        engine.step()
    assert victim.needs_prefill and 0 < victim.length < len(PROMPTS[4])
    engine.cancel(victim)  # no step in progress: retired at once
    assert victim.finish_reason == "cancelled" and victim.row is None and victim.output_ids == []
    assert victim not in engine.scheduler.running and len(engine.scheduler.running) == 2
    check_rows(engine)
    drain(engine, [running, victim, later])
    assert running.output_ids == alone(model, PROMPTS[1], 30).token_ids
    assert later.output_ids == alone(model, PROMPTS[2]).token_ids
    # the freed row serves a new prompt as if it were fresh
    assert engine.generate(PROMPTS[4], greedy()) == alone(model, PROMPTS[4]).token_ids


def test_decoding_request_finishing_while_others_prefill_keeps_rows_ordered(model):
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=6)
    short = engine.submit(PROMPTS[3], greedy(3))  # decodes, then finishes while the others prefill
    engine.step()
    engine.step()
    others = [engine.submit(p, greedy()) for p in (PROMPTS[0], PROMPTS[2], PROMPTS[1])]
    drain(engine, [short, *others])
    assert short.output_ids == alone(model, PROMPTS[3], 3).token_ids
    for request, prompt in zip(others, (PROMPTS[0], PROMPTS[2], PROMPTS[1])):
        assert request.output_ids == alone(model, prompt).token_ids


def test_prefix_cache_hit_skips_the_cached_part_of_a_chunked_prompt(model):
    engine = Engine(model, block_size=4, prefill_chunk=5)
    first = engine.complete(PROMPTS[4], greedy())
    follow_up = PROMPTS[4][:60] + [11, 12, 13, 14, 15, 16, 17]
    before = engine.stats["prefill_tokens"]
    second = engine.complete(follow_up, greedy(logprobs=0))
    assert first.token_ids == alone(model, PROMPTS[4]).token_ids
    assert second.cached_tokens == 60
    assert engine.stats["prefill_tokens"] - before == len(follow_up) - 60
    reference = alone(model, follow_up, logprobs=0)
    assert second.token_ids == reference.token_ids
    assert max(abs(a.logprob - b.logprob) for a, b in zip(second.logprobs, reference.logprobs)) < 1e-5


def test_first_tokens_are_handed_over_before_the_decode_forward(model):
    """A server delivers a new request's first token between the prefill and the decode forward, so its
    time to first token does not include everyone's next token."""
    engine = Engine(model, prefix_cache_mib=0)
    running = engine.submit(PROMPTS[1], greedy(20))
    engine.step()
    forwards, seen = [], []
    handle = model.register_forward_hook(lambda m, args, out: forwards.append(tuple(args[0].shape)))
    try:
        late = engine.submit(PROMPTS[3], greedy())
        engine.step(on_first_tokens=lambda: seen.append((list(late.output_ids), list(forwards))))
    finally:
        handle.remove()
    prefill, decode = (1, len(PROMPTS[3])), (2, 1)
    assert seen == [([alone(model, PROMPTS[3]).token_ids[0]], [prefill])]  # its token, and only its prefill ran
    assert forwards == [prefill, decode]  # then one decode forward for both requests
    assert (running.row, late.row) == (0, 1) and len(late.output_ids) == 2
    drain(engine, [running, late])
    assert running.output_ids == alone(model, PROMPTS[1], 20).token_ids
    assert late.output_ids == alone(model, PROMPTS[3]).token_ids
