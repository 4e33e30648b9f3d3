"""From task examples to scoring requests: few-shot contexts built as the published recipes build them.

Each example becomes one or more (context, continuation) pairs whose continuation log-probability is
scored, as lm-evaluation-harness's `loglikelihood` requests:
- multiple choice: one pair per choice, the context shared:  shots + query + delimiter | choice
- schema: one pair per context option, the continuation shared:  shots + option + delimiter | continuation
- language modelling: one pair:  shots + context + delimiter | continuation

The shots of example i (Mosaic's in-context-learning datasets; nanochat's CORE evaluation) are other
examples of the same file, drawn without replacement by random.Random(seed + i), each written with its
gold answer (`query + delimiter + answer`) and followed by the example delimiter (a blank line). Seeding
by the example's index makes its prompt reproducible and independent of --limit and of batching.

With a chat template (`--chat`), each shot is a user turn (its question, with the delimiter's trailing
space dropped) answered by an assistant turn (its answer), the example's question is the last user turn,
and the context is the rendered conversation up to the assistant's generation prompt: the scored
continuation is the assistant's reply, as an instruct model is used (lm-evaluation-harness's
`--apply_chat_template --fewshot_as_multiturn`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from llmkit.eval.tasks import LANGUAGE_MODELING, MULTIPLE_CHOICE, SCHEMA, TaskSpec


@dataclass
class ExampleRequests:
    index: int  # the example's position in its file (0-based, blank lines skipped)
    contexts: list[str]  # one per scored option (equal for multiple choice)
    continuations: list[str]  # one per scored option (equal for schema)
    gold: int | None  # the right option; None for language modelling
    choice_chars: list[int]  # characters of each option's answer text: acc_norm's divisor

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations))


def fewshot_indices(index: int, n_examples: int, shots: int, seed: int) -> list[int]:
    if shots <= 0:
        return []
    rng = random.Random(seed + index)
    others = [i for i in range(n_examples) if i != index]
    return rng.sample(others, min(shots, len(others)))


def demonstration_parts(example: dict, kind: str, delimiter: str) -> tuple[str, str]:
    """A solved example as (question + delimiter, answer)."""
    if kind == MULTIPLE_CHOICE:
        return example["query"] + delimiter, example["choices"][example["gold"]]
    if kind == SCHEMA:
        return example["context_options"][example["gold"]] + delimiter, example["continuation"]
    return example["context"] + delimiter, example["continuation"]


def demonstration(example: dict, kind: str, delimiter: str) -> str:
    """A solved example as it appears among the shots."""
    return "".join(demonstration_parts(example, kind, delimiter))


ChatRender = Callable[[list[dict]], str]  # messages -> the rendered conversation with a generation prompt


def build_requests(spec: TaskSpec, examples: list[dict], indices: list[int],
                   chat: ChatRender | None = None) -> list[ExampleRequests]:
    """Requests for examples[i] for i in indices (shots drawn from all of `examples`); with `chat`, each
    context is a rendered conversation (see the module docstring)."""
    out = []
    for index in indices:
        chosen = fewshot_indices(index, len(examples), spec.shots, spec.fewshot_seed)
        if chat is not None:
            out.append(_chat_request(spec, examples, index, chosen, chat))
            continue
        shots = [demonstration(examples[j], spec.kind, spec.delimiter) for j in chosen]
        preamble = "".join(shot + spec.example_delimiter for shot in shots)
        example = examples[index]
        if spec.kind == MULTIPLE_CHOICE:
            context = preamble + example["query"] + spec.delimiter
            choices = example["choices"]
            out.append(ExampleRequests(index, [context] * len(choices), list(choices), example["gold"],
                                       [len(c) for c in choices]))
        elif spec.kind == SCHEMA:
            options = example["context_options"]
            continuation = example["continuation"]
            out.append(ExampleRequests(index, [preamble + o + spec.delimiter for o in options],
                                       [continuation] * len(options), example["gold"],
                                       [len(continuation)] * len(options)))
        elif spec.kind == LANGUAGE_MODELING:
            continuation = example["continuation"]
            out.append(ExampleRequests(index, [preamble + example["context"] + spec.delimiter], [continuation],
                                       None, [len(continuation)]))
        else:
            raise ValueError(f"unknown task kind {spec.kind!r}")
    return out


def _chat_request(spec: TaskSpec, examples: list[dict], index: int, shots: list[int], chat: ChatRender) -> ExampleRequests:
    turns = []
    for j in shots:
        question, answer = demonstration_parts(examples[j], spec.kind, spec.delimiter)
        turns += [{"role": "user", "content": question.rstrip()}, {"role": "assistant", "content": answer}]
    example = examples[index]

    def context(question: str) -> str:
        return chat(turns + [{"role": "user", "content": (question + spec.delimiter).rstrip()}])

    if spec.kind == MULTIPLE_CHOICE:
        choices = example["choices"]
        return ExampleRequests(index, [context(example["query"])] * len(choices), list(choices), example["gold"],
                               [len(c) for c in choices])
    if spec.kind == SCHEMA:
        options, continuation = example["context_options"], example["continuation"]
        return ExampleRequests(index, [context(o) for o in options], [continuation] * len(options), example["gold"],
                               [len(continuation)] * len(options))
    continuation = example["continuation"]
    return ExampleRequests(index, [context(example["context"])], [continuation], None, [len(continuation)])
