"""Pretraining: next-token prediction with cross-entropy on token shards, through the one Trainer (or,
with objective=mlm, masked language modelling of an encoder: llmkit/train/mlm.py; with objective=span,
T5's span corruption of an encoder-decoder: llmkit/train/span.py).

`data: shakespeare` needs nothing prepared: the corpus is fetched, a BPE tokenizer of `vocab_size`
is trained on the training plays, and both splits are tokenized into shards, all cached under
$LLMKIT_CACHE/data/ so the second run starts at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from llmkit.config import ModelConfig
from llmkit.convert import read_tokenizer
from llmkit.data.corpus import cache_root, fetch_shakespeare
from llmkit.data.clean.mixing import data_source_for_step
from llmkit.data.prepare import prepare, read_manifest
from llmkit.device import resolve_device
from llmkit.errors import ConfigError
from llmkit.eval.bpb import evaluate_shards
from llmkit.infer import Engine, SamplingParams
from llmkit.model import Transformer
from llmkit.tokenizer import Tokenizer, read_text_files
from llmkit.train.config import TrainConfig
from llmkit.train.data import TokenShards
from llmkit.train.trainer import Trainer, TrainResult, to_device, check_training_out


def builtin_shards(vocab_size: int, tokenizer: str | None = None) -> tuple[Path, Path]:
    """Token shards of the built-in Shakespeare corpus (train, val), made once and cached: tokenized with
    `tokenizer` (a directory, tokenizer file or .gguf), or with a BPE of vocab_size trained on the training plays."""
    base = cache_root() / "data"
    corpus = fetch_shakespeare(base / "shakespeare")
    if tokenizer:  # keyed on the tokenizer's content: another (or retrained) tokenizer gets its own shards
        given = read_tokenizer(tokenizer)  # a directory, a file or a .gguf alike
        tag = "tok-" + hashlib.sha256(given.backend.to_str().encode()).hexdigest()[:16]
    else:
        tag = f"bpe{vocab_size}"
    root = base / f"shakespeare-{tag}"
    train_dir, val_dir = root / "train", root / "val"
    if (train_dir / "manifest.json").exists() and (val_dir / "manifest.json").exists():
        return train_dir, val_dir
    tokenizer_dir = root / "tokenizer"
    if tokenizer:
        given.save(tokenizer_dir)  # as tokenizer.json, which `prepare` reads (a .gguf file's tokenizer too)
    elif not (tokenizer_dir / "tokenizer.json").exists():
        files = sorted((corpus / "train").glob("*.txt"))
        Tokenizer.train(read_text_files(files), vocab_size=vocab_size).save(tokenizer_dir)
    prepare([corpus / "train"], tokenizer_dir, train_dir)
    prepare([corpus / "val"], tokenizer_dir, val_dir)
    return train_dir, val_dir


def resolve_data(config: TrainConfig, is_main: bool) -> tuple[TokenShards, TokenShards | None]:
    if config.data == "shakespeare":
        if is_main:
            builtin_shards(config.vocab_size, config.tokenizer)
        if dist.is_initialized():
            dist.barrier()  # the other ranks wait for rank 0 to build the cache
        train_dir, val_dir = builtin_shards(config.vocab_size, config.tokenizer)
        if config.val_data:
            val_dir = Path(config.val_data)
    else:
        if config.tokenizer:  # said rather than ignored: token shards carry the tokenizer they were made with
            raise ConfigError(f"tokenizer={config.tokenizer} applies to data=shakespeare only; {config.data} holds "
                              "token shards made with their own tokenizer (prepare them with --tokenizer to change it)")
        train_dir, val_dir = Path(config.data), Path(config.val_data) if config.val_data else None
    train = TokenShards(train_dir)
    val = TokenShards(val_dir) if val_dir else None
    if val is not None and read_manifest(val_dir)["tokenizer_sha256"] != train.manifest["tokenizer_sha256"]:
        raise ConfigError(f"{val_dir} was tokenized with a different tokenizer than {train_dir}; "
                          "prepare both with the same --tokenizer")
    return train, val


# Bytes per parameter a training run holds on its device: fp32 weights (4) + gradients (4) + AdamW's two
# moments (8). Activations come on top, so a shape refused by this estimate could never have trained.
TRAINING_BYTES_PER_PARAM = 16


def check_model_fits(cfg: ModelConfig, device: torch.device, what: str = "the model",
                     vocab_from_data: bool = False) -> None:
    """A new model's shape (a preset with the command line's model.FIELD=value overrides) against the memory
    of the machine, before anything is allocated: `model.n_layers=1000000000` is one clear line, not an
    out-of-memory kill or a build that runs for hours. vocab_from_data: cfg's vocabulary is a lower bound
    (the data's is not known yet) and is left out of the message."""
    from llmkit.device import available_memory_bytes

    params = cfg.num_params()
    need = params * TRAINING_BYTES_PER_PARAM
    have = available_memory_bytes(device)
    if device.type != "cpu":  # built on the CPU in fp32 before it moves to the device
        have = min(have, available_memory_bytes(torch.device("cpu")) * TRAINING_BYTES_PER_PARAM // 4)
    if need > have:
        shape = f"n_layers {cfg.n_layers:,}, d_model {cfg.d_model:,}, d_ff {cfg.d_ff:,}"
        shape += "" if vocab_from_data else f", vocab_size {cfg.vocab_size:,}"
        raise ConfigError(f"{what} ({shape}) has {'at least ' if vocab_from_data else ''}{params:.3g} parameters: "
                          f"training it needs {_size(need)} or more ({TRAINING_BYTES_PER_PARAM} bytes per "
                          f"parameter for weights, gradients and AdamW's moments), but {device.type} has "
                          f"{_size(have)} available; choose a smaller shape (model.n_layers, model.d_model, ...)")


def saved_activation_bytes(model: torch.nn.Module, objective: Callable, batch, autocast: Callable) -> int:
    """Bytes of the tensors autograd keeps for the backward of one training forward on `batch`, less the
    parameters themselves (counted per parameter elsewhere): activations, dropout masks, autocast's copies.
    The random stream is left where it was: the probe's dropout must not shift the run's."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a subclass): not ours to count
            return tensor
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()  # (alive with the graph, so no address is reused)
        return tensor

    where = next(model.parameters()).device
    devices = [where.index or 0] if where.type == "cuda" else []  # the CPU's stream is always kept
    with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss, _ = objective(model, batch)
    del loss
    return sum(kept.values())


# What a torch.compile'd step keeps of the eager forward's saved tensors, at least: measured 0.72-0.91 (tiny and
# gpt2-cpu shapes at seq_len 512, fp32 and bf16 autocast, with and without dropout; 2026-12-07); half, a margin
# below the least of those (the eager measure refused compiled runs that fit).
COMPILED_SAVED_FRACTION = 0.5


def check_batch_fits(model: torch.nn.Module, config: TrainConfig, probe_batch: Callable, objective: Callable,
                     device: torch.device, autocast: Callable) -> None:
    """micro_batch x seq_len against the device's memory before the first step: `micro_batch=100000` (a typo)
    was an out-of-memory kill of the whole process (on a machine shared with others, the kernel may pick any of
    them). What one sequence adds is measured, not guessed: the tensors autograd keeps for 2 sequences less
    those for 1 (what does not grow with the batch, such as autocast's weight copies, cancels). That is a lower
    bound on the step's peak, so a run refused here could never have trained."""
    from llmkit.device import available_memory_bytes

    if config.micro_batch <= 2:  # the probe holds 2 sequences' activations: it could only refuse a batch it has just
        return  # held, and at micro_batch 1 it raised the run's peak (resident 405 -> 506 MiB, tiny at seq_len 4096)
    one, two = (saved_activation_bytes(model, objective, probe_batch(rows), autocast) for rows in (1, 2))
    per_sequence = max(two - one, 0)
    if config.compile:  # the compiled step recomputes cheap ops in its backward instead of keeping their outputs
        per_sequence = int(per_sequence * COMPILED_SAVED_FRACTION)
    need = per_sequence * config.micro_batch
    if device.type == "cpu":  # torchrun's ranks on one machine share its memory, each holding its own batch
        need *= int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    have = available_memory_bytes(device)
    if need > have:
        raise ConfigError(f"micro_batch {config.micro_batch:,} x seq_len {config.seq_len:,}: the activations one "
                          f"forward/backward keeps come to {_size(need)} ({_size(per_sequence)} a sequence, "
                          f"{'at least, compiled' if config.compile else 'measured'}), "
                          f"but {device.type} has {_size(have)} available; lower micro_batch (batch_tokens keeps the "
                          "tokens per step: the Trainer accumulates micro-batches)")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def padded_vocab_size(vocab_size: int) -> int:
    """The embedding's rows for a tokenizer of vocab_size: rounded up to a multiple of 64 (faster matmuls;
    nanoGPT's 50304 trick)."""
    return -(-vocab_size // 64) * 64


def build_model(config: TrainConfig, train: TokenShards, tokenizer: Tokenizer,
                device: torch.device | None = None) -> Transformer:
    """A new model of the preset's shape, or init_from's weights; `tokenizer` is the one the shards used;
    `device` is where it will train (for the memory check; default the config's)."""
    vocab_size = max(train.manifest["vocab_size"], tokenizer.vocab_size)  # (mlm adds a mask token)
    if config.init_from:
        from llmkit.checkpoint import load_model
        from llmkit.convert import resolve_model

        directory = resolve_model(config.init_from)
        model = load_model(directory)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"{config.init_from}: vocabulary of {model.config.vocab_size} is smaller than the "
                              f"data's tokenizer ({vocab_size}); use the model's own tokenizer")
        if model.config.max_seq_len < config.seq_len:  # (was a traceback at the first step)
            raise ConfigError(f"seq_len {config.seq_len} is longer than the context of {config.init_from} "
                              f"({model.config.max_seq_len} tokens); lower seq_len")
        if (directory / "tokenizer.json").is_file():
            if Tokenizer.load(directory).backend.get_vocab() != tokenizer.backend.get_vocab():
                raise ConfigError(f"{train.directory} was tokenized with another tokenizer than {config.init_from}'s; "
                                  f"prepare the shards with `--tokenizer {directory}`")
        return model
    padded = padded_vocab_size(vocab_size)
    cfg = ModelConfig.preset(config.model, **{"vocab_size": padded, **config.model_overrides})
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
    if cfg.max_seq_len < config.seq_len:
        raise ConfigError(f"seq_len {config.seq_len} is longer than the model's max_seq_len {cfg.max_seq_len}; "
                          f"set model.max_seq_len={config.seq_len}")
    check_model_fits(cfg, device or resolve_device(config.device), f"model {config.model}")
    torch.manual_seed(config.seed)
    model = Transformer(cfg)
    preset = ModelConfig.preset(config.model, **config.model_overrides)
    if preset.vocab_size != cfg.vocab_size and (not dist.is_initialized() or dist.get_rank() == 0):
        # Said aloud: e.g. gpt2-124m on the built-in 8192-token Shakespeare tokenizer is a 92M model.
        preset_params = preset.num_params()
        print(f"model {config.model}: vocab_size {cfg.vocab_size} from the data's tokenizer ({vocab_size} tokens), "
              f"not the preset's {preset.vocab_size}: {model.num_params() / 1e6:.1f}M parameters instead of "
              f"{preset_params / 1e6:.1f}M")
    return model


def starting_directory(config: TrainConfig) -> Path | None:
    if not config.init_from:
        return None
    from llmkit.convert import resolve_model

    return resolve_model(config.init_from)


def pretrain(config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    from llmkit.train.distributed import init_distributed, shutdown

    device = resolve_device(config.device)
    if not config.init_from:  # a shape that cannot fit stops before the data is fetched or tokenized (the
        # vocabulary comes from the data: a lower bound for now, the exact check in build_model)
        check_model_fits(ModelConfig.preset(config.model, **{"vocab_size": 1, **config.model_overrides}), device,
                         f"model {config.model}", vocab_from_data="vocab_size" not in config.model_overrides)
    check_training_out(out)  # a folder that cannot be written, or a user's, stops the run before the data is read
    info = init_distributed(device.type)
    train, val = resolve_data(config, info.is_main)
    tokenizer = Tokenizer.load(train.directory)
    masker = corruptor = None
    if config.objective == "mlm":
        from llmkit.train.mlm import Masker, with_mask_token

        tokenizer = with_mask_token(tokenizer)
        masker = Masker(tokenizer, config.mlm_probability)
    elif config.objective == "span":
        from llmkit.train.span import SpanCorruptor, span_objective, with_sentinels

        tokenizer = with_sentinels(tokenizer)
    model = build_model(config, train, tokenizer, device)
    kinds = {"next_token": "a decoder", "mlm": "an encoder", "span": "an encoder-decoder"}
    have = "an encoder-decoder" if model.config.n_encoder_layers else "a decoder" if model.config.causal else "an encoder"
    if kinds[config.objective] != have:
        need = {"next_token": "a decoder (causal: true)", "mlm": "an encoder (causal: false)",
                "span": "an encoder-decoder (n_encoder_layers > 0)"}[config.objective]
        raise ConfigError(f"objective={config.objective} needs {need}; model {config.init_from or config.model} is "
                          f"{have} (objective=mlm for an encoder such as model=bert-cpu, span for an encoder-decoder "
                          "such as model=t5-cpu, next_token for a decoder)")
    if config.objective == "span":
        corruptor = SpanCorruptor(tokenizer, model.config.decoder_start_token, config.span_density,
                                  config.span_mean_length)

    anneal = TokenShards(config.anneal_data) if config.anneal_data else None
    if anneal is not None and anneal.manifest["tokenizer_sha256"] != train.manifest["tokenizer_sha256"]:
        raise ConfigError(f"{config.anneal_data} was tokenized with a different tokenizer than {train.directory}")

    def make_batch(step: int, micro: int, rows: int):
        # The last anneal_fraction of the steps draw from the high-quality subset (annealing, as in
        # Llama 3 and OLMo 2), decided by the step alone so that resume stays exact.
        source = train
        if anneal is not None and data_source_for_step(step, trainer.total_steps, config.anneal_fraction) == "anneal":
            source = anneal
        batch = source.random_batch(rows, config.seq_len, config.seed, step, micro)
        if corruptor is not None:
            return corruptor.batch(batch[0], config.seed, step, micro)
        return batch if masker is None else masker.batch(batch[0], config.seed, step, micro)

    def batch_fn(step: int, micro: int):
        return make_batch(step, micro, config.micro_batch)

    def evaluate(runner) -> dict:
        device = next(runner.parameters()).device
        if corruptor is not None:
            from llmkit.train.span import evaluate_span

            return evaluate_span(runner, val, corruptor, config.seq_len, config.micro_batch, device, trainer.autocast(),
                                 config.eval_tokens)
        if masker is not None:
            from llmkit.train.mlm import evaluate_mlm

            return evaluate_mlm(runner, val, masker, config.seq_len, config.micro_batch, device, trainer.autocast(),
                                config.eval_tokens)
        result = evaluate_shards(runner, val, config.seq_len, config.micro_batch * 4, device, trainer.autocast(),
                                 max_tokens=config.eval_tokens)
        return {"val_loss": result.loss, "val_bpb": result.bpb}

    def sample(model: Transformer, step: int) -> str:
        was_training = model.training
        model.eval()
        ids = Engine(model, tokenizer.stop_token_ids).generate(
            [tokenizer.bos_id], SamplingParams(max_new_tokens=config.sample_tokens, temperature=0.8, top_k=50, seed=step))
        model.train(was_training)
        return tokenizer.decode(ids, skip_special_tokens=True)

    objective = {"objective": span_objective} if corruptor is not None else {}
    trainer = Trainer(model, config, out, batch_fn, config.micro_batch * config.seq_len,
                      evaluate=evaluate if val is not None else None, tokenizer=tokenizer,
                      sample=sample if masker is None and corruptor is None else None, **objective,
                      starting_models={"init_from": starting_directory(config)})
    model.to(trainer.device)  # (where fit puts it) measured there, with the run's objective and autocast
    check_batch_fits(model, config, lambda rows: to_device(make_batch(0, 0, rows), trainer.device), trainer.objective,
                     trainer.device, trainer.autocast)
    result = trainer.fit(resume=resume)
    shutdown()  # on success only: after a failure the other ranks may never reach a barrier
    return result
