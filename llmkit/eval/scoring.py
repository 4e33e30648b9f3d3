"""Log-likelihood of continuations: tokenized as lm-evaluation-harness does, all of a task's options
batched through the one model, the context shared by an example's options computed once.

Tokenization at the context/continuation boundary (lm-evaluation-harness, `_encode_pair`): trailing
whitespace of the context moves to the front of the continuation (" Paris" is one token in GPT-2-style
vocabularies, "Answer: " + "Paris" would score an unnatural "Paris" without its space); then the context
and context + continuation are encoded, and the continuation's tokens are the tail of the second
encoding past the length of the first. The scored sequence is the context's tokens followed by that
tail. A BOS token goes first when asked for (llmkit's own models see one at the start of every
document); without one, an empty context becomes the EOS token so the first token has something to
follow (lm-evaluation-harness does the same).

Long sequences lose tokens from the left (the oldest shots first): at most max_seq_len + 1 tokens are
kept, the model reads all but the last (lm-evaluation-harness's rule); the count is reported.

Scoring (`score_examples`) packs each example into a tree: the longest token prefix its options share
(the shots and the question), then each option's remaining tokens, each attending to the shared prefix
and to itself only (a tree-shaped causal mask; the positions continue from the prefix). Short examples
then share rows of about `row_tokens` (256) tokens (`_pack_rows`), each seeing only its own tokens, so a batch
of examples of different lengths is not largely padding (the first 200 examples of PIQA, ARC and COPA:
28-35% of the tokens run were padding with one example a row, under 1% packed). One forward per batch
of rows gives every option's log-probability exactly as if each (context + continuation) had been run
alone, at the cost of the shared part once: `score_alone` is that reference, and the tests hold the two
equal. Every continuation token's log-probability and whether it is the model's argmax come out of the
same forward.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llmkit.errors import NOT_FINITE_SCORES, DataError, GenerationError


@dataclass
class TokenizedOption:
    tokens: list[int]  # context tokens then continuation tokens (after any truncation)
    start: int  # index of the first continuation token in `tokens` (>= 1)
    truncated: int = 0  # tokens cut from the left to fit the model's context


@dataclass
class OptionScore:
    logprob: float  # summed log-probability of the continuation's tokens
    tokens: int  # continuation tokens scored
    greedy: bool  # every continuation token is the model's argmax given what precedes it


def encode_options(tokenizer, pairs: Sequence[tuple[str, str]], max_seq_len: int, add_bos: bool,
                   where: Callable[[int], str] = str, move_whitespace: bool = True) -> list[TokenizedOption]:
    """Tokenize (context, continuation) pairs; where(i) names pair i in error messages. move_whitespace:
    False for a context that is a rendered chat ending in its generation prompt (its newline belongs to
    the template's markup, not to the reply)."""
    moved = []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        if spaces and move_whitespace:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        moved.append((context, continuation))
    contexts = sorted({c for c, _ in moved})
    context_ids = dict(zip(contexts, tokenizer.encode_batch(contexts)))
    whole_ids = tokenizer.encode_batch([c + x for c, x in moved])
    if add_bos and tokenizer.bos_id is not None:
        first = [tokenizer.bos_id]
    else:
        first = []
    out = []
    for i, ((context, _), whole) in enumerate(zip(moved, whole_ids)):
        head = first + context_ids[context]
        if not head:
            if tokenizer.eos_id is None:
                raise DataError(f"{where(i)}: the context is empty and the tokenizer has no BOS or EOS token to "
                                "start from; give the example a context")
            head = [tokenizer.eos_id]
        tail = whole[len(context_ids[context]):]
        if not tail:
            raise DataError(f"{where(i)}: the continuation is empty after tokenization")
        tokens, start, cut = head + tail, len(head), 0
        if len(tokens) > max_seq_len + 1:
            cut = len(tokens) - (max_seq_len + 1)
            # the last max_seq_len + 1 tokens are kept; a continuation longer than the model's context loses
            # its own first tokens too (the kept part is scored after one token of it; counted in `cut`)
            tokens, start = tokens[cut:], max(1, start - cut)
        out.append(TokenizedOption(tokens, start, cut))
    return out


def encode_for_model(model, tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool,
                     where: Callable[[int], str] = str, move_whitespace: bool = True) -> list[TokenizedOption]:
    """encode_options within `model`'s context; a prompt-tuned model's soft prompt (its virtual ids) goes
    before each option, read by the scorer like any other context token."""
    soft = model.soft_prompt_ids
    options = encode_options(tokenizer, pairs, model.text_context, add_bos, where, move_whitespace)
    if soft:
        options = [dataclasses.replace(o, tokens=soft + o.tokens, start=o.start + len(soft)) for o in options]
    return options


# --- scoring ---------------------------------------------------------------------------------------------
class TreeAttentionMask:
    """Hands the model a precomputed attention mask through its KV-cache hook (llmkit/infer/kv_cache.py:
    the model calls `prepare(positions)` once for the mask, and per layer `update(layer, k, v)` for the
    keys/values to attend to and `scales(layer)` for an int8 cache's scales). Nothing is cached: the keys
    are this forward's own."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask  # (rows, 1, seq, seq) boolean: query i may attend to key j

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        return self.mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               whole_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v  # this forward's own keys: as many as the mask is wide, whole rows or not

    def scales(self, layer: int) -> None:
        return None  # float keys and values, not an int8 cache's


@dataclass
class _PackedExample:
    tokens: list[int]  # the row: shared prefix, then each option's rest
    positions: list[int]  # each token's position in its own option's sequence
    segments: list[int]  # -1 for the shared prefix, j for option j's own tokens
    scored: list[list[tuple[int, int]]]  # per option: (row index of the predicting token, target token)


def pack_example(options: Sequence[TokenizedOption]) -> _PackedExample:
    """One row for all of an example's options: the longest prefix of model inputs they share, then each
    option's remaining inputs (an option's last token is only a target, never an input)."""
    inputs = [o.tokens[:-1] for o in options]
    shared = min(len(x) for x in inputs)
    for i in range(shared):
        if any(x[i] != inputs[0][i] for x in inputs):
            shared = i
            break
    tokens, positions, segments = list(inputs[0][:shared]), list(range(shared)), [-1] * shared
    scored = []
    for j, (option, x) in enumerate(zip(options, inputs)):
        offset = len(tokens)
        tokens += x[shared:]
        positions += range(shared, len(x))
        segments += [j] * (len(x) - shared)
        # input position q predicts token q + 1; it sits in the prefix (q < shared) or in option j's part
        scored.append([(q if q < shared else offset + q - shared, option.tokens[q + 1])
                       for q in range(option.start - 1, len(option.tokens) - 1)])
    return _PackedExample(tokens, positions, segments, scored)


def tree_mask(positions: torch.Tensor, segments: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """(rows, 1, seq, seq): a query sees keys of its own example at positions <= its own that are in the
    example's shared prefix (-1) or in its own segment. Padding is an example of its own (-1), so no
    real query sees it (and a padding query sees padding, never an empty row)."""
    causal = positions[:, None, :] <= positions[:, :, None]
    visible = (segments[:, None, :] == -1) | (segments[:, None, :] == segments[:, :, None])
    same = examples[:, None, :] == examples[:, :, None]
    return (causal & visible & same)[:, None]


def _pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Example indices in rows: an example of row_tokens or more alone; the shorter ones spread over just
    enough rows to hold them at row_tokens each, each example, longest first, into the row that is then
    shortest (Graham's LPT rule), so the rows come out nearly equal and padding them costs little. The
    attention mask is dense, so rows stay near row_tokens."""
    alone = [[i] for i in range(len(lengths)) if lengths[i] >= row_tokens]
    short = sorted((i for i in range(len(lengths)) if lengths[i] < row_tokens), key=lambda i: -lengths[i])
    count = -(-sum(lengths[i] for i in short) // row_tokens)  # ceil
    rows: list[list[int]] = [[] for _ in range(count)]
    heap = [(0, r) for r in range(count)]
    for i in short:
        filled, r = heapq.heappop(heap)
        rows[r].append(i)
        heapq.heappush(heap, (filled + lengths[i], r))
    return alone + rows


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Row indices grouped longest first, each group's padded size (rows x longest) within budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


@torch.inference_mode()
def score_examples(model, examples: Sequence[Sequence[TokenizedOption]], batch_tokens: int = 4096,
                   on_batch: Callable[[int], None] | None = None, head_chunk: int = 1024,
                   row_tokens: int = 256) -> list[list[OptionScore]]:
    """Score every option of every example. on_batch(n) is called after each forward with the number of
    examples it finished (for a progress bar). row_tokens: examples shorter than this share rows of
    about this length (the mask is dense: attention costs grow with it; PIQA's first 200 examples on
    SmolLM2 took 31.7 s at 256, 35.5 s at 512)."""
    if any(len(o.tokens) > model.config.max_seq_len + 1 for ex in examples for o in ex):
        raise ValueError("an option is longer than the model's context; encode_options truncates them")
    device = model.tok_emb.weight.device
    was_training = model.training
    model.eval()
    packed = [pack_example(ex) for ex in examples]
    lengths = [len(p.tokens) for p in packed]
    row_members = _pack_rows(lengths, row_tokens)
    results: list[list[OptionScore] | None] = [None] * len(examples)
    try:
        for group in _batches([sum(lengths[i] for i in m) for m in row_members], batch_tokens):
            members = [row_members[r] for r in group]
            length = max(sum(lengths[i] for i in m) for m in members)
            tokens = torch.zeros(len(members), length, dtype=torch.long)
            positions = torch.zeros(len(members), length, dtype=torch.long)
            segments = torch.full((len(members), length), -1, dtype=torch.long)
            owners = torch.full((len(members), length), -1, dtype=torch.long)  # the example a token belongs to
            where = []  # (row, index in the row of the predicting token, target) of every scored token
            for b, m in enumerate(members):
                start = 0
                for i in m:
                    p, n = packed[i], lengths[i]
                    tokens[b, start:start + n] = torch.tensor(p.tokens)
                    positions[b, start:start + n] = torch.tensor(p.positions)
                    segments[b, start:start + n] = torch.tensor(p.segments)
                    owners[b, start:start + n] = i
                    where += [(b, start + q, target) for option in p.scored for q, target in option]
                    start += n
            mask = tree_mask(positions, segments, owners).to(device)
            hidden = model(tokens.to(device), positions=positions.to(device), kv_cache=TreeAttentionMask(mask),
                           return_hidden=True)
            row_index = torch.tensor([w[0] for w in where], device=device)
            query_index = torch.tensor([w[1] for w in where], device=device)
            targets = torch.tensor([w[2] for w in where], device=device)
            logprobs, greedy = [], []
            for s in range(0, len(where), head_chunk):  # the vocabulary-wide head on scored positions only
                h = hidden[row_index[s:s + head_chunk], query_index[s:s + head_chunk]]
                lp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
                t = targets[s:s + head_chunk]
                logprobs.append(lp.gather(1, t[:, None])[:, 0])
                greedy.append(lp.argmax(dim=-1) == t)
            flat_lp = torch.cat(logprobs).double().cpu().tolist()
            if not all(map(math.isfinite, flat_lp)):  # a score, and so an accuracy, would be silently wrong
                raise GenerationError(NOT_FINITE_SCORES)
            flat_greedy = torch.cat(greedy).cpu().tolist()
            k = 0
            for i in (i for m in members for i in m):  # the order `where` was built in
                scores = []
                for option in packed[i].scored:
                    n = len(option)
                    scores.append(OptionScore(sum(flat_lp[k:k + n]), n, all(flat_greedy[k:k + n])))
                    k += n
                results[i] = scores
            if on_batch is not None:
                on_batch(sum(len(m) for m in members))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.inference_mode()
def score_alone(model, option: TokenizedOption) -> OptionScore:
    """The reference: (context + continuation) alone through the model, one plain causal forward."""
    device = model.tok_emb.weight.device
    x = torch.tensor([option.tokens[:-1]], device=device)
    logprobs = torch.log_softmax(model(x)[0].float(), dim=-1)[option.start - 1:]
    targets = torch.tensor(option.tokens[option.start:], device=device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0]
    return OptionScore(float(chosen.double().sum()), len(targets), bool((logprobs.argmax(-1) == targets).all()))
