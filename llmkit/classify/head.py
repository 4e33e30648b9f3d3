"""A sequence-classification head on the one Transformer: pool the final hidden states of each text into
one vector, then a Linear layer to one logit per label.

Pooling:
- "last": the text's last token. A causal decoder's last position is the only one that has read the
  whole text (GPT-1, Radford et al. 2018, section 3.3, classifies from the final token; so do
  Hugging Face's *ForSequenceClassification decoders and InstructGPT's reward head).
- "cls": the first token, BERT's [CLS] (Devlin et al. 2019, section 3): under bidirectional attention
  it sees every token.
- "mean": the mean over the text's tokens (Sentence-BERT, Reimers & Gurevych 2019; all-MiniLM's
  sentence embeddings).
"auto" is "last" for a causal model and "cls" for an encoder (`getattr(config, "causal", True)`).

Texts are packed several to a row with no attention across them (llmkit/train/packing.py; an encoder's
tokens see their whole text, before and after), so a batch computes exactly what each text would alone
(tested: batched == one by one, for a decoder and an encoder).

On disk: the backbone in the one checkpoint format (merged if it was trained with LoRA; the adapter
beside it, llmkit/train/peft.py), `classifier_head.safetensors` (score.weight, score.bias) and
`classifier_config.json` (the label names in the head's order, the pooling, the base model, the seq_len texts
were cut to in training, which prediction keeps).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from llmkit.atomic import atomic_write_bytes, atomic_write_text
from llmkit.errors import CheckpointError, ConfigError, DataError, GenerationError, first_line
from llmkit.train.head_model import HeadOnTransformer
from llmkit.train.packing import model_inputs, pack, sequence_item
from llmkit.train.peft import load_peft, prompt_prefix_ids, save_peft

HEAD_FILE, HEAD_CONFIG = "classifier_head.safetensors", "classifier_config.json"
POOLINGS = ("auto", "last", "cls", "mean")


def resolve_pooling(pooling: str, model_config) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    if pooling == "auto":
        return "last" if getattr(model_config, "causal", True) else "cls"
    return pooling


class SequenceClassifier(HeadOnTransformer):
    """A Transformer wrapped with a pooled linear head: logits (n_texts, n_labels)."""

    def __init__(self, transformer: nn.Module, labels: list[str], pooling: str = "auto", seed: int = 0):
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"a classifier needs two or more distinct labels, not {labels}")
        if getattr(transformer.config, "n_encoder_layers", 0):  # its forward needs a source (encoder_ids) the
            # packed batch does not give: refused here, before a run is planned, rather than at its first step
            raise ConfigError("a classifier is built on a decoder or an encoder (BERT-style); this model is an "
                              "encoder-decoder (T5-style, n_encoder_layers > 0), which classify does not support")
        self.transformer = transformer
        self.labels = list(labels)
        self.pooling = resolve_pooling(pooling, transformer.config)
        # the length texts were cut to in training (0: the model's context); prediction cuts them alike, or
        # `classify eval` on the dev file would score longer texts than training's val_accuracy did
        self.max_len = 0
        d = transformer.config.d_model
        p = transformer.tok_emb.weight
        self.score = nn.Linear(d, len(labels), device=p.device, dtype=p.dtype)
        # small logits at the start (every label near 1/n): std 0.02 is BERT's initializer_range; drawn
        # from the run's seed, not torch's global generator: the same seed trains the same classifier
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=generator) * 0.02)
        nn.init.zeros_(self.score.bias)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits (n, n_labels), float32, of the texts of a packed batch (`classification_batch`)."""
        hidden = self.transformer(batch["input_ids"], return_hidden=True, **model_inputs(batch))
        return self.score(pool(hidden, batch, self.pooling)).float()


def pool(hidden: torch.Tensor, batch: dict, how: str) -> torch.Tensor:
    """One vector (n, d) per text from the hidden states (rows, len, d) of a packed batch."""
    flat = hidden.flatten(0, 1)
    if how == "last":
        return flat[batch["last_index"]]
    if how == "cls":
        return flat[batch["first_index"]]
    if how == "mean":
        seq_index = batch["seq_index"].flatten()
        valid = seq_index >= 0
        n = batch["last_index"].shape[0]
        sums = torch.zeros(n, flat.shape[-1], dtype=torch.float32, device=flat.device)
        sums = sums.index_add(0, seq_index[valid], flat[valid].float())
        counts = torch.zeros(n, dtype=torch.float32, device=flat.device).index_add(
            0, seq_index[valid], torch.ones(int(valid.sum()), device=flat.device))
        return (sums / counts[:, None]).to(flat.dtype)
    raise ConfigError(f"pooling must be last, cls or mean, not {how!r}")


def classification_batch(sequences: list[list[int]], row_len: int, pad_id: int) -> dict:
    """A packed batch of token sequences: the model's inputs plus, per text, the flat indices of its
    first and last tokens and each token's text (seq_index, for mean pooling)."""
    batch = pack([sequence_item(s) for s in sequences], row_len, pad_id)
    batch.pop("targets")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    batch["first_index"] = batch["last_index"] - lengths + 1
    return batch


def encode_texts(tokenizer, texts: list[str], max_len: int, prefix: list[int] | None = None,
                 causal: bool = True) -> list[list[int]]:
    """Token ids of each text (BOS first where the tokenizer has one, as the model saw documents in
    pretraining), cut to max_len tokens: the end of a long text is dropped (its start is kept). An encoder
    whose tokenizer wraps texts (BERT's [CLS] text [SEP]) reads them wrapped, as it was trained."""
    prefix = prefix or []
    if not causal and tokenizer.backend.num_special_tokens_to_add(False) > 0:
        wrapped = tokenizer.encode_with_special_tokens(texts, max(max_len - len(prefix), 1))
        return [(prefix + ids)[:max_len] for ids in wrapped]
    encoded = [(prefix + ids)[:max_len] for ids in tokenizer.encode_batch(texts, add_bos=True)]
    for i, ids in enumerate(encoded):
        if not ids:  # (no BOS, no prompt prefix, an empty text): packed, it would be pooled from its neighbour's
            # tokens, its label silently another text's
            raise DataError(f"text {i + 1} ({texts[i]!r:.40}) has no tokens to classify (and this tokenizer adds "
                            "no BOS); give a non-empty text")
    return encoded


@torch.no_grad()
def classify_sequences(model: SequenceClassifier, sequences: list[list[int]], row_len: int, pad_id: int,
                       per_batch: int = 32, autocast=None) -> torch.Tensor:
    """Label probabilities (n, n_labels) of token sequences, in eval mode."""
    was_training = model.training
    model.eval()
    device = model.score.weight.device
    out = []
    try:
        for start in range(0, len(sequences), per_batch):
            batch = classification_batch(sequences[start:start + per_batch], row_len, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast or contextlib.nullcontext():
                out.append(torch.softmax(model(batch), dim=-1).cpu())
            if not torch.isfinite(out[-1]).all():  # an accuracy of nan% or a label drawn from NaN says nothing
                raise GenerationError("the classifier's label probabilities are not finite (NaN or inf): its weights "
                                      "hold NaN/inf values, or a low-precision dtype overflowed (try --dtype float32)")
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(model.labels))


def classify_texts(model: SequenceClassifier, tokenizer, texts: list[str], max_len: int = 0,
                   per_batch: int = 32, autocast=None) -> torch.Tensor:
    """Label probabilities (n, n_labels) of texts; columns in the order of model.labels."""
    max_len = min(max_len or model.max_len or model.config.max_seq_len, model.config.max_seq_len)
    sequences = encode_texts(tokenizer, texts, max_len, prompt_prefix_ids(model), model.config.causal)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return classify_sequences(model, sequences, max_len, pad, per_batch, autocast)


# --- on disk -----------------------------------------------------------------------------------------------
def save_classifier(directory: str | Path, model: SequenceClassifier, state: dict, tokenizer,
                    base_model: str | None) -> None:
    """Write the backbone (merged, with the adapter beside it), the head and its labels into directory."""
    directory = Path(directory)
    save_peft(directory, model, state, tokenizer, base_model, prefix="transformer.")
    head = {k.removeprefix("score."): v.detach().contiguous().cpu() for k, v in state.items() if k.startswith("score.")}
    atomic_write_bytes(directory / HEAD_FILE, save(head, metadata={"kind": "classifier_head"}))
    record = {"labels": model.labels, "pooling": model.pooling, "base_model": base_model}
    if model.max_len:  # (a classifier built outside `classify train` reads up to the model's context)
        record["seq_len"] = model.max_len
    atomic_write_text(directory / HEAD_CONFIG, json.dumps(record, indent=2) + "\n")


def read_head_config(directory: str | Path) -> dict:
    path = Path(directory) / HEAD_CONFIG
    if not path.exists():
        raise CheckpointError(f"{path}: missing; {directory} is not a classifier (train one with "
                              "`llmkit classify train`, or classify with any language model by `classify zero-shot`)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is corrupt: save the classifier again") from None
    labels = record.get("labels") if isinstance(record, dict) else None
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels)
            or record.get("pooling") not in POOLINGS[1:]):
        raise CheckpointError(f"{path}: expected {{\"labels\": [two or more names], \"pooling\": last|cls|mean}}; "
                              "the file was not written by llmkit: save the classifier again")
    seq_len = record.get("seq_len")  # (absent from classifiers saved before it was recorded)
    if seq_len is not None and (not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1):
        raise CheckpointError(f"{path}: seq_len {seq_len!r} is not a positive integer; the file is corrupt: save "
                              "the classifier again")
    return record


def load_classifier(directory: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[SequenceClassifier, object]:
    """(classifier in eval mode, tokenizer) of a `llmkit classify train` output directory."""
    directory = Path(directory)
    record = read_head_config(directory)
    if not (directory / HEAD_FILE).exists():
        raise CheckpointError(f"{directory / HEAD_FILE}: missing; the classifier was not saved completely")
    transformer, tokenizer = load_peft(directory, device=device, dtype=dtype)
    model = SequenceClassifier(transformer, record["labels"], record["pooling"])
    model.max_len = record.get("seq_len") or 0
    try:
        head = load_file(directory / HEAD_FILE)
        model.score.load_state_dict({k: v.to(model.score.weight.dtype) for k, v in head.items()})
    except Exception as e:  # unreadable, or shapes that do not fit (another backbone, other labels)
        raise CheckpointError(f"{directory / HEAD_FILE}: does not fit the backbone and its "
                              f"{len(record['labels'])} labels ({first_line(e)})") from None
    return model.to(device).eval(), tokenizer
