"""The weights and KV cache a CPU decode step reads, in 2 MB pages (Linux transparent huge pages).

Why: a decode step streams every weight from memory once, and attention streams every running row's
keys and values. In 4 KB pages the CPU's hardware prefetchers stop at each page boundary and every
4 KB costs a TLB miss, so a stream runs well below the memory's speed. Measured on the 2-core AMD EPYC
(AVX-512 VNNI, Zen 4; BENCHMARKS.md, 2026-12-06):
- reading a 1 GiB fp32 tensor with torch.sum on 2 threads: 37.5-38.2 GB/s in 4 KB pages, 60.3-61.7 in 2 MB;
- SmolLM2-135M decode, compiled, in one process, alternating rounds (benchmarks/huge_pages_ab.py, both
  load orders, tokens identical): int8 batch 1 1.14-1.38x, int4 batch 1 1.17-1.21x, batch 32 1.04-1.06x.

PyTorch's CPU allocator asks for huge pages only with THP_MEM_ALLOC_ENABLE=1 set before it starts and
only for allocations of 2 MB or more, and a small model's layers are a few hundred KB each. So the
engine places them itself: `place_in_huge_pages(model)` copies a model's CPU parameters and buffers into
one anonymous private mapping advised MADV_HUGEPAGE, each tensor over its own slice with its own storage
(`torch.frombuffer`), so that nothing looks shared to safetensors and tied weights stay tied;
Parameters keep their identity (`p.data` is replaced), so optimizers and modules that hold them see the
move. `zeros(shape, dtype)` allocates a KV cache store the same way, every page touched at once as
torch.zeros does (the memory a cache takes does not change; a page fault during a step would).

Where the kernel offers no huge pages (not Linux, `transparent_hugepage` set to never) or
LLMKIT_HUGE_PAGES=0 is set, both leave memory as PyTorch allocates it.
"""

from __future__ import annotations

import logging
import mmap
import os
import weakref

import torch
import torch.nn as nn

HUGE_PAGE = 2 << 20  # bytes: the x86-64 transparent huge page
ALIGNMENT = 64  # bytes between tensors in a mapping: a cache line

logger = logging.getLogger(__name__)

# (first byte, end, the mapping) of every mapping made here: a tensor inside one is already placed
_mappings: list[tuple[int, int, weakref.ref]] = []
_refused: list[OSError] = []  # mappings the system refused (logged once)


def available() -> bool:
    """Whether this process can ask for transparent huge pages: Linux with THP not set to never, and
    LLMKIT_HUGE_PAGES not "0" (read at each call, so a benchmark can compare both in one process)."""
    if os.environ.get("LLMKIT_HUGE_PAGES", "1") == "0" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def _mapping(nbytes: int) -> tuple[mmap.mmap, int] | None:
    """A zeroed mapping advised MADV_HUGEPAGE with room for nbytes from the returned offset, which is on
    a huge page boundary (a huge page covers only an aligned 2 MB of a mapping). Tensors made over it
    with torch.frombuffer keep it alive. None where the system refuses the mapping or the advice (out of
    memory, a kernel built without THP): the caller allocates as PyTorch does, and says so once."""
    try:
        memory = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        memory.madvise(mmap.MADV_HUGEPAGE)
    except OSError as error:
        if not _refused:
            logger.warning("huge pages: %s; keeping PyTorch's own allocation (4 KB pages: slower decode)", error)
        _refused.append(error)
        return None
    first = torch.frombuffer(memory, dtype=torch.uint8, count=1).data_ptr()
    _mappings[:] = [m for m in _mappings if m[2]() is not None]
    _mappings.append((first, first + len(memory), weakref.ref(memory)))
    return memory, -first % HUGE_PAGE


def _over(memory: mmap.mmap, offset: int, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor over the mapping's bytes from offset, with a storage of its own"""
    count = _nbytes(shape, dtype)
    return torch.frombuffer(memory, dtype=torch.uint8, count=count, offset=offset).view(dtype).view(shape)


def _nbytes(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def in_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether the tensor's memory is in a mapping made here."""
    address = tensor.data_ptr()
    return any(first <= address < end and ref() is not None for first, end, ref in _mappings)


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """torch.zeros(shape, dtype=dtype) on the CPU, in huge pages where `available()` (and the tensor
    is at least a huge page), every page touched."""
    nbytes = _nbytes(shape, dtype)
    if nbytes < HUGE_PAGE or not available():
        return torch.zeros(shape, dtype=dtype)
    mapped = _mapping(nbytes)
    if mapped is None:
        return torch.zeros(shape, dtype=dtype)
    memory, start = mapped
    return _over(memory, start, shape, dtype).zero_()  # zero_ touches every page now, as torch.zeros' memset


def _movable(tensor: torch.Tensor | None) -> bool:
    """A plain dense CPU tensor that owns its whole storage (a view into a larger one stays put, so that
    whatever shares that storage keeps sharing it), not placed already."""
    return (tensor is not None and type(tensor.data) is torch.Tensor and tensor.device.type == "cpu"
            and tensor.layout == torch.strided and tensor.is_contiguous() and tensor.numel() > 0
            and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.nbytes
            and not in_huge_pages(tensor))


@torch.no_grad()
def place_in_huge_pages(model: nn.Module, min_bytes: int = HUGE_PAGE) -> int:
    """Copy the model's CPU parameters and buffers into one huge-page mapping, in place (see the module
    docstring). Tensors sharing a storage (tied weights) share the copy. Does nothing where huge pages
    are not `available()` or the tensors to move take less than min_bytes. Returns the bytes moved.
    Each tensor is swapped in as soon as it is copied, so that its old memory can go at once: the
    process never holds two copies of the whole model."""
    if not available():
        return 0
    # by storage address (tied tensors once): the tensor, and where it is held (module, name, a parameter?)
    holders: dict[int, tuple[torch.Tensor, list[tuple[nn.Module, str, bool]]]] = {}
    for module in model.modules():
        for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for name, tensor in table.items():
                if _movable(tensor):
                    holders.setdefault(tensor.data_ptr(), (tensor, []))[1].append((module, name, is_parameter))
    sizes = {address: -(-tensor.nbytes // ALIGNMENT) * ALIGNMENT for address, (tensor, _) in holders.items()}
    total = sum(sizes.values())
    if total == 0 or total < min_bytes:
        return 0
    mapped = _mapping(total)
    if mapped is None:
        return 0
    memory, offset = mapped
    for address in list(holders):
        tensor, places = holders.pop(address)
        # an inference tensor (made under torch.inference_mode) gets one: a Parameter's data keeps its kind
        with torch.inference_mode(tensor.is_inference()):
            placed = _over(memory, offset, tensor.shape, tensor.dtype).copy_(tensor)
        offset += sizes[address]
        for module, name, is_parameter in places:
            if is_parameter:
                module._parameters[name].data = placed
            else:
                module._buffers[name] = placed
        del tensor, places
    return total
