"""Masked-token prediction: what an encoder trained with masked language modelling (BERT, Devlin et al.
2019) puts in each [MASK] of a text. The encoder's counterpart of `llmkit generate --show-probs`.

The text is read as the encoder was trained to read it (the tokenizer's post-processor: [CLS] text
[SEP]); one forward with bidirectional attention gives, at every mask, a distribution over the
vocabulary; each mask is predicted independently of the others (as BERT's fill-mask does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmkit.errors import GenerationError
from llmkit.model import Transformer


@dataclass
class MaskPrediction:
    """One [MASK] of the text: its token index in the model's input and the most likely fillers."""

    position: int
    candidates: list[tuple[str, float]]  # (token text, probability), most likely first


def check_can_fill(model: Transformer, tokenizer) -> None:
    """A one-line GenerationError for a model that cannot fill masks, saying which kind it is."""
    config = model.config
    if getattr(config, "n_encoder_layers", 0):  # (causal too, by its decoder: the message below would mislead)
        raise GenerationError("fill needs an encoder trained with masked language modelling (BERT-style); this model "
                              "is an encoder-decoder (T5-style): it fills spans by generating, so write <extra_id_0> "
                              "where the text is missing and use `llmkit generate`")
    if config.causal:
        raise GenerationError("fill needs an encoder trained with masked language modelling (BERT-style, causal: "
                              "false); this model is a decoder: use `llmkit generate --show-probs` instead")
    if not config.lm_head:
        raise GenerationError("this encoder has no masked-LM head (lm_head: false, a sentence encoder such as "
                              "all-MiniLM-L6-v2): it gives embeddings, not token predictions; fill needs a "
                              "BertForMaskedLM-style model")
    if tokenizer.mask_id is None:
        raise GenerationError("this model's tokenizer has no mask token (mask_token in tokenizer_config.json), "
                              "so no [MASK] can be written for it to fill")


@torch.inference_mode()
def fill_masks(model: Transformer, tokenizer, text: str, top: int = 5) -> list[MaskPrediction]:
    """The `top` most likely tokens, with probabilities, for each mask token in `text`, in order."""
    check_can_fill(model, tokenizer)
    if not 1 <= top <= model.config.vocab_size:
        raise GenerationError(f"--top {top}: give a number of candidates between 1 and {model.config.vocab_size}")
    if tokenizer.mask_token != "[MASK]":  # "[MASK]" as the usual way to write it, for any tokenizer's own mask
        text = text.replace("[MASK]", tokenizer.mask_token)
    context = model.config.max_seq_len
    ids = tokenizer.encode_with_special_tokens([text], 2**31)[0]  # whole: a cut text would lose its masks
    if len(ids) > context:
        raise GenerationError(f"the text has {len(ids)} tokens with its special tokens but the model's context is "
                              f"{context}; shorten it")
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not positions:
        raise GenerationError(f"the text has no {tokenizer.mask_token}; write it where a token is to be predicted, "
                              f"e.g. \"The {tokenizer.mask_token} ate the cheese\"")
    device = model.tok_emb.weight.device
    logits = model(torch.tensor([ids], device=device))[0, positions].float()
    probs, chosen = torch.softmax(logits, dim=-1).topk(top, dim=-1)
    return [MaskPrediction(position, [(tokenizer.decode([t]), p) for t, p in zip(ids_row, probs_row)])
            for position, ids_row, probs_row in zip(positions, chosen.tolist(), probs.tolist())]


def prediction_table(predictions: list[MaskPrediction]) -> str:
    """Rank, then one column per mask: its candidate tokens and their probabilities."""
    texts = [[text.strip() or repr(text) for text, _ in p.candidates] for p in predictions]
    widths = [max(len(t) for t in column) for column in texts]
    cells = [[f"{t:<{w}} {prob:6.1%}" for t, (_, prob) in zip(column, p.candidates)]
             for column, w, p in zip(texts, widths, predictions)]
    widths = [max(len(c) for c in column + [f"[MASK] {i + 1}"]) + 3 for i, column in enumerate(cells)]
    lines = ["rank  " + "".join(f"[MASK] {i + 1}".ljust(w) for i, w in enumerate(widths)).rstrip()]
    for rank in range(len(cells[0])):
        lines.append(f"{rank + 1:>4}  " + "".join(column[rank].ljust(w) for column, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)
