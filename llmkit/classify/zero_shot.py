"""Zero-shot classification with any causal language model: put the text in a template, score each label's
word as the continuation, and take the label whose word the model finds likeliest.

    "{text} It was" + " great" / " terrible"        (LM-BFF's SST-2 template, Gao, Fisch & Chen 2021)

p(label | text) is the softmax over labels of log p(word | prompt) (a word of several tokens: the sum of
its tokens' log-probabilities). Scoring goes through llmkit.eval.scoring: the prompt shared by a text's
label words is computed once, tokenized at the boundary as lm-evaluation-harness does.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use", section 5): a model prefers some label
words whatever the text (a word's frequency, the template's bias). The same template filled with
content-free inputs ("N/A", "", "[MASK]") measures that preference: p_cf is the mean of their label
distributions, and each text's distribution p becomes W p, renormalised, with W = diag(p_cf)^-1 and
bias b = 0 (their choice for classification), so a content-free input lands on the uniform distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmkit.errors import DataError

DEFAULT_TEMPLATE = "{text} It was"
CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, section 5


@dataclass(frozen=True)
class LabelWords:
    names: list[str]  # label names, in the order of the probabilities' columns
    words: list[str]  # the word that stands for each label in the prompt's continuation


def parse_label_words(spec: str) -> LabelWords:
    """'negative=terrible,positive=great' -> names [negative, positive], words [terrible, great]. A label
    without '=' is its own word ('negative,positive')."""
    names, words = [], []
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, word = part.partition("=")
        name, word = name.strip(), (word.strip() if _ else name.strip())
        if not name or not word:
            raise DataError(f"--labels {spec!r}: {part!r} has an empty label or word; write NAME=WORD,NAME=WORD")
        names.append(name)
        words.append(word)
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"--labels {spec!r}: give two or more distinct labels, e.g. negative=terrible,positive=great")
    if len(set(words)) != len(words):
        raise DataError(f"--labels {spec!r}: two labels share a word; each label needs its own word")
    return LabelWords(names, words)


def fill_template(template: str, text: str) -> str:
    if "{text}" not in template:
        raise DataError(f"--template {template!r} has no {{text}}; write where the text goes, e.g. {DEFAULT_TEMPLATE!r}")
    return template.replace("{text}", text)


def label_logprobs(model, tokenizer, texts: list[str], labels: LabelWords, template: str = DEFAULT_TEMPLATE,
                   add_bos: bool = True, batch_tokens: int = 4096,
                   on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """(n, n_labels) log p(label word | template filled with the text), float64. The word follows the
    prompt after one space (lm-evaluation-harness moves a prompt's trailing whitespace onto it)."""
    from llmkit.eval.scoring import encode_for_model, score_examples

    if getattr(model.config, "causal", True) is False:
        raise DataError("zero-shot classification scores the next word, which needs a causal language model; "
                        "this model is an encoder: train a head with `llmkit classify train`")
    if getattr(model.config, "n_encoder_layers", 0):  # its decoder reads nothing without a source (the scorer
        # gives it none): a T5 scores a text as the source and the label word as the target, not as a prompt
        raise DataError("zero-shot classification scores the label word as the next word of a causal language "
                        "model's prompt; this model is an encoder-decoder (T5-style, n_encoder_layers > 0): use a "
                        "decoder-only model")
    pairs = []
    for text in texts:
        prompt = fill_template(template, text)
        pairs += [(prompt, (" " if not prompt[-1:].isspace() else "") + w) for w in labels.words]
    k = len(labels.words)
    options = encode_for_model(model, tokenizer, pairs, add_bos,  # (after a prompt-tuned model's soft prompt)
                               where=lambda i: f"text {i // k + 1}, label word {labels.words[i % k]!r}")
    examples = [options[i:i + k] for i in range(0, len(options), k)]
    scores = score_examples(model, examples, batch_tokens=batch_tokens, on_batch=on_batch)
    return torch.tensor([[s.logprob for s in ex] for ex in scores], dtype=torch.float64)


def label_probabilities(logprobs: torch.Tensor) -> torch.Tensor:
    """p(label | text): the label words' log-probabilities normalised over the labels."""
    return torch.softmax(logprobs, dim=-1)


def content_free_probabilities(model, tokenizer, labels: LabelWords, template: str = DEFAULT_TEMPLATE,
                               add_bos: bool = True) -> torch.Tensor:
    """p_cf: the mean label distribution of the template filled with each content-free input (Zhao et al.)."""
    probs = label_probabilities(label_logprobs(model, tokenizer, list(CONTENT_FREE), labels, template, add_bos))
    return probs.mean(dim=0)


def calibrate(probs: torch.Tensor, p_cf: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: q = normalise(diag(p_cf)^-1 p) for each row p of probs (n, k)."""
    weighted = probs / p_cf.clamp_min(1e-300)
    return weighted / weighted.sum(dim=-1, keepdim=True)
