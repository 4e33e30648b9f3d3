"""Speculative decoding: greedy output equals plain greedy; sampled output keeps the target's distribution."""

import pytest
import torch

from llmkit.config import ModelConfig
from llmkit.infer import Engine, SamplingParams, Speculator, layer_skip_draft, next_token_distribution
from llmkit.model import Transformer


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.preset("tiny", **overrides)).eval()


PROMPT = [5, 17, 99, 3, 250, 7, 5, 17, 99]


@pytest.mark.parametrize("drafter", ["self", "layer-skip", "other-model", "prompt-lookup"])
def test_speculative_greedy_equals_target_greedy(drafter):
    target = make_model(n_layers=3)
    draft = {"self": target, "layer-skip": layer_skip_draft(target, 1), "other-model": make_model(seed=1),
             "prompt-lookup": "prompt-lookup"}[drafter]
    params = SamplingParams(max_new_tokens=40, temperature=0)
    engine = Engine(target, speculator=Speculator(draft, draft_tokens=4))
    assert engine.generate(PROMPT, params) == Engine(target).generate(PROMPT, params)
    speculator = engine.speculator
    assert 0.0 <= speculator.acceptance_rate <= 1.0 and speculator.drafted > 0
    if drafter == "self":  # a draft identical to the target is always right: 5 tokens per target forward
        assert speculator.acceptance_rate == 1.0 and speculator.steps <= 40 // 5 + 1


def test_compiled_speculative_engine_packs_target_and_draft_and_equals_eager_greedy():
    from llmkit.infer.packed import is_packed

    target, draft, reference = make_model(n_layers=3), make_model(seed=1), make_model(n_layers=3)
    params = SamplingParams(max_new_tokens=24, temperature=0)
    engine = Engine(target, compile=True, speculator=Speculator(draft, draft_tokens=3))
    assert engine.generate(PROMPT, params) == Engine(reference).generate(PROMPT, params)
    assert is_packed(target) and is_packed(draft) and engine.speculator.drafted > 0


def test_speculative_respects_stop_tokens_and_max_new_tokens():
    target = make_model()
    params = SamplingParams(max_new_tokens=17, temperature=0)
    plain = Engine(target).generate(PROMPT, params)
    engine = Engine(target, speculator=Speculator(target, draft_tokens=4))
    assert engine.generate(PROMPT, params) == plain  # 17 is not a multiple of 5: the last step is cut short
    stop = plain[7]
    stopped = Engine(target, stop_token_ids=[stop], speculator=Speculator(target)).generate(PROMPT, params)
    assert stopped == plain[: plain.index(stop) + 1]


def exact_second_token_distribution(model, prompt, params):
    """p(x2) = sum over x1 of p(x1 | prompt) p(x2 | prompt, x1), with every sampling filter applied."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        first = next_token_distribution(model(torch.tensor([prompt]))[0, -1], params)
        batch = torch.tensor([prompt + [x] for x in range(vocab)])
        second = torch.stack([next_token_distribution(row, params) for row in model(batch)[:, -1]])
    return first @ second


def likely_chain(model):
    """Every token of the vocabulary once, each followed by its most likely unused successor: prompt
    lookup then always finds the last token earlier in the prompt, and drafts a plausible next one."""
    chain = [0]
    with torch.no_grad():
        while len(chain) < model.config.vocab_size:
            logits = model(torch.tensor([chain]))[0, -1]
            logits[chain] = float("-inf")
            chain.append(int(logits.argmax()))
    return chain


def chi_square(counts, probs):
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token the target never samples was emitted"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def target_and_noisy_draft():
    """A 16-token vocabulary and large weights make distributions peaked. The draft model is the target
    with 10% noise on its weights: right often enough that drafts are both accepted and rejected, and
    wrong enough that its own distribution fails the same test (a distribution test then has power)."""
    config = dict(vocab_size=16, init_std=0.4)
    target, draft = make_model(0, **config), make_model(0, **config)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.add_(0.1 * weight.std() * torch.randn(weight.shape, generator=noise))
    return target, draft


@pytest.mark.parametrize("drafter", ["other-model", "prompt-lookup"])
def test_speculative_sampling_keeps_the_target_distribution(drafter):
    target, other = target_and_noisy_draft()
    # For prompt lookup: each token once, followed by a likely successor, so a draft is always found.
    prompt = [1, 2, 3, 1, 2, 4, 1, 2] if drafter == "other-model" else likely_chain(target) + [0, 1]
    # 3 new tokens: the second is a verified draft. A random model does not copy from its prompt, so
    # prompt-lookup drafts are rarely right; at temperature 1 some of them are accepted.
    params = (SamplingParams(max_new_tokens=3, temperature=0.8, top_k=10) if drafter == "other-model" else
              SamplingParams(max_new_tokens=3, temperature=1.0))
    drafts = other if drafter == "other-model" else "prompt-lookup"
    engine = Engine(target, speculator=Speculator(drafts, draft_tokens=2))
    n = 1500
    counts = torch.zeros(16)
    for seed in range(n):
        out = engine.generate(prompt, SamplingParams(**{**params.__dict__, "seed": seed}))
        counts[out[1]] += 1
    assert engine.speculator.drafted >= n  # every run drafted the second token
    assert 0.03 < engine.speculator.acceptance_rate < 0.95  # drafts are both accepted and rejected
    p = exact_second_token_distribution(target, prompt, params)
    # chi-square with <= 15 degrees of freedom: 37.7 is its 0.999 quantile
    assert chi_square(counts, p) < 37.7
    if drafter == "other-model":
        q = exact_second_token_distribution(other, prompt, params)
        assert chi_square(counts, q.clamp(min=1e-6)) > 10 * 37.7  # the draft's distribution is far off


def test_speculative_sampling_is_reproducible_per_seed():
    target = make_model()
    engine = Engine(target, speculator=Speculator(layer_skip_draft(target, 1)))
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=7)
    assert engine.generate(PROMPT, params) == engine.generate(PROMPT, params)


def test_speculative_stream_cancelled_closed_or_failing_leaves_the_engine_clean():
    import threading

    from llmkit.errors import GenerationError

    target = make_model()
    params = SamplingParams(max_new_tokens=30, temperature=0)
    plain = Engine(target).generate(PROMPT, params)
    engine = Engine(target, speculator=Speculator(target, draft_tokens=3))
    stream = engine.stream(PROMPT, params)
    first = [next(stream) for _ in range(5)]
    stream.close()
    assert first == plain[:5] and not engine.has_work and not engine.scheduler.running
    # cancelled from another thread in the middle of a forward, after a few tokens: it ends at the next step
    cancelled = []

    def hook(module, args, output):
        running = engine.scheduler.running
        if running and len(running[0].output_ids) >= 3 and not cancelled:
            cancelled.append(running[0])
            thread = threading.Thread(target=engine.cancel, args=(cancelled[0],))
            thread.start()
            thread.join()

    handle = target.register_forward_hook(hook)
    try:
        tokens = engine.generate(PROMPT, params)
    finally:
        handle.remove()
    request = cancelled[0]
    assert request.finish_reason == "cancelled" and 3 <= len(tokens) < 30 and tokens == plain[:len(tokens)]
    assert not engine.has_work
    failing = SamplingParams(max_new_tokens=30, temperature=1.0, seed=0)
    failing.temperature = 1e-45  # passes validation, then breaks sampling
    with pytest.raises(GenerationError, match="probability tensor"):
        engine.generate(PROMPT, failing)
    assert not engine.has_work and engine.generate(PROMPT, params) == plain


def test_speculator_is_built_by_the_caller_once_per_engine():
    from llmkit.errors import GenerationError

    target = make_model()
    with pytest.raises(GenerationError, match="speculator"):
        Engine(target, speculator="prompt-lookup")
    speculator = Speculator("prompt-lookup")
    Engine(target, speculator=speculator)
    with pytest.raises(GenerationError, match="another engine"):
        Engine(target, speculator=speculator)
    with pytest.raises(GenerationError, match="vocabulary"):
        Engine(target, speculator=Speculator(make_model(vocab_size=64)))
    with pytest.raises(GenerationError, match="draft_tokens"):
        Speculator("prompt-lookup", draft_tokens=0)
