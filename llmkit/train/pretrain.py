"""Pretraining: next-token prediction with cross-entropy on token shards, through the one Trainer.

`data: shakespeare` needs nothing prepared: the corpus is fetched, a BPE tokenizer of `vocab_size`
is trained on the training plays, and both splits are tokenized into shards, all cached under
$LLMKIT_CACHE/data/ so the second run starts at once.
"""

from __future__ import annotations

import hashlib
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
from llmkit.train.trainer import Trainer, TrainResult


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
        train_dir, val_dir = Path(config.data), Path(config.val_data) if config.val_data else None
    train = TokenShards(train_dir)
    val = TokenShards(val_dir) if val_dir else None
    if val is not None and read_manifest(val_dir)["tokenizer_sha256"] != train.manifest["tokenizer_sha256"]:
        raise ConfigError(f"{val_dir} was tokenized with a different tokenizer than {train_dir}; "
                          "prepare both with the same --tokenizer")
    return train, val


def build_model(config: TrainConfig, train: TokenShards, tokenizer: Tokenizer) -> Transformer:
    """A new model of the preset's shape, or init_from's weights; `tokenizer` is the one the shards used."""
    vocab_size = train.manifest["vocab_size"]
    if config.init_from:
        from llmkit.checkpoint import load_model
        from llmkit.convert import resolve_model

        directory = resolve_model(config.init_from)
        model = load_model(directory)
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"{config.init_from}: vocabulary of {model.config.vocab_size} is smaller than the "
                              f"data's tokenizer ({vocab_size}); use the model's own tokenizer")
        if (directory / "tokenizer.json").is_file():
            if Tokenizer.load(directory).backend.get_vocab() != tokenizer.backend.get_vocab():
                raise ConfigError(f"{train.directory} was tokenized with another tokenizer than {config.init_from}'s; "
                                  f"prepare the shards with `--tokenizer {directory}`")
        return model
    # The embedding is rounded up to a multiple of 64 (faster matmuls; nanoGPT's 50304 trick).
    padded = -(-vocab_size // 64) * 64
    cfg = ModelConfig.preset(config.model, **{"vocab_size": padded, **config.model_overrides})
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
    if cfg.max_seq_len < config.seq_len:
        raise ConfigError(f"seq_len {config.seq_len} is longer than the model's max_seq_len {cfg.max_seq_len}; "
                          f"set model.max_seq_len={config.seq_len}")
    torch.manual_seed(config.seed)
    model = Transformer(cfg)
    preset = ModelConfig.preset(config.model, **config.model_overrides)
    if preset.vocab_size != cfg.vocab_size and (not dist.is_initialized() or dist.get_rank() == 0):
        # Said aloud: e.g. gpt2-124m on the built-in 8192-token Shakespeare tokenizer is a 92M model.
        with torch.device("meta"):
            preset_params = Transformer(preset).num_params()
        print(f"model {config.model}: vocab_size {cfg.vocab_size} from the data's tokenizer ({vocab_size} tokens), "
              f"not the preset's {preset.vocab_size}: {model.num_params() / 1e6:.1f}M parameters instead of "
              f"{preset_params / 1e6:.1f}M")
    return model


def pretrain(config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    from llmkit.train.distributed import init_distributed, shutdown

    info = init_distributed(resolve_device(config.device).type)
    train, val = resolve_data(config, info.is_main)
    tokenizer = Tokenizer.load(train.directory)
    model = build_model(config, train, tokenizer)

    anneal = TokenShards(config.anneal_data) if config.anneal_data else None
    if anneal is not None and anneal.manifest["tokenizer_sha256"] != train.manifest["tokenizer_sha256"]:
        raise ConfigError(f"{config.anneal_data} was tokenized with a different tokenizer than {train.directory}")

    def batch_fn(step: int, micro: int):
        # The last anneal_fraction of the steps draw from the high-quality subset (annealing, as in
        # Llama 3 and OLMo 2), decided by the step alone so that resume stays exact.
        source = train
        if anneal is not None and data_source_for_step(step, trainer.total_steps, config.anneal_fraction) == "anneal":
            source = anneal
        return source.random_batch(config.micro_batch, config.seq_len, config.seed, step, micro)

    def evaluate(runner) -> dict:
        device = next(runner.parameters()).device
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

    trainer = Trainer(model, config, out, batch_fn, config.micro_batch * config.seq_len,
                      evaluate=evaluate if val is not None else None, sample=sample, tokenizer=tokenizer)
    result = trainer.fit(resume=resume)
    shutdown()  # on success only: after a failure the other ranks may never reach a barrier
    return result
