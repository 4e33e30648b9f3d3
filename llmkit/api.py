"""The Python API: `llmkit.load(path_or_name)` -> an `LLM` that generates, chats and scores text.

    llm = llmkit.load("smollm2")            # a named model (converted on first use) or a checkpoint dir
    llm.generate("Once upon a time", max_new_tokens=50, temperature=0.8, seed=0)
    llm.chat([{"role": "user", "content": "Hi!"}])
    llm.score("The mouse ate the cheese").total_logprob

Everything that generates goes through the one `llmkit.infer.Engine` (`llm.engine`); `load` passes
engine options through: `compile=True`, `speculative="prompt-lookup" | "layers:N" | DRAFT_DIR`,
`max_batch_size`, `kv_cache_mib`, `kv_cache_dtype`, `prefix_cache_mib`, `prefill_chunk`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llmkit.checkpoint import load_generation_config, load_model, load_quantization, load_tokenizer
from llmkit.convert import resolve_model
from llmkit.device import inference_dtype, parse_dtype, resolve_device
from llmkit.errors import NOT_FINITE_SCORES, GenerationError, LLMKitError
from llmkit.infer import Engine, SamplingParams, TokenLogprob
from llmkit.infer.options import ENCODER_CANNOT_GENERATE
from llmkit.infer.speculative import Speculator, layer_skip_draft
from llmkit.model import Transformer
from llmkit.tokenizer import Tokenizer

if TYPE_CHECKING:
    import numpy


@dataclass
class TokenScore:
    token_id: int
    text: str
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass
class Score:
    """Log-probability of a text under the model; the first token is scored after BOS when there is one."""

    total_logprob: float
    tokens: list[TokenScore]

    @property
    def perplexity(self) -> float:
        return math.exp(-self.total_logprob / max(len(self.tokens), 1))


@dataclass
class StepProbs:
    """One generated token with the model's probabilities at that step (`llmkit generate --show-probs`)."""

    text: str
    prob: float
    alternatives: list[tuple[str, float]]  # the most likely tokens' text and probability, best first


class LLM:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, generation_config: dict | None = None,
                 **engine_options):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config or {}
        eos = self.generation_config.get("eos_token_id", tokenizer.stop_token_ids)
        stops = sorted(set(eos if isinstance(eos, list) else [eos]) | set(tokenizer.stop_token_ids))
        # An encoder has no engine (it cannot generate); embed and fill use the model directly.
        self._engine = (Engine(model, stop_token_ids=[s for s in stops if s is not None], tokenizer=tokenizer,
                               **engine_options) if model.config.causal else None)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise GenerationError(ENCODER_CANNOT_GENERATE)
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:  # (a caller may wrap or replace the engine, e.g. to count its calls)
        self._engine = engine

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    # -- generation
    def sampling_params(self, **kwargs) -> SamplingParams:
        return SamplingParams(**{k: v for k, v in kwargs.items() if v is not None})

    def stream(self, prompt: str, add_bos: bool = True, **sampling) -> Iterator[str]:
        """Yield the generated text piece by piece (stop tokens are not shown, nor special tokens: the server's
        default `skip_special_tokens`; stop strings end it)."""
        params = self.sampling_params(**sampling)
        ids = self.tokenizer.encode(prompt, add_bos=add_bos)
        yield from self._stream_ids(ids, params)

    def _stream_ids(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[str]:
        generated: list[int] = []
        shown = ""
        stops = set(self.engine.stop_token_ids) | set(params.stop_token_ids)
        skipped = self.tokenizer.special_ids()  # left out of the text, as the server does by default
        for token in self.engine.stream(prompt_ids, params):
            if token in stops:
                break
            if token in skipped:
                continue
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if text.endswith("\ufffd"):
                continue  # part of a multi-byte character: wait for the rest
            for stop in params.stop_strings:
                cut = text.find(stop)
                if cut != -1:
                    if cut > len(shown):
                        yield text[len(shown):cut]
                    return
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text

    def room(self, prompt: str, max_new_tokens: int, add_bos: bool = True) -> tuple[int, int]:
        """(prompt tokens, tokens that can be generated after it within the model's context)."""
        ids = self.tokenizer.encode(prompt, add_bos=add_bos)
        return len(ids), self.engine.check_prompt(ids, max_new_tokens)

    def generate(self, prompt: str, add_bos: bool = True, **sampling) -> str:
        return "".join(self.stream(prompt, add_bos=add_bos, **sampling))

    def stream_probs(self, prompt: str, top: int = 5, add_bos: bool = True, **sampling) -> Iterator[StepProbs]:
        """Yield each generated token with the model's next-token distribution at that step (its
        probabilities at temperature 1, before sampling filters): "queso 85%, pan 10%, semillas 5%"."""
        params = self.sampling_params(**sampling, logprobs=top)
        ids = self.tokenizer.encode(prompt, add_bos=add_bos)
        request = self.engine.submit(ids, params)
        shown = 0
        try:
            while not request.done:
                self.engine.step()
                for info in request.logprobs[shown:]:
                    yield self._step_probs(info)
                shown = len(request.logprobs)
            request.raise_if_failed()
        finally:
            self.engine.cancel(request)

    def _step_probs(self, info: TokenLogprob) -> StepProbs:
        def text(token_id: int) -> str:
            return self.tokenizer.decode([token_id])

        return StepProbs(text(info.token_id), math.exp(info.logprob),
                         [(text(t), math.exp(lp)) for t, lp in info.top])

    def chat_stream(self, messages: list[dict], **sampling) -> Iterator[str]:
        self.engine  # noqa: B018 -- an encoder says so here, before its (absent) chat template is asked for
        ids = self.tokenizer.encode_chat(messages)  # the template writes any BOS itself; contents stay text
        yield from self._stream_ids(ids, self.sampling_params(**sampling))

    def chat(self, messages: list[dict], tools: list | None = None, max_tool_rounds: int = 4, **sampling) -> str:
        """The assistant's reply to a conversation, rendered with the checkpoint's chat template. With tools
        ("calculator", or `llmkit.rag.tools.Tool`s) the model may call them: see `chat_with_tools`."""
        if tools:
            return self.chat_with_tools(messages, tools, max_tool_rounds, **sampling).reply
        return "".join(self.chat_stream(messages, **sampling))

    def chat_with_tools(self, messages: list[dict], tools: list, max_tool_rounds: int = 4, **sampling):
        """Chat where each tool call the model makes is run and answered with a `tool` message, and the model
        continues, for at most max_tool_rounds rounds of calls (`llmkit.rag.tool_loop.ToolChat`: the reply,
        the whole exchange, counts)."""
        from llmkit.rag.tool_loop import run_tool_loop

        params = self.sampling_params(**sampling)
        self.engine  # noqa: B018 -- an encoder refuses before any tool runs

        def generate(rendered: list[dict], template_tools: list[dict] | None) -> str:
            return "".join(self._stream_ids(self.tokenizer.encode_chat(rendered, tools=template_tools), params))
        return run_tool_loop(generate, messages, tools, self.tokenizer.chat_template, max_tool_rounds)

    # -- scoring
    @torch.inference_mode()
    def score(self, text: str) -> Score:
        # With a BOS every token of the text is scored; without one the first token has no context.
        if not self.model.config.causal:
            raise GenerationError("this model is an encoder (causal: false): it gives no next-token probabilities "
                                  "to score a text with; use `llmkit fill`")
        ids = self.tokenizer.encode(text, add_bos=True)
        if len(ids) < 2:
            raise GenerationError("the text is too short to score; give at least one token after the first")
        soft = self.model.soft_prompt_ids  # a prompt-tuned model reads the text after its soft prompt
        context = self.model.text_context
        if len(ids) > context:
            after = f" after its {len(soft)}-token soft prompt" if soft else ""
            raise GenerationError(f"the text has {len(ids)} tokens but the model's context is {context}{after}")
        x = torch.tensor([soft + ids], device=self.device)
        logprobs = torch.log_softmax(self.model(x)[0, len(soft):-1].float(), dim=-1)
        targets = torch.tensor(ids[1:], device=self.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0]
        if not bool(torch.isfinite(chosen).all()):
            raise GenerationError(NOT_FINITE_SCORES)
        chosen = chosen.cpu().tolist()
        tokens = [TokenScore(t, self.tokenizer.decode([t]), lp) for t, lp in zip(ids[1:], chosen)]
        return Score(total_logprob=sum(s.logprob for s in tokens), tokens=tokens)

    # -- embeddings
    def embed(self, texts: list[str]) -> "numpy.ndarray":
        """(len(texts), d_model) float32 unit vectors: the mean of the final hidden states over each text's
        tokens (an encoder: [CLS] text [SEP], padding left out, as sentence-transformers pools), normalised.
        The vectors `llmkit rag index --model M` stores."""
        from llmkit.rag.embed import ModelEmbedder

        return ModelEmbedder(self.model, self.tokenizer, "loaded model").embed(list(texts))

    def fill(self, text: str, top: int = 5):
        """An encoder's `top` predictions for each [MASK] of `text` (`llmkit.fill.MaskPrediction`s)."""
        from llmkit.fill import fill_masks

        return fill_masks(self.model, self.tokenizer, text, top)

    # -- looking inside (llmkit.inspect): the same functions as `llmkit inspect`
    def attention(self, text: str, add_bos: bool = True):
        """Attention weights of every layer and head for `text` (`llmkit.inspect.attention.AttentionMaps`)."""
        from llmkit.inspect.attention import attention_maps

        return attention_maps(self.model, self.tokenizer, text, add_bos=add_bos)

    def lens(self, text: str, top: int = 5, add_bos: bool = True):
        """The logit lens: the top next tokens each layer predicts at each position (`LensResult`)."""
        from llmkit.inspect.lens import logit_lens

        return logit_lens(self.model, self.tokenizer, text, top=top, add_bos=add_bos)

    def neighbours(self, word: str, top: int = 10) -> list[tuple[str, float]]:
        """The words whose input embeddings are nearest to `word`'s (cosine), nearest first."""
        return self._word_vectors().neighbours(word, top)

    def analogy(self, expression: str, top: int = 5) -> list[tuple[str, float]]:
        """3CosAdd on the input embeddings: `llm.analogy("king - man + woman")`."""
        return self._word_vectors().analogy(expression, top)

    def _word_vectors(self):
        if getattr(self, "_words", None) is None:
            from llmkit.inspect.embeddings import input_embeddings

            self._words = input_embeddings(self.model, self.tokenizer)
        return self._words


def load(name_or_path: str | Path, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, *, speculative: str | None = None, draft_tokens: int = 4,
         **engine_options) -> LLM:
    """Load a checkpoint directory or a named model ("smollm2") for generation, chat and scoring.

    speculative: "prompt-lookup", "layers:N" (the model's own first N layers draft: LayerSkip-style
    self-speculation), or a draft checkpoint directory / named model on the same tokenizer;
    draft_tokens: tokens drafted per speculative step.
    engine_options go to `llmkit.infer.Engine` (compile, max_batch_size, kv_cache_mib, ...)."""
    directory = resolve_model(name_or_path)
    device = resolve_device(device)
    dtype = parse_dtype(dtype) or inference_dtype(device, quantized=bool(load_quantization(directory)))
    model = load_inference_model(directory, device, dtype)
    if speculative is not None:
        engine_options["speculator"] = Speculator(resolve_draft(speculative, model, device, dtype), draft_tokens)
    return LLM(model, load_tokenizer(directory), load_generation_config(directory), **engine_options)


def load_inference_model(directory: Path, device: torch.device, dtype: torch.dtype) -> Transformer:
    """The model of a checkpoint directory, a prompt-tuned one with its soft prompt on (the engine and the
    scorers put its virtual tokens before every input: `Transformer.soft_prompt_ids`)."""
    from llmkit.train.peft import load_peft, soft_prompt_tokens

    if not soft_prompt_tokens(directory):
        return load_model(directory, device=device, dtype=dtype)

    return load_peft(directory, device=device, dtype=dtype)[0]


def resolve_draft(spec: str, model: Transformer, device: torch.device, dtype: torch.dtype):
    """The drafter of a `Speculator` from a user's string (see `load`)."""
    if spec == "prompt-lookup":
        return spec
    if spec.startswith("layers:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise GenerationError(f"speculative {spec!r}: write layers:N with N a number of layers") from None
        return layer_skip_draft(model, n)
    if model.soft_prompt_ids:
        raise GenerationError(f"speculative {spec!r}: a draft model has no soft prompt, and this model is "
                              "prompt-tuned; use speculative='prompt-lookup' or 'layers:N'")
    try:
        directory = resolve_model(spec)
    except LLMKitError as e:
        raise GenerationError(f"speculative {spec!r} is not 'prompt-lookup', 'layers:N' or a draft model ({e})") from None
    return load_model(directory, device=device, dtype=dtype)
