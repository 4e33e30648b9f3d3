"""The one checkpoint format: a directory with

    config.json              ModelConfig fields (+ model_type "llmkit")
    model.safetensors        weights; a tied output head is stored once, as tok_emb.weight
    tokenizer.json           the `tokenizers` library's file (+ tokenizer_config.json: BOS/EOS, chat template)
    generation_config.json   stop tokens and sampling defaults (Hugging Face's keys)

A training run writes its final model files under FINAL_SAVE_MARKER and removes it last: a directory
holding the marker (a run killed while saving) is refused, not loaded as a mix of two steps.

Weights are never pickled. Every file is written atomically (temp file + rename). Loading checks each
file and each tensor against the config and says which one is wrong and what to do.

A weight-only quantized model (`llmkit quantize`) is the same directory: config.json also carries
`"quantization": {"bits": 8 | 4, ...}` and the quantized Linears store `qweight`/`scales`(/`zeros`)
in place of `weight`; `load_model` rebuilds those Linears (llmkit/infer/quantize.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

from llmkit.atomic import atomic_write_bytes, atomic_write_text
from llmkit.config import METADATA_KEYS, ModelConfig
from llmkit.errors import CheckpointError, ConfigError
from llmkit.infer.quantize import QuantizationError, quantized_skeleton
from llmkit.model import Transformer
from llmkit.tokenizer import Tokenizer
from llmkit.yaml_config import load_json

QUANTIZATION = "quantization"  # config.json key of a quantized checkpoint (llmkit.infer.quantize)
CONFIG, WEIGHTS, TOKENIZER, GENERATION = "config.json", "model.safetensors", "tokenizer.json", "generation_config.json"
# the files beside model.safetensors that are part of what a model is: a reward head, a classifier head,
# an adapter (their modules' names; written out here, as those modules import this one)
MODEL_PART_FILES = ("reward_head.safetensors", "classifier_head.safetensors", "adapter_model.safetensors")
FINAL_SAVE_MARKER = ".final-save-incomplete"  # present while a training run writes its final model files
_SHA256_CACHE: dict[tuple, str] = {}


def weights_sha256(directory: str | Path) -> str:
    """sha256 of a checkpoint's weights: what a model is, whatever path it is found at (a training run's
    resume and DPO's reference cache compare it). The model and any reward head, classifier head or
    adapter beside it (MODEL_PART_FILES) count, not a run's caches; each by its name, its tensor table and its
    data, not by its free-form __metadata__ (which records e.g. the path a model was converted from).
    Cached per file (path, size, mtime) in the process."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory / WEIGHTS}: cannot be read (no such file); the starting model has no "
                              "weights there: was it moved or deleted?")
    digest = hashlib.sha256()
    for name in (WEIGHTS, *MODEL_PART_FILES):  # not a run's caches beside them (DPO's reference_logprobs)
        if (directory / name).is_file():
            digest.update(name.encode() + b"\0" + _file_sha256(directory / name).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _SHA256_CACHE:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if not 0 < size <= min(st.st_size - 8, 100_000_000):  # safetensors' own limit
                    raise CheckpointError(f"{path}: not a safetensors file (header of {size} bytes); it is damaged")
                header = json.loads(f.read(size))
                if not isinstance(header, dict):
                    raise CheckpointError(f"{path}: not a safetensors file (its header is not a table); it is damaged")
                header.pop("__metadata__", None)
                digest.update(json.dumps(header, sort_keys=True).encode())
                while block := f.read(1 << 23):
                    digest.update(block)
            _SHA256_CACHE[key] = digest.hexdigest()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror}); was the starting model moved or deleted?") \
            from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__}); it is damaged") from None
    return _SHA256_CACHE[key]


def save_checkpoint(directory: str | Path, model: Transformer, tokenizer: Tokenizer | None = None,
                    generation_config: dict | None = None, metadata: dict | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint of `model` (or of `state`, a full state dict of a model of the same
    config, e.g. gathered from FSDP shards)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same storage as tok_emb.weight; safetensors refuses aliases
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    atomic_write_bytes(directory / WEIGHTS, save_safetensors_bytes(state, metadata=meta))
    config_text = model.config.to_json()
    if getattr(model, "quantization", None):  # a quantized model: the same format, its scheme recorded
        config_text = json.dumps({**json.loads(config_text), QUANTIZATION: model.quantization}, indent=2) + "\n"
    atomic_write_text(directory / CONFIG, config_text)
    if tokenizer is not None:
        tokenizer.save(directory)
        if generation_config is None:
            generation_config = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_token_ids}
    if generation_config is not None:
        atomic_write_text(directory / GENERATION, json.dumps(generation_config, indent=2) + "\n")
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: " + ("a file, not a checkpoint directory; give the folder that holds it"
                                                  if directory.exists() else "no such checkpoint directory"))
    if (directory / FINAL_SAVE_MARKER).exists():
        hint = (directory / FINAL_SAVE_MARKER).read_text(errors="replace").strip()
        raise CheckpointError(f"{directory}: incomplete: {hint or 'a training run was killed while saving it'}")
    path = directory / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path}: missing; a checkpoint directory needs {CONFIG}, {WEIGHTS} and {TOKENIZER}"
                              " (to import a Hugging Face or GGUF model, run `llmkit convert SRC --out DIR`)")
    data = load_json(path, CheckpointError)
    if data.get("model_type", "llmkit") != "llmkit":
        raise CheckpointError(f"{path}: this is a {data['model_type']!r} Hugging Face config, not an llmkit one; "
                              f"import it with `llmkit convert {directory} --out DIR`")
    try:
        fields = {k: v for k, v in data.items() if k not in METADATA_KEYS and k != QUANTIZATION}
        return ModelConfig.from_dict(fields, source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint has no weights (was it saved completely?)")
    try:
        return load_file(path)  # memory-mapped: no second copy of the weights
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file is corrupt or "
                              "truncated: copy or save the checkpoint again") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Transformer:
    """Build the Transformer of `directory` and load its weights, checking every tensor's name and shape."""
    directory = Path(directory)
    config = load_config(directory)
    quantization = load_quantization(directory)
    state = load_state_dict(directory / WEIGHTS)
    model = model_from_state(config, state, quantization, weights=str(directory / WEIGHTS),
                             described_by=str(directory / CONFIG))
    if dtype is not None:
        model.to(dtype)
    return model.to(device).eval()


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], quantization: dict | None = None,
                     weights: str = "the state", described_by: str = "its config") -> Transformer:
    """A model holding `state` (a checkpoint's, or a full state dict gathered from FSDP shards), every
    tensor's name and shape checked against `config`. Built on the meta device: no random init first,
    and the random stream is not touched."""
    check_sizes_against_tensors(config, state, weights, described_by)
    with torch.device("meta"):
        model = Transformer(config)
        if quantization:
            quantized_skeleton(model, quantization)  # quantized Linears in place of nn.Linear
    expected = model.state_dict()
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)  # a quantized head is not tied: it has its own tensors
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_short_list(missing)}")
        if unexpected:
            parts.append(f"tensors not in this architecture {_short_list(unexpected)}")
        raise CheckpointError(f"{weights}: {'; '.join(parts)}; the weights do not belong to the "
                              f"model described by {described_by}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{weights}: tensor {name!r} has shape {tuple(tensor.shape)} but "
                                  f"{described_by} implies {tuple(expected[name].shape)}; the config and "
                                  "the weights come from different models")
        if expected[name].is_floating_point() and not tensor.is_floating_point():  # (a quantized model's
            # integer tensors are expected as such: their skeleton holds integers there)
            raise CheckpointError(f"{weights}: tensor {name!r} holds {str(tensor.dtype).removeprefix('torch.')} "
                                  "values where weights are floating-point; the file is corrupt or not a model's "
                                  "weights (a quantized model also needs its 'quantization' record in config.json)")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except QuantizationError as e:  # a quantized layer's stored tensors refused (quantize.check_stored)
        raise CheckpointError(f"{weights}: {e}") from None
    if config.tie_embeddings and config.lm_head and not quantization:
        model.lm_head.weight = model.tok_emb.weight  # assign=True replaced the tied Parameter
    model.build_rope_tables()  # non-persistent buffers were created on the meta device
    return model


def check_sizes_against_tensors(config: ModelConfig, state: dict[str, torch.Tensor], weights: str,
                                described_by: str) -> None:
    """The config's sizes agree with the tensors actually present, checked before anything is built: a
    model file's config.json saying `n_layers: 1e9` (or a huge vocabulary or width) would otherwise make
    the build run for hours while memory grows, even on the meta device."""
    for prefix, field in (("blocks.", "n_layers"), ("encoder.blocks.", "n_encoder_layers")):  # (an encoder-decoder's)
        want = getattr(config, field)
        layers = {name[len(prefix):].split(".")[0] for name in state if name.startswith(prefix)}
        layers = {int(i) for i in layers if i.isdigit()}
        if len(layers) == want:
            continue
        if want > len(layers):
            first, last = len(layers), want - 1
            named = f"missing tensors {prefix}{first}.*" + (f" ... {prefix}{last}.*" if last > first else "")
        else:
            named = f"tensors not in this architecture {prefix}{want}.*"
        raise CheckpointError(f"{weights}: {named}: {described_by} says {field} {want:,} but the "
                              f"weights hold {len(layers)} layers; the config and the weights come from different models")
    embedding = state.get("tok_emb.weight")
    if embedding is not None and embedding.dim() == 2 and tuple(embedding.shape) != (config.vocab_size, config.d_model):
        raise CheckpointError(f"{described_by} says vocab_size {config.vocab_size:,} and d_model {config.d_model:,} "
                              f"but {weights} has a token embedding of shape {tuple(embedding.shape)}; the config "
                              "and the weights come from different models")


def load_quantization(directory: str | Path) -> dict | None:
    """The `quantization` record of a checkpoint's config.json (None for a floating-point one)."""
    path = Path(directory) / CONFIG
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get(QUANTIZATION)
    except (OSError, ValueError, AttributeError):  # load_config names what is wrong with the file
        return None
    if record is not None and not isinstance(record, dict):
        raise CheckpointError(f"{path}: 'quantization' must be an object like {{\"bits\": 8}}, not {record!r}")
    return record


def load_tokenizer(directory: str | Path) -> Tokenizer:
    directory = Path(directory)
    if not (directory / TOKENIZER).exists():
        raise CheckpointError(f"{directory / TOKENIZER}: missing; copy the tokenizer used to train this model "
                              "into the checkpoint directory")
    return Tokenizer.load(directory)


# generation_config.json keys llmkit reads (Hugging Face's names): the stop and start tokens.
GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def load_generation_config(directory: str | Path, error: type[Exception] = CheckpointError) -> dict:
    """A model folder's generation_config.json ({} when there is none), the token ids llmkit reads from it
    checked for type: a model file is data from anywhere."""
    path = Path(directory) / GENERATION
    if not path.exists():
        return {}
    config = load_json(path, error)
    for key in GENERATION_IDS:
        value = config.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            what = "a token id or a list of them" if key == "eos_token_id" else "a token id"
            raise error(f"{path}: {key} must be {what}, not {value!r}; fix or delete the file")
    return config


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
