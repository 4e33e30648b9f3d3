"""Distributed training: the same command under `torchrun --nproc_per_node N` runs DDP, or FSDP2
(`torch.distributed.fsdp.fully_shard`, parameters sharded per Transformer block) with `fsdp=true`.
CPU processes talk over gloo, GPUs over NCCL."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llmkit.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def wrap_model(model: torch.nn.Module, info: DistInfo, fsdp: bool, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around the model; unchanged for a single process (FSDP also works with one)."""
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            raise ConfigError(f"fsdp=true needs FSDP2's fully_shard (torch >= 2.6; this is {torch.__version__}); "
                              "upgrade torch or train with DDP") from None

        if not dist.is_initialized():  # FSDP2 needs a process group, even of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def gradient_sync(wrapped: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if hasattr(wrapped, "no_sync") and not sync:
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def full_model_state(model: torch.nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (a collective under FSDP: every rank must call it)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model, optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_full_state(model, optimizers, model_state: dict, optimizer_states: list[dict], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(model, model_state, options=options)
        for optimizer, state in zip(optimizers, optimizer_states):
            set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    unwrap(model).load_state_dict(model_state, strict=False)
    for optimizer, state in zip(optimizers, optimizer_states):
        optimizer.load_state_dict(state)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformer inside DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def shutdown() -> None:
    """Leave the process group cleanly: a process that exits with gloo's threads still running can
    abort ("terminate called without an active exception") and fail the whole torchrun job."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
