"""Speculative decoding: draft several tokens cheaply, verify them in one forward of the target.

Batch-1 decoding reads every weight for one token; a forward over k+1 tokens costs about the same
on a memory-bound machine. So a cheap drafter proposes k tokens, the target model scores all of
them in one forward, and the longest acceptable run is kept (Leviathan et al. 2023, "Fast Inference
from Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model
Decoding with Speculative Sampling"). The rejection rule keeps the target's distribution exactly:
draft token x_i ~ q_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the first
rejection a replacement is drawn from norm(max(0, p_i - q_i)); if all k are accepted, one more
token is drawn from p_{k+1}. p and q are the *filtered* sampling distributions (temperature, top-k,
top-p, min-p, repetition penalty), so sampled text follows exactly what plain sampling would draw
from. Greedy decoding accepts a draft token iff it is the target's argmax, so its output equals
plain greedy decoding token for token.

Drafters:
- `DraftModel`: any Transformer on the same tokenizer, with its own KV cache. `layer_skip_draft`
  builds one from the target's first layers, sharing their weights (self-speculation, as in
  LayerSkip, Elhoushi et al. 2024, without its early-exit training: a plain model's early layers
  predict less well, so acceptance is lower). A quantized copy of the target is another cheap
  drafter with high acceptance.
- `PromptLookup`: no model at all: the continuation of the latest earlier occurrence of the last
  n-gram of the context (Saxena 2023, "Prompt Lookup Decoding"); the draft distribution is a point
  mass, so acceptance is min(1, p(x)). It shines when the output copies from the prompt.

Rolling back is free: the KV caches are indexed by position, so the keys of rejected tokens are
simply overwritten by the next forward (and masked until then).

The caller builds a `Speculator` and hands it to the engine (`Engine(model, speculator=Speculator(
"prompt-lookup"))`); it drives a request through the engine's public step primitives (engine.py), so
this module depends on the engine's interface only, and the engine not at all on this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn as nn

from llmkit.errors import GenerationError
from llmkit.infer.compiled import compile_for_inference
from llmkit.infer.huge_pages import place_in_huge_pages
from llmkit.infer.kv_cache import KVCache
from llmkit.infer.sampling import NAN_LOGITS, broken_rows
from llmkit.infer.scheduler import CAPACITY_STEP, Request
from llmkit.model import Transformer


class PromptLookup:
    """Draft by copying what followed the latest earlier match of the context's last n-gram."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, request: Request) -> None:
        pass

    def propose(self, request: Request, n: int) -> tuple[list[int], list[torch.Tensor] | None]:
        context = request.tokens
        for size in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = context[-size:]
            # latest earlier occurrence (a match that leaves at least one token to copy)
            for start in range(len(context) - size - 1, -1, -1):
                if context[start:start + size] == tail:
                    follow = context[start + size:start + size + n]
                    return follow, None  # None: point-mass draft distributions
        return [], None

    def accepted(self, request: Request, n_accepted: int) -> None:
        pass


class DraftModel:
    """A smaller model on the same tokenizer drafts by sampling from its own filtered distribution."""

    def __init__(self, model: Transformer):
        self.model = model
        self.cache: KVCache | None = None
        self.fed = 0  # leading positions of the request's tokens whose keys/values the draft holds
        self._one = None  # the compiled single-token forward, if any

    def compile(self) -> None:
        """Compile the draft's single-token forward (an engine with compile=True asks for it)."""
        self._one = compile_for_inference(self._forward, self.model)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model(tokens, positions=positions, kv_cache=cache, last_token_only=True)[0, -1].float()

    def start(self, request: Request) -> None:
        capacity = min(-(-request.reserved // CAPACITY_STEP) * CAPACITY_STEP, self.model.config.max_seq_len)
        if self.cache is None or self.cache.max_len < capacity:
            self.cache = KVCache(self.model.config, 1, capacity, self.model.tok_emb.weight.device,
                                 self.model.tok_emb.weight.dtype)
        self.fed = 0

    def propose(self, request: Request, n: int) -> tuple[list[int], list[torch.Tensor]]:
        context = request.tokens
        device = self.model.tok_emb.weight.device
        new, start = context[self.fed:], self.fed
        drafts, dists, fed = [], [], self.fed
        # With a grammar the draft samples under it too (walked draft by draft, rolled back at the end):
        # q then matches the target's masked p closely, and acceptance stays high.
        constraint = request.sampler.constraint
        try:
            for _ in range(n):
                if constraint is not None and constraint.finished:  # nothing may follow: nothing to draft
                    break
                end = start + len(new)
                tokens, positions = torch.tensor([new], device=device), torch.arange(start, end, device=device)[None]
                if self._one is not None and len(new) == 1:  # compiled: static shapes, the whole cache
                    self.cache.bind(0, 1, None)
                    logits = self._one(tokens, positions, self.cache)
                else:
                    self.cache.bind(0, 1, end)
                    logits = self._forward(tokens, positions, self.cache)
                # NaN or +inf (a draft overflowing in a low precision): no guess; the target's step decides the
                # next token alone (sampling from it failed the request). These positions are fed again next time.
                if bool(broken_rows(logits[None]).any()):
                    break
                fed = end
                if constraint is not None:
                    logits = constraint.mask_logits(logits)
                greedy = request.params.greedy  # greedy verification reads no q (Speculator.step): not computed
                q = None if greedy else request.sampler.distribution(logits, extra=drafts)
                token = request.sampler.best(logits, drafts) if greedy else request.sampler.draw(q)
                if constraint is not None:
                    constraint.advance(token)
                drafts.append(token)
                dists.append(q)
                new, start = [token], end
        finally:
            if constraint is not None:
                constraint.rollback(len(drafts))
        self.fed = fed  # positions fed to the draft (the last draft itself never is)
        return drafts, dists

    def accepted(self, request: Request, n_accepted: int) -> None:
        # Only positions holding tokens the target accepted stay valid for the next round.
        self.fed = min(self.fed, len(request.tokens) - 1)


def layer_skip_draft(model: Transformer, n_layers: int) -> Transformer:
    """A draft made of the target's first `n_layers` blocks plus its final norm and head (shared
    weights, no extra memory): self-speculative decoding (LayerSkip, Elhoushi et al. 2024)."""
    if not 1 <= n_layers < model.config.n_layers:
        raise GenerationError(f"a layer-skip draft needs between 1 and {model.config.n_layers - 1} layers, "
                              f"not {n_layers}")
    with torch.device("meta"):
        draft = Transformer(dataclasses.replace(model.config, n_layers=n_layers))
    for name in ("tok_emb", "pos_emb", "norm", "lm_head"):
        setattr(draft, name, getattr(model, name))
    draft.blocks = nn.ModuleList(list(model.blocks)[:n_layers])
    draft.rope_cos, draft.rope_sin = model.rope_cos, model.rope_sin
    return draft.eval()


class Speculator:
    """Speculative decoding for an engine: Speculator("prompt-lookup") or Speculator(draft_model).

    One per engine (it holds the draft's cache and the acceptance counts); the engine binds it."""

    def __init__(self, drafter: str | Transformer, draft_tokens: int = 4):
        if not isinstance(draft_tokens, int) or draft_tokens < 1:
            raise GenerationError(f"draft_tokens must be an integer >= 1, not {draft_tokens!r}")
        if drafter == "prompt-lookup":
            self.drafter = PromptLookup()
        elif isinstance(drafter, Transformer):
            self.drafter = DraftModel(drafter)
        else:
            raise GenerationError(f"unknown speculative drafter {drafter!r}; use 'prompt-lookup' or a "
                                  "draft Transformer")
        self.k = draft_tokens
        self.engine = None
        self.drafted = self.accepted = self.steps = 0
        self._verify = self._verify_forward

    def bind(self, engine) -> None:
        """Called by the engine that receives this speculator: check the draft fits its model, compile
        alongside it."""
        if self.engine is not None and self.engine is not engine:
            raise GenerationError("this Speculator already serves another engine; build one per engine")
        if isinstance(self.drafter, DraftModel):
            draft_vocab, vocab = self.drafter.model.config.vocab_size, engine.model.config.vocab_size
            if draft_vocab != vocab:
                raise GenerationError(f"the draft model's vocabulary ({draft_vocab}) differs from the target's "
                                      f"({vocab}); a draft must share the target's tokenizer")
            if engine.device.type == "cpu":  # the draft streams its weights every drafted token too
                place_in_huge_pages(self.drafter.model)
            if engine.compiled:
                self.drafter.compile()
        self.engine = engine
        if engine.compiled:  # static shapes: the whole cache row is attended, masked
            self._verify = compile_for_inference(self._verify_forward, engine.model)

    def _verify_forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.engine.model(tokens, positions=positions, kv_cache=cache)[0].float()

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def run(self, request: Request) -> Iterator[int]:
        """Generate `request` alone, several tokens per target forward. A failure of this request
        finishes it with an error (engine.fail); a cancellation (any thread) ends it at the next step."""
        engine = self.engine
        with engine.stepping():
            if engine.admit(limit=1) != [request]:
                raise GenerationError("speculative decoding runs one request at a time; others are queued")
            tokens = self._guarded(request, lambda: engine.emit(request, engine.prefill(request)))
        yield from tokens
        self.drafter.start(request)
        try:
            while not request.done:
                with engine.stepping():
                    tokens = [] if request.done else self._guarded(request, lambda: self.step(request))
                yield from tokens
        finally:
            with engine.stepping():
                engine.retire(request)

    def _guarded(self, request: Request, work) -> list[int]:
        try:
            return work()
        except Exception as error:  # noqa: BLE001 - this request fails, the engine carries on
            self.engine.fail(request, error)
            return []

    def step(self, request: Request) -> list[int]:
        engine, cache = self.engine, self.engine.scheduler.cache
        n = min(self.k, request.max_new - len(request.output_ids) - 1)
        drafts, dists = self.drafter.propose(request, n) if n > 0 else ([], None)
        base = request.length  # position of the pending token (the last one emitted)
        fed = torch.tensor([[request.output_ids[-1], *drafts]], device=engine.device)
        positions = torch.arange(base, base + fed.shape[1], device=engine.device)[None]
        if drafts:
            cache.bind(request.row, request.row + 1, None if engine.compiled else base + fed.shape[1])
            logits = self._verify(fed, positions, cache)
            engine.stats["decode_steps"] += 1
        else:  # nothing to verify: the engine's plain (possibly compiled) decode step
            logits = engine.decode([request])
        if bool(broken_rows(logits).any()):  # +inf too: its softmax is NaN, whose argmax is a silent garbage token
            raise GenerationError(NAN_LOGITS)
        self.steps += 1
        sampler, greedy = request.sampler, request.params.greedy
        # A grammar: position i is masked as the grammar stands after drafts[:i] (walked, then rolled
        # back); a draft it refuses has probability 0 and is rejected. `emit` advances the grammar by
        # the tokens actually kept. Log-probabilities come from the unmasked logits.
        allowed = logits if sampler.constraint is None else sampler.constraint.mask_draft_logits(logits, drafts)
        emitted, n_accepted = [], 0
        for i, draft in enumerate(drafts):
            if greedy:  # the argmax of the logits, as plain greedy takes it (RequestSampler.best)
                token = sampler.best(allowed[i], drafts[:i])
                ok = token == draft
            else:
                p = sampler.distribution(allowed[i], extra=drafts[:i])
                q_draft = float(dists[i][draft]) if dists is not None else 1.0
                ok = sampler.random(p.device) < min(1.0, float(p[draft]) / q_draft)
            if ok:
                n_accepted += 1
                emitted += engine.emit(request, logits[i], draft)
                if request.done:
                    break
                continue
            if not greedy:  # the residual distribution norm(max(0, p - q)) keeps the output distributed as p
                q = dists[i] if dists is not None else torch.nn.functional.one_hot(
                    torch.tensor(draft, device=p.device), p.numel()).float()
                residual = (p - q).clamp(min=0)
                token = sampler.draw(residual / residual.sum() if residual.sum() > 0 else p)
            emitted += engine.emit(request, logits[i], token)
            break
        else:
            if not request.done:  # every draft accepted: a bonus token from the target's next distribution
                token = (sampler.best(allowed[len(drafts)], drafts) if greedy else
                         sampler.draw(sampler.distribution(allowed[len(drafts)], extra=drafts)))
                emitted += engine.emit(request, logits[len(drafts)], token)
        request.length = base + len(emitted)
        request.drafted += len(drafts)
        request.accepted += n_accepted
        self.drafted += len(drafts)
        self.accepted += n_accepted
        if drafts:
            engine.stats["decode_tokens"] += len(emitted)
        self.drafter.accepted(request, n_accepted)
        return emitted
