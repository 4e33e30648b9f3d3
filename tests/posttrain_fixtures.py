"""Shared fixtures of the post-training tests: a tiny base checkpoint with a Shakespeare tokenizer
(chat special tokens included) and the built-in task's files at a small size."""

import pytest
import torch

from conftest import SHAKESPEARE


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, shakespeare_tokenizer):
    """A randomly initialised tiny Transformer saved with a 512-token BPE tokenizer."""
    from llmkit.checkpoint import save_checkpoint
    from llmkit.config import ModelConfig
    from llmkit.model import Transformer

    out = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", max_seq_len=256))
    save_checkpoint(out, model, shakespeare_tokenizer)
    return out


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    from llmkit.data.assistant_task import write_task

    return write_task(tmp_path_factory.mktemp("task"), SHAKESPEARE / "train", seed=0, train_per_kind=100,
                      heldout_per_kind=10)


def config(cls, **fields):
    base = dict(seq_len=256, micro_batch=4, dtype="fp32", threads=1, log_every=1, plot=False, warmup_steps=2)
    base.update(fields)
    return cls(**{k: str(v) if hasattr(v, "__fspath__") else v for k, v in base.items()})



def with_dropout(base, out, p: float):
    """base's weights and tokenizer saved as a model whose config has dropout p (residual and attention)."""
    import dataclasses

    from llmkit.checkpoint import load_config, load_model, load_tokenizer, save_checkpoint
    from llmkit.model import Transformer

    model = Transformer(dataclasses.replace(load_config(base), dropout=p))
    model.load_state_dict(load_model(base).state_dict())
    save_checkpoint(out, model, load_tokenizer(base))
    return out
