"""Engine isolation: cancelling or failing one request never changes, strands or wedges the others.

Every test checks the survivors against the same request run alone (greedy decoding is deterministic),
and the engine's invariants: running requests sit in rows [0, n), no row leaks, every request ends."""

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.config import ModelConfig
from llmkit.errors import GenerationError
from llmkit.infer import Engine, SamplingParams
from llmkit.model import Transformer


pytestmark = pytest.mark.usefixtures("one_thread")


BAD = 511  # a token whose embedding is NaN in `model`: any prompt holding it yields NaN logits


def make_model():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", tie_embeddings=False)).eval()  # the head stays finite
    with torch.no_grad():
        model.tok_emb.weight[BAD] = float("nan")
    return model


@pytest.fixture(scope="module")
def model():
    return make_model()


PROMPTS = [[5, 17, 99, 3, 250, 7], [1], [400, 2, 2, 9, 31, 8, 8, 100, 12, 77, 3], [60, 61], list(range(3, 50))]
SOLO: dict = {}


def greedy(n=12):
    return SamplingParams(max_new_tokens=n, temperature=0)


def solo(model, prompt, n=12):
    key = (tuple(prompt), n)
    if key not in SOLO:
        SOLO[key] = Engine(model, prefix_cache_mib=0).generate(prompt, greedy(n))
    return SOLO[key]


def failing_sampler_params(n=12):
    """Parameters that pass validation and then break sampling (as temperature=1e-45 did before it was
    refused): logits / 1e-45 overflow to inf, softmax gives NaN, and torch.multinomial raises."""
    params = SamplingParams(max_new_tokens=n, temperature=1.0, seed=0)
    params.temperature = 1e-45
    return params


def check_invariants(engine, requests=()):
    running = engine.scheduler.running
    assert [r.row for r in running] == list(range(len(running))), "rows are not compact"
    assert len(running) <= engine.scheduler.max_batch_size
    assert not any(r.done for r in running), "a finished request holds a row"
    waiting = list(engine.scheduler.waiting)
    assert not set(map(id, waiting)) & set(map(id, running))
    cache = engine.scheduler.cache
    if cache is not None:  # a free row holds no NaN: the next request given it would read it (a masked key's 0 x NaN)
        for t in cache._position_tensors():
            assert not t[len(running):].isnan().any(), "a free cache row holds NaN"
    for r in requests:  # each request is exactly one of: waiting, running, finished
        states = [any(r is w for w in waiting), any(r is x for x in running), r.done and r.row is None]
        assert sum(states) == 1, (r.id, r.finish_reason, r.row, states)


def drain(engine, requests, max_steps=500):
    for _ in range(max_steps):
        if not engine.has_work:
            break
        engine.step()
        check_invariants(engine, requests)
    assert not engine.has_work and all(r.done for r in requests)
    assert engine.scheduler.running == [] and not engine.scheduler.waiting


# -- cancellation
@pytest.mark.parametrize("victim", [0, 1, 2, 3])
def test_cancel_any_running_row_leaves_the_others_unchanged(model, victim):
    engine = Engine(model, block_size=4)
    requests = [engine.submit(p, greedy()) for p in PROMPTS[:4]]
    for _ in range(3):
        engine.step()
    assert [r.row for r in requests] == [0, 1, 2, 3]
    engine.cancel(requests[victim])  # outside inference mode, between steps
    check_invariants(engine, requests)
    assert requests[victim].finish_reason == "cancelled" and requests[victim].row is None
    drain(engine, requests)
    for i, (request, prompt) in enumerate(zip(requests, PROMPTS)):
        if i == victim:
            assert request.output_ids == solo(model, prompt)[:len(request.output_ids)]
        else:
            assert request.output_ids == solo(model, prompt), i
            assert request.finish_reason == "length"
    # the engine is not wedged: the freed rows serve new requests
    assert engine.generate(PROMPTS[victim], greedy()) == solo(model, PROMPTS[victim])


def test_cancel_each_row_in_turn_inside_inference_mode(model):
    engine = Engine(model, prefix_cache_mib=0)
    requests = [engine.submit(p, greedy(20)) for p in PROMPTS]
    engine.step()
    for order in (2, 0, 1):  # middle, first, then whatever moved into row 1
        engine.step()
        with torch.inference_mode():
            engine.cancel(engine.scheduler.running[order])
        check_invariants(engine, requests)
    drain(engine, requests)
    survivors = [r for r in requests if r.finish_reason != "cancelled"]
    assert len(survivors) == 2
    for r in requests:
        reference = solo(model, r.prompt_ids, 20)
        assert r.output_ids == (reference if r in survivors else reference[:len(r.output_ids)])


def test_cancel_a_waiting_request(model):
    engine = Engine(model, max_batch_size=1, prefix_cache_mib=0)
    first, queued = engine.submit(PROMPTS[0], greedy()), engine.submit(PROMPTS[1], greedy())
    engine.step()
    engine.cancel(queued)
    assert queued.finish_reason == "cancelled" and queued.output_ids == [] and not engine.scheduler.waiting
    drain(engine, [first, queued])
    assert first.output_ids == solo(model, PROMPTS[0])


def cancel_from_thread(engine, request):
    thread = threading.Thread(target=engine.cancel, args=(request,))
    thread.start()
    thread.join()


def test_cancel_from_another_thread_during_a_decode_step(model):
    engine = Engine(model, block_size=4)
    requests = [engine.submit(p, greedy()) for p in PROMPTS[:3]]
    engine.step()
    victim = requests[0]
    fired = []

    def hook(module, args, output):
        if not fired and args[0].shape == (3, 1):  # the batched decode forward of all three
            fired.append(True)
            cancel_from_thread(engine, victim)

    handle = model.register_forward_hook(hook)
    try:
        engine.step()  # the cancel lands mid-step: it is applied at the start of the next step
        assert fired and not victim.done and victim.cancel_requested
        check_invariants(engine, requests)
        events = engine.step()
    finally:
        handle.remove()
    assert victim.finish_reason == "cancelled" and (victim, []) in events
    drain(engine, requests)
    assert [r.output_ids for r in requests[1:]] == [solo(model, p) for p in PROMPTS[1:3]]
    # step 1: its prefill's token and that step's decode; step 2: one more, then the cancel applies
    assert victim.output_ids == solo(model, PROMPTS[0])[:3]


def test_cancel_from_another_thread_during_prefill(model):
    engine = Engine(model, prefix_cache_mib=0, prefill_chunk=4)
    running = engine.submit(PROMPTS[0], greedy())
    engine.step()
    late = engine.submit(PROMPTS[2], greedy())  # 11 tokens: three prefill chunks
    chunks = []

    def hook(module, args, output):
        if args[0].shape[1] > 1:
            chunks.append(args[0].shape[1])
            if len(chunks) == 2:
                cancel_from_thread(engine, late)

    handle = model.register_forward_hook(hook)
    try:
        drain(engine, [running, late])
    finally:
        handle.remove()
    assert late.finish_reason == "cancelled" and len(late.output_ids) <= 1
    assert running.output_ids == solo(model, PROMPTS[0])


def test_engine_thread_with_handler_threads_cancelling(model):
    """The server's arrangement: one thread steps the engine, others submit and cancel."""
    engine = Engine(model, max_batch_size=3, block_size=4)
    requests, stop = [], threading.Event()

    def engine_loop():
        while not stop.is_set() or engine.has_work:
            if engine.has_work:
                engine.step()
            else:
                stop.wait(0.001)

    loop = threading.Thread(target=engine_loop)
    loop.start()
    try:
        for i in range(8):
            requests.append(engine.submit(PROMPTS[i % len(PROMPTS)], greedy(16)))
        for victim in requests[1::3]:
            while not victim.done and len(victim.output_ids) < 2 and victim.row is None:
                stop.wait(0.001)
            engine.cancel(victim)
    finally:
        stop.set()
        loop.join(timeout=300)
    assert not loop.is_alive()
    check_invariants(engine, requests)
    assert all(r.done for r in requests) and engine.scheduler.running == []
    for r in requests:
        reference = solo(model, r.prompt_ids, 16)
        if r.finish_reason == "cancelled":
            assert r.output_ids == reference[:len(r.output_ids)]
        else:
            assert r.finish_reason == "length" and r.output_ids == reference


def test_closing_a_stream_early_in_a_middle_row(model):
    engine = Engine(model, block_size=4)
    background = engine.submit(PROMPTS[0], greedy())
    engine.step()
    stream = engine.stream(PROMPTS[2], greedy())  # row 1
    first = [next(stream), next(stream)]  # one step: its prefill's token and its first decode's
    later = engine.submit(PROMPTS[3], greedy())  # row 2, behind the stream's row
    first.append(next(stream))
    assert [background.row, later.row] == [0, 2]
    stream.close()
    check_invariants(engine, [background, later])
    drain(engine, [background, later])
    assert background.output_ids == solo(model, PROMPTS[0]) and later.output_ids == solo(model, PROMPTS[3])
    assert first == solo(model, PROMPTS[2])[:3]


# -- failing requests
def test_a_request_whose_sampling_fails_finishes_alone(model):
    engine = Engine(model, block_size=4)
    params = [greedy(), failing_sampler_params(), greedy(), SamplingParams(max_new_tokens=12, temperature=0.8,
                                                                            seed=3)]
    requests = [engine.submit(p, sp) for p, sp in zip(PROMPTS, params)]
    drain(engine, requests)
    bad = requests[1]
    assert bad.finish_reason == "error" and "probability tensor" in bad.error
    assert [r.finish_reason for r in requests] == ["length", "error", "length", "length"]
    assert requests[0].output_ids == solo(model, PROMPTS[0]) and requests[2].output_ids == solo(model, PROMPTS[2])
    sampled = Engine(model, prefix_cache_mib=0).complete(PROMPTS[3], params[3])
    assert requests[3].output_ids == sampled.token_ids
    completions = engine.generate_batch([PROMPTS[0], PROMPTS[1]], [greedy(), failing_sampler_params()])
    assert completions[0].token_ids == solo(model, PROMPTS[0])
    assert completions[1].finish_reason == "error" and completions[1].error


def test_nan_logits_fail_their_request_and_do_not_poison_reused_rows(model):
    # The NaN request's row keeps NaN keys/values past where the next occupant writes; masked positions
    # still multiply into attention (0 * NaN = NaN) unless the row is cleared when it is freed.
    engine = Engine(model, prefix_cache_mib=0)
    nan_prompt = [BAD] + list(range(100, 139))  # 40 positions of NaN
    long_prompt = list(range(200, 245))  # 45 tokens: the batch attends past position 40
    requests = [engine.submit(nan_prompt, greedy()), engine.submit(long_prompt, greedy()),
                engine.submit(PROMPTS[1], greedy())]
    drain(engine, requests)
    assert requests[0].finish_reason == "error" and "NaN" in requests[0].error
    assert requests[1].output_ids == solo(model, long_prompt)
    assert requests[2].output_ids == solo(model, PROMPTS[1])  # moved into the NaN request's row
    # a new request admitted into the freed row, next to a long one
    again = [engine.submit(nan_prompt, greedy())]
    drain(engine, again)
    later = [engine.submit(PROMPTS[3], greedy()), engine.submit(long_prompt, greedy())]
    drain(engine, later)
    assert [r.output_ids for r in later] == [solo(model, PROMPTS[3]), solo(model, long_prompt)]


def test_generate_and_stream_raise_for_a_failed_request(model):
    engine = Engine(model)
    with pytest.raises(GenerationError, match="NaN"):
        engine.generate([BAD, 3, 4], greedy())
    with pytest.raises(GenerationError, match="probability tensor"):
        list(engine.stream(PROMPTS[0], failing_sampler_params()))
    assert not engine.has_work and engine.generate(PROMPTS[0], greedy()) == solo(model, PROMPTS[0])


# -- validation
@pytest.mark.parametrize("bad,match", [
    (dict(temperature=1e-45), "temperature"), (dict(temperature=None), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=None), "top_k"), (dict(top_p="0.9"), "top_p"), (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(seed="x"), "seed"),
])
def test_sampling_params_refuse_bad_values(bad, match):
    with pytest.raises(GenerationError, match=match):
        SamplingParams(**bad)


@pytest.mark.parametrize("option,value", [("prefill_chunk", 0), ("block_size", 0), ("max_batch_size", 0),
                                          ("kv_cache_mib", 0), ("prefix_cache_mib", -1), ("prefill_chunk", None),
                                          ("kv_cache_mib", 1.7e302)])  # hypothesis found: overflowed in bytes
def test_engine_options_are_checked(model, option, value):
    with pytest.raises(GenerationError, match=option):
        Engine(model, **{option: value})


# -- randomized: any sequence of submits, steps, cancels and abandoned streams keeps the invariants
NAN_PROMPT = [7, BAD, 9, 10, 11]


def submit_op():
    return st.tuples(st.just("submit"), st.integers(0, len(PROMPTS) - 1), st.integers(1, 8),
                     st.sampled_from(["ok", "ok", "ok", "sampling-fails", "nan"]))


OPS = st.lists(st.one_of(
    submit_op(), st.just(("step",)), st.just(("step",)),
    st.tuples(st.sampled_from(["cancel", "cancel-from-thread"]), st.integers(0, 50)),
    st.tuples(st.just("stream"), st.integers(0, len(PROMPTS) - 1), st.integers(0, 3)),
), max_size=25)


@given(ops=OPS, chunk=st.sampled_from([3, 512]))  # 3: prompts prefilled over steps, between other rows' moves
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_submit_step_cancel_sequences(model, ops, chunk):
    run_sequence(model, ops, chunk)


def test_a_failed_prompt_leaves_no_nan_for_the_next_request(model):
    """Found by the sequences above: a NaN prompt failing beside a request that finished in the same step
    moved (retire -> arrange) before it retired, and its old row, still holding the NaN its forward wrote,
    went to the next request, whose masked keys' 0 x NaN made its logits NaN. Then a NaN prompt prefilled
    over steps: its first chunk written, the row above it retired and it moved there, leaving a copy of
    that NaN behind; and one cancelled between its chunks."""
    run_sequence(model, [("submit", 0, 1, "ok"), ("submit", 0, 1, "nan"), ("step",), ("submit", 0, 1, "ok"),
                         ("submit", 1, 1, "ok")], 512)
    run_sequence(model, [("submit", 3, 3, "ok"), ("step",), ("submit", 0, 1, "nan"), ("step",), ("step",),
                         ("submit", 1, 1, "ok")], 3)
    run_sequence(model, [("submit", 0, 1, "nan"), ("step",), ("cancel", 0), ("submit", 4, 2, "ok")], 3)


def run_sequence(model, ops, chunk):
    engine = Engine(model, max_batch_size=3, block_size=4, prefix_cache_mib=0.05, prefill_chunk=chunk)
    requests, kinds, streamed = [], {}, []
    for op in ops:
        if op[0] == "submit":
            _, index, n, kind = op
            prompt = NAN_PROMPT if kind == "nan" else PROMPTS[index]
            request = engine.submit(prompt, failing_sampler_params(n) if kind == "sampling-fails" else greedy(n))
            requests.append(request)
            kinds[request.id] = (kind, n)
        elif op[0] == "step":
            engine.step()
        elif op[0].startswith("cancel") and requests:
            victim = requests[op[1] % len(requests)]
            (cancel_from_thread if op[0] == "cancel-from-thread" else Engine.cancel)(engine, victim)
        elif op[0] == "stream":
            _, index, take = op
            stream = engine.stream(PROMPTS[index], greedy(8))
            tokens = [token for token, _ in zip(stream, range(take))]
            stream.close()
            streamed.append((PROMPTS[index], tokens))
        check_invariants(engine, requests)
    drain(engine, requests)
    for request in requests:
        kind, n = kinds[request.id]
        if kind != "ok":  # failing requests never produce a token
            assert request.finish_reason in ("error", "cancelled") and request.output_ids == []
            assert (request.finish_reason == "error") == (request.error is not None)
        elif request.finish_reason == "cancelled":
            assert request.output_ids == solo(model, request.prompt_ids, n)[:len(request.output_ids)]
        else:
            assert (request.finish_reason, request.output_ids) == ("length", solo(model, request.prompt_ids, n))
    for prompt, tokens in streamed:
        assert tokens == solo(model, prompt, 8)[:len(tokens)]
