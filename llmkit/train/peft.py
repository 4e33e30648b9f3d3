"""Parameter-efficient fine-tuning: LoRA and prompt tuning, by swapping modules of the one Transformer.

LoRA (Hu et al. 2021): each targeted `nn.Linear` (by name: `attn.qkv`, `attn.out`, `mlp.gate_up`,
`mlp.down`; q, k, v and gate, up are fused Linears here, so `attn.qkv` adapts all three) becomes a
`LoRALinear`: the frozen weight W plus a trainable low-rank update, y = x W^T + (alpha / r) x A^T B^T,
with A (r x in) initialised like a Linear (Kaiming-uniform) and B (out x r) at zero, so training starts
from exactly the base model (section 4.1). Dropout acts on the adapter's input only (PEFT's layout).
`merge_lora` folds B A into W: the merged model is a plain Transformer, as fast as the base.

Prompt tuning (Lester et al. 2021): `n` trainable "soft prompt" vectors are prepended to every input;
the model is frozen. The token embedding is swapped for a `SoftPromptEmbedding` that maps n virtual
token ids (vocab_size .. vocab_size + n - 1) to those vectors, so a soft prompt is just a token prefix
(`prompt_prefix_ids(model)`) and the engine, the KV cache and the prefix cache need no change. The
model's config then counts the virtual ids in `vocab_size` (the ids it accepts); the output head keeps
the base vocabulary, so a virtual token is never generated. The soft prompt starts as the embeddings of
random vocabulary tokens, which Lester et al. (section 3.2) found better than random vectors.

On disk (the one checkpoint format, plus PEFT's file names):
    config.json, model.safetensors, tokenizer.json ...   the merged model (LoRA) or the base (prompt tuning)
    adapter_config.json                                  peft_type, r, lora_alpha, ..., base_model
    adapter_model.safetensors                            the adapter alone: lora_A / lora_B / soft prompt
`llmkit.load(DIR)` runs a merged LoRA model as it is; `load_peft(DIR)` also restores a soft prompt;
`load_adapter(base_model, DIR)` puts the adapter alone back on its base (unmerged, trainable again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors_bytes

from llmkit.atomic import atomic_write_bytes, atomic_write_text
from llmkit.checkpoint import load_model, load_state_dict, load_tokenizer, save_checkpoint
from llmkit.errors import CheckpointError, ConfigError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DEFAULT_TARGETS = ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")


class LoRALinear(nn.Linear):
    """A Linear with a frozen weight and a trainable low-rank update. The base weight and bias keep
    their names (`...qkv.weight`), so the base part of a state dict is the base model's."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init (Hu et al.; PEFT)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


class SoftPromptEmbedding(nn.Module):
    """The token embedding plus `n` trainable virtual tokens with ids base_vocab .. base_vocab + n - 1."""

    def __init__(self, base: nn.Embedding, n_tokens: int, init_ids: torch.Tensor):
        super().__init__()
        self.weight = base.weight  # the same Parameter: a tied output head stays tied to it
        self.base_vocab = base.num_embeddings
        self.num_embeddings = self.base_vocab + n_tokens
        self.embedding_dim = base.embedding_dim
        self.prompt = nn.Parameter(base.weight.detach()[init_ids].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # no branch on the ids' values (`if virtual.any()`): a compiled decode step would break its graph there
        virtual = ids >= self.base_vocab
        x = F.embedding(ids.masked_fill(virtual, 0), self.weight)
        soft = self.prompt[(ids - self.base_vocab).clamp(0, self.prompt.shape[0] - 1)]
        return torch.where(virtual[..., None], soft.to(x.dtype), x)


# --- applying and removing adapters ----------------------------------------------------------------------
def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> list[str]:
    """Freeze `model` and swap every nn.Linear whose name ends with one of `targets` for a LoRALinear.
    Returns the swapped modules' names."""
    if rank <= 0:
        raise ConfigError(f"lora_rank must be positive, not {rank}")
    freeze(model)
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, LoRALinear(module, rank, alpha, dropout))
            swapped.append(name)
    if not swapped:
        known = sorted({n.split(".", 2)[-1] for n, m in model.named_modules() if type(m) is nn.Linear})
        raise ConfigError(f"lora_targets {list(targets)} match no Linear layer; the model's are: {', '.join(known)}")
    return swapped


def apply_prompt_tuning(model: nn.Module, n_tokens: int, seed: int = 0) -> list[int]:
    """Freeze the Transformer and give it `n_tokens` trainable soft-prompt tokens; returns their ids."""
    if n_tokens <= 0:
        raise ConfigError(f"prompt_tokens must be positive, not {n_tokens}")
    transformer = _transformer(model)
    freeze(transformer)
    base = transformer.tok_emb
    generator = torch.Generator().manual_seed(seed)
    init_ids = torch.randint(0, min(base.num_embeddings, 5000), (n_tokens,), generator=generator)
    transformer.tok_emb = SoftPromptEmbedding(base, n_tokens, init_ids)
    transformer.config = dataclasses.replace(transformer.config, vocab_size=base.num_embeddings + n_tokens)
    return prompt_prefix_ids(model)


def prompt_prefix_ids(model: nn.Module) -> list[int]:
    """The virtual token ids to put before every input (empty without prompt tuning)."""
    return _transformer(model).soft_prompt_ids


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain nn.Linears back (in place; returns model)."""
    for name, module in list(lora_modules(model)):
        merged = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(module.weight.float() + module.delta_weight())
            if module.bias is not None:
                merged.bias.copy_(module.bias)
        merged.requires_grad_(module.weight.requires_grad)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, merged)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: LoRA updates switched off (the frozen reference of RLHF with LoRA)."""
    modules = [m for _, m in lora_modules(model)]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m in modules:
            m.enabled = True


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _transformer(model: nn.Module) -> nn.Module:
    return getattr(model, "transformer", model)


# --- PEFT settings shared by every post-training stage -------------------------------------------------------
def apply_peft(model: nn.Module, config) -> str:
    """Apply the PEFT method a stage config asks for (`peft: none | lora | prompt`); returns a summary."""
    method = config.peft
    if method == "none":
        return "full fine-tuning"
    target = _transformer(model)
    torch.manual_seed(config.seed)  # the adapter's initialisation is part of the run: same seed, same run
    if method == "lora":
        names = apply_lora(target, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
        summary = f"LoRA r={config.lora_rank} alpha={config.lora_alpha:g} on {len(names)} Linear layers"
    elif method == "prompt":
        apply_prompt_tuning(model, config.prompt_tokens, seed=config.seed)
        summary = f"prompt tuning with {config.prompt_tokens} soft tokens"
    else:
        raise ConfigError(f"peft must be none, lora or prompt, not {method!r}")
    # Only the Transformer is frozen: a head around it (reward, value) is new and stays trainable.
    trainable, total = trainable_parameters(model)
    return f"{summary}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"


def adapter_config(model: nn.Module, base_model: str | None) -> dict | None:
    target = _transformer(model)
    loras = list(lora_modules(target))
    prefix = prompt_prefix_ids(model)
    if not loras and not prefix:
        return None
    record: dict = {"peft_type": "LORA" if loras else "PROMPT_TUNING", "base_model": base_model}
    if loras:
        first = loras[0][1]
        record.update(r=first.rank, lora_alpha=first.alpha,
                      lora_dropout=getattr(first.lora_dropout, "p", 0.0),
                      target_modules=sorted({n.split(".", 2)[-1] for n, _ in loras}))
    if prefix:
        record["num_virtual_tokens"] = len(prefix)
    return record


def split_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(base state with LoRA merged in and the soft prompt removed, adapter tensors) from a full state
    dict of `model` (keys as model.state_dict()); `model` tells which Linears carry adapters."""
    base, adapter = {}, {}
    scalings = {name: m.scaling for name, m in lora_modules(model)}
    for key, value in state.items():
        if key.endswith((".lora_A", ".lora_B")) or key.endswith("tok_emb.prompt"):
            adapter[key] = value
        else:
            base[key] = value
    for name, scaling in scalings.items():
        weight = base[f"{name}.weight"]
        delta = (adapter[f"{name}.lora_B"].float() @ adapter[f"{name}.lora_A"].float()) * scaling
        base[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
    return base, adapter


def base_config(model: nn.Module):
    """The Transformer's config without the virtual prompt tokens (what the base checkpoint holds)."""
    transformer = _transformer(model)
    emb = transformer.tok_emb
    if isinstance(emb, SoftPromptEmbedding):
        return dataclasses.replace(transformer.config, vocab_size=emb.base_vocab)
    return transformer.config


class _Skeleton:
    """What save_checkpoint needs of a model: its (base) config."""

    def __init__(self, config):
        self.config = config


def save_peft(directory: str | Path, model: nn.Module, state: dict[str, torch.Tensor], tokenizer=None,
              base_model: str | None = None, prefix: str = "") -> None:
    """Write `state` (a full state dict of model, or of its `prefix` submodule) as the merged / base
    checkpoint plus, when the model has adapters, adapter_config.json + adapter_model.safetensors."""
    directory = Path(directory)
    target = model.get_submodule(prefix.rstrip(".")) if prefix else model
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    base, adapter = split_state(target, state)
    save_checkpoint(directory, _Skeleton(base_config(target)), tokenizer, state=base)
    record = adapter_config(target, base_model)
    if record is not None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.items()}
        atomic_write_bytes(directory / ADAPTER_WEIGHTS, save_safetensors_bytes(tensors, metadata={"format": "pt"}))
        atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(record, indent=2) + "\n")


def peft_saver(model: nn.Module, tokenizer, base_model: str | None) -> Callable[[Path, dict], None]:
    """The Trainer's save_model hook for a (possibly) PEFT-adapted Transformer."""
    def save(directory: Path, state: dict) -> None:
        save_peft(directory, model, state, tokenizer, base_model)
    return save


def soft_prompt_tokens(directory: Path) -> int:
    """The soft prompt's length of a prompt-tuned directory, else 0. Read leniently: only a soft prompt
    matters to its readers (another adapter's merged weights load as they are)."""
    try:
        record = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return (record.get("num_virtual_tokens") or 0) if isinstance(record, dict) else 0


def read_adapter_config(directory: str | Path) -> dict | None:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(record, dict) or record.get("peft_type") not in ("LORA", "PROMPT_TUNING"):
        raise CheckpointError(f"{path}: expected an object with peft_type LORA or PROMPT_TUNING")
    return record


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Put the adapter saved in `directory` on `model` (its base: the same architecture), unmerged."""
    directory = Path(directory)
    record = read_adapter_config(directory)
    if record is None:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: missing; {directory} holds no adapter "
                              "(train with peft=lora or peft=prompt)")
    if record["peft_type"] == "LORA":
        apply_lora(model, record["r"], record["lora_alpha"], record.get("lora_dropout", 0.0), record["target_modules"])
    if record.get("num_virtual_tokens"):
        apply_prompt_tuning(model, record["num_virtual_tokens"])
    path = directory / ADAPTER_WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the adapter was not saved completely")
    tensors = load_file(path)
    expected = {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B", "tok_emb.prompt"))}
    if set(tensors) != set(expected):
        raise CheckpointError(f"{path}: adapter tensors do not fit this model (expected {len(expected)}, "
                              f"found {len(tensors)}); load it on the base model it was trained on")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the model needs "
                                  f"{tuple(expected[name].shape)}; the adapter belongs to another base model")
    model.load_state_dict(tensors, strict=False)
    return model


def load_peft(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) of a post-training output directory: the merged model, with its soft prompt
    restored when it was prompt-tuned (the engine then puts `prompt_prefix_ids(model)` before every prompt)."""
    model = load_model(directory, device=device, dtype=dtype)
    record = read_adapter_config(directory)
    if record is not None and record.get("num_virtual_tokens"):
        prompt = read_soft_prompt(Path(directory), record["num_virtual_tokens"], model.config.d_model)
        apply_prompt_tuning(model, record["num_virtual_tokens"])
        model.tok_emb.prompt.data.copy_(prompt)
    return model, load_tokenizer(directory)


def read_soft_prompt(directory: Path, n_tokens, d_model: int) -> torch.Tensor:
    """The soft prompt (n_tokens, d_model) of a prompt-tuned directory, checked: a missing, corrupt or
    mis-shaped file would otherwise be a traceback or, worse, a model running on a random prompt."""
    config, path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
        raise CheckpointError(f"{config}: num_virtual_tokens must be a positive whole number, not {n_tokens!r}")
    tensors = load_state_dict(path)  # missing or unreadable: a CheckpointError naming the file
    prompt = tensors.get("tok_emb.prompt")
    if prompt is None:
        raise CheckpointError(f"{path}: no tensor 'tok_emb.prompt' (it holds {', '.join(sorted(tensors)) or 'none'}); "
                              "the soft prompt was not saved: train again with peft=prompt")
    if tuple(prompt.shape) != (n_tokens, d_model):
        raise CheckpointError(f"{path}: the soft prompt has shape {tuple(prompt.shape)}, but {config} and the "
                              f"model need ({n_tokens}, {d_model}); the adapter belongs to another model")
    if not bool(torch.isfinite(prompt).all()):
        raise CheckpointError(f"{path}: the soft prompt holds NaN or infinite values; train it again")
    return prompt
