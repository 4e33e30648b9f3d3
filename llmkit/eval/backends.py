"""What the task runner asks of a model, answered by a local checkpoint: log-likelihoods of
continuations (scoring.py's batched, prefix-sharing forward) and greedy generations (the one engine,
continuous batching). `llmkit/eval/remote.py` answers the same two questions over an OpenAI-compatible
HTTP API, so a task runs the same way against either.

Generation prompts: plain text is encoded with a BOS token when the model takes one; a chat prompt (a
list of messages, --chat) is rendered by the checkpoint's chat template, which writes any BOS itself.
A prompt that leaves fewer than max_new_tokens of the model's context loses tokens from the left (its
oldest exemplars first), down to half the context at most; the count is reported per example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmkit.eval.extract import cut_at_stops
from llmkit.eval.prompts import ExampleRequests
from llmkit.eval.scoring import OptionScore, encode_for_model, score_examples
from llmkit.infer import Engine, SamplingParams


@dataclass
class Generated:
    text: str  # the reply, cut at the first stop string
    finish_reason: str  # "stop" | "length" | "error"
    tokens: int | None  # tokens generated (None: a server that does not say)
    truncated: int = 0  # prompt tokens cut from the left to leave room
    error: str | None = None


@dataclass
class Scored:
    scores: list[OptionScore]  # one per option of the example
    truncated: int  # most tokens any option lost from the left


def default_batch_tokens(device) -> int:
    # Rows x padded length per forward. On a GPU a larger batch keeps the chip busy; on a CPU the
    # attention mask and activations of more tokens only cost memory without speed.
    return 32768 if str(device).startswith("cuda") else 4096


class LocalBackend:
    """A model and its tokenizer in this process."""

    def __init__(self, model, tokenizer, *, engine: Engine | None = None, add_bos: bool = True,
                 batch_tokens: int | None = None, chat: bool = False):
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.device = model.tok_emb.weight.device
        self.add_bos = add_bos
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.model, stop_token_ids=self.tokenizer.stop_token_ids, tokenizer=self.tokenizer)
        return self._engine

    def settings(self) -> dict:
        return {"backend": "local", "add_bos": self.add_bos and not self.chat, "batch_tokens": self.batch_tokens,
                "chat": self.chat, "device": str(self.device), "compile": bool(self._engine and self._engine.compiled),
                "dtype": str(self.model.tok_emb.weight.dtype).removeprefix("torch.")}

    def render_chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def loglikelihood(self, requests: Sequence[ExampleRequests], where: Callable[[int], str],
                      on_batch: Callable[[int], None] | None = None) -> list[Scored]:
        """Every option of every request scored; where(k) names the k-th pair in error messages."""
        pairs = [pair for r in requests for pair in r.pairs]
        # a chat context starts with the template's own BOS, if any, and ends with its markup
        flat = encode_for_model(self.model, self.tokenizer, pairs, self.add_bos and not self.chat, where=where,
                                move_whitespace=not self.chat)
        grouped, k = [], 0
        for r in requests:
            grouped.append(flat[k:k + len(r.pairs)])
            k += len(r.pairs)
        scores = score_examples(self.model, grouped, self.batch_tokens, on_batch=on_batch)
        return [Scored(s, max(o.truncated for o in options)) for s, options in zip(scores, grouped)]

    def encode_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, list):
            return self.tokenizer.encode_chat(prompt, add_generation_prompt=True)
        return self.tokenizer.encode(prompt, add_bos=self.add_bos)

    def generate(self, prompts: Sequence, max_new_tokens: int, stop: Sequence[str],
                 on_done: Callable[[int], None] | None = None, chunk: int = 64) -> list[Generated]:
        """Greedy replies to prompts (strings, or message lists with --chat), in chunks of `chunk`
        requests through the engine (continuous batching within a chunk; the chunks report progress)."""
        context = self.model.text_context
        keep = max(context - max_new_tokens, context // 2)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop_strings=list(stop))
        stops = set(self.engine.stop_token_ids)
        out: list[Generated] = []
        for start in range(0, len(prompts), chunk):
            ids = [self.encode_prompt(p) for p in prompts[start:start + chunk]]
            cut = [max(0, len(x) - keep) for x in ids]
            completions = self.engine.generate_batch([x[c:] for x, c in zip(ids, cut)], params)
            for completion, c in zip(completions, cut):
                tokens = completion.token_ids
                if tokens and tokens[-1] in stops:
                    tokens = tokens[:-1]
                # special tokens left out, as the server's default and lm-evaluation-harness's decode do
                text = cut_at_stops(self.tokenizer.decode_reply(tokens), stop)
                out.append(Generated(text, completion.finish_reason, len(completion.token_ids), c, completion.error))
            if on_done is not None:
                on_done(len(ids))
        return out
