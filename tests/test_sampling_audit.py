"""Sampling and decoding checked against independent references: Hugging Face's logits processors, exact
distributions (chi-square on many seeded draws), and models that write a chosen text or logits."""

import itertools

import pytest
import torch
from scipy.stats import chi2

from llmkit.config import ModelConfig
from llmkit.infer import Engine, SamplingParams, Speculator, next_token_distribution
from llmkit.infer.sampling import RequestSampler
from llmkit.model import Transformer
from test_engine_speculative import make_model, target_and_noisy_draft

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted(Transformer):
    """A model whose logits at position p are rows[p] (the last row past the end), whatever it reads: it writes
    a chosen text, or puts chosen near-ties in front of the sampler. Engines built on it use a float32 KV cache,
    so every step goes through this forward (not the fused float16 token step)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__(ModelConfig.preset("tiny", vocab_size=rows.shape[1]))
        self.rows = rows.float()

    @classmethod
    def writing(cls, ids: list[int], vocab_size: int) -> "Scripted":
        """Position p predicts ids[p + 1]: prompted with ids[:k], greedy decoding writes ids[k:]."""
        rows = torch.full((len(ids), vocab_size), -20.0)
        rows[torch.arange(len(ids) - 1), torch.tensor(ids[1:])] = 20.0
        return cls(rows)

    def forward(self, input_ids, targets=None, *, positions=None, kv_cache=None, last_token_only=False, **kwargs):
        if positions is None:
            positions = torch.arange(input_ids.shape[1])[None].expand(input_ids.shape[0], -1)
        return self.rows[positions.clamp(max=len(self.rows) - 1)]


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of the counts under probs; no count may fall where probs is 0."""
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token outside the filtered distribution was drawn"
    expected = probs[keep] * counts.sum()
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, int(keep.sum()) - 1))


def test_filtered_distribution_matches_transformers_logits_processors():
    """Repetition penalty (prompt tokens included), temperature, top-k, top-p and min-p, in every combination,
    equal HF's processors chained in generate()'s order (penalty on raw logits, then the warpers)."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    generator = torch.Generator().manual_seed(0)
    for temperature, top_k, top_p, min_p, penalty in itertools.product(
            [0.3, 1.0, 2.5], [0, 1, 5], [1.0, 0.9, 0.5], [0.0, 0.05, 0.3], [1.0, 1.3, 0.7]):
        logits = torch.randn(200, generator=generator) * 3
        seen = torch.randint(0, 200, (30,), generator=generator)
        chain = [RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
        chain += [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
        chain += ([TopPLogitsWarper(top_p)] if top_p < 1 else []) + ([MinPLogitsWarper(min_p)] if min_p else [])
        expected = torch.softmax(LogitsProcessorList(chain)(seen[None], logits[None].clone()), dim=-1)[0]
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=penalty)
        ours = next_token_distribution(logits, params, torch.unique(seen))
        assert torch.allclose(ours, expected, atol=1e-6, rtol=0), (temperature, top_k, top_p, min_p, penalty)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=8), SamplingParams(top_p=0.8),
    SamplingParams(temperature=1.5, min_p=0.1), SamplingParams(repetition_penalty=1.5)],
    ids=["temperature", "top_k", "top_p", "min_p", "repetition_penalty"])
def test_seeded_draws_follow_the_filtered_distribution(params):
    """20,000 draws of one request's sampler (its own seeded generator) against the exact distribution."""
    logits = torch.randn(40, generator=torch.Generator().manual_seed(1)) * 2
    prompt = [0, 1, 2, 3, int(logits.argmax())]  # penalised when repetition_penalty != 1
    sampler = RequestSampler(SamplingParams(**{**params.__dict__, "seed": 5}), prompt)
    counts = torch.bincount(torch.tensor([sampler.sample(logits) for _ in range(20_000)]), minlength=40).float()
    assert chi_square_p_value(counts, next_token_distribution(logits, params, torch.tensor(prompt))) > 1e-3


def test_a_stop_string_of_many_tokens_a_character_ends_generation(shakespeare_tokenizer):
    """A byte-level BPE splits a rare character into several tokens: the stop string 日本語です is 15 tokens
    here, and the engine looked for it in the last len + 8 = 13 tokens only, so it ran on to max_new_tokens."""
    tok = shakespeare_tokenizer
    ids = tok.encode("Hello there, 日本語です and more text")
    stop = "日本語です"
    model = Scripted.writing(ids, tok.vocab_size)
    engine = Engine(model, tokenizer=tok, kv_cache_dtype="float32")
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_strings=[stop])
    completion = engine.complete(ids[:2], params)
    text = tok.decode(completion.token_ids)
    assert len(tok.encode(stop)) > len(stop) + 8  # the test has power: the old window could not see it
    assert completion.finish_reason == "stop" and text.endswith(stop), (completion.finish_reason, text)
    assert stop not in tok.decode(completion.token_ids[:-1])  # ended on the token that completed it


def test_more_logprobs_than_the_vocabulary_lists_the_whole_vocabulary():
    model = make_model(vocab_size=16)
    completion = Engine(model).complete([1, 2, 3], SamplingParams(max_new_tokens=2, temperature=0, logprobs=20))
    assert completion.finish_reason == "length", completion.error
    assert [len(step.top) for step in completion.logprobs] == [16, 16]


def test_speculative_greedy_breaks_near_ties_as_plain_greedy():
    """Logits 1e-8 and 2e-8 are distinct floats whose softmax probabilities are equal: plain greedy takes the
    larger logit (token 9); speculative greedy took the argmax of the distribution, the lower id (token 3)."""
    rows = torch.full((1, 32), -20.0)
    rows[0, 3], rows[0, 9] = 1e-8, 2e-8
    model = Scripted(rows)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    plain = Engine(model, kv_cache_dtype="float32").generate([1, 2, 9, 9], params)
    assert plain == [9] * 8
    for drafter in ("prompt-lookup", model):
        engine = Engine(model, kv_cache_dtype="float32", speculator=Speculator(drafter, draft_tokens=3))
        assert engine.generate([1, 2, 9, 9], params) == plain


def infinite_after_prefill(model):
    """A forward hook: every forward after the first puts +inf on token 7 (an overflow)."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) > 1:
            output = output.clone()
            output[..., 7] = float("inf")
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_speculative_infinite_logits_fail_the_request_clearly(temperature):
    """Plain decoding fails such a request with the NaN-logits message; speculative verification checked for
    NaN only: greedy then wrote token 0 to max_new_tokens (the argmax of a NaN softmax), sampling raised
    torch's "probability tensor contains inf" as an internal error."""
    model = make_model()
    params = SamplingParams(max_new_tokens=10, temperature=temperature, seed=0)
    handle = infinite_after_prefill(model)
    try:
        engine = Engine(model, speculator=Speculator("prompt-lookup", draft_tokens=3))
        completion = engine.complete([5, 17, 99, 5, 17, 99, 5, 17], params)
    finally:
        handle.remove()
    assert completion.finish_reason == "error" and "NaN (or infinite) logits" in completion.error, completion
    assert not engine.has_work


def test_a_draft_with_broken_logits_leaves_the_target_to_decide():
    """A draft model overflowing to NaN is only a bad guesser: the target's sampled text is what plain decoding
    with the same seed writes (its drafts are skipped), not a failed request."""
    target, draft = make_model(), make_model(seed=1)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    plain = Engine(target).complete([5, 17, 99, 3], params)
    handle = draft.register_forward_hook(lambda module, args, output: torch.full_like(output, float("nan")))
    try:
        engine = Engine(target, speculator=Speculator(draft, draft_tokens=3))
        completion = engine.complete([5, 17, 99, 3], params)
    finally:
        handle.remove()
    assert completion.finish_reason == "length", completion.error
    assert completion.token_ids == plain.token_ids and engine.speculator.drafted == 0


def test_speculative_sampling_keeps_the_target_distribution_under_penalty_and_filters():
    """Leviathan et al.'s rejection rule with every filter on (top-p, min-p, repetition penalty, whose seen set
    grows by the drafts): the second token's frequencies over 1,200 seeds match the exact distribution
    sum_x1 p(x1) p(x2 | x1) of the target, not the draft's (test_engine_speculative covers temperature/top-k)."""
    target, draft = target_and_noisy_draft()
    prompt = [1, 2, 3, 1, 2, 4, 1, 2]
    # 3 new tokens: the second is a verified draft (the first comes from the prefill, the last may be a bonus)
    params = SamplingParams(max_new_tokens=3, temperature=1.2, top_p=0.9, min_p=0.05, repetition_penalty=1.8)

    def second_token(model):
        with torch.no_grad():
            first = next_token_distribution(model(torch.tensor([prompt]))[0, -1], params, torch.tensor(prompt))
            rows = model(torch.tensor([prompt + [x] for x in range(16)]))[:, -1]
        return first @ torch.stack([next_token_distribution(rows[x], params, torch.tensor(prompt + [x]))
                                    for x in range(16)])

    engine = Engine(target, speculator=Speculator(draft, draft_tokens=2))
    counts = torch.zeros(16)
    for seed in range(1200):
        counts[engine.generate(prompt, SamplingParams(**{**params.__dict__, "seed": seed}))[1]] += 1
    assert 0.1 < engine.speculator.acceptance_rate < 0.95  # drafts both accepted and rejected
    assert chi_square_p_value(counts, second_token(target)) > 1e-3
    assert chi_square_p_value(counts, second_token(draft).clamp(min=1e-6)) < 1e-6  # the test has power


def test_seeded_sampling_with_every_filter_equals_its_solo_run_in_any_batch():
    """Batched == one by one for sampled requests (a per-request generator), with penalties, min-p, logprobs,
    a greedy penalised row beside them, a warm prefix cache and small prefill chunks."""
    model = make_model()
    prompts = [[5, 17, 99, 3, 250, 7], [1], [400, 2, 2, 9, 31, 8, 8, 100, 12, 77, 3], [60, 61]]
    params = [SamplingParams(max_new_tokens=20, temperature=1.3, repetition_penalty=1.5, seed=1),
              SamplingParams(max_new_tokens=20, temperature=0.7, top_k=20, min_p=0.05, seed=2),
              SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.8, seed=3, logprobs=2),
              SamplingParams(max_new_tokens=20, temperature=0, repetition_penalty=1.3)]
    alone = [Engine(model, prefix_cache_mib=0).complete(p, sp).token_ids for p, sp in zip(prompts, params)]
    for options in ({}, {"prefill_chunk": 3}, {"max_batch_size": 2}):
        engine = Engine(model, **options)
        engine.generate([5, 17, 99, 3], SamplingParams(max_new_tokens=2))  # a prefix-cache hit for prompt 0
        assert [c.token_ids for c in engine.generate_batch(prompts, params)] == alone, options
