"""Read a GGUF file's metadata and tensor table in one pass over a memory map.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every metadata array, and
SmolLM2's 49,152 token strings and 48,900 merges make that 5.7 s on an idle 2-core machine before a
single tensor is touched (`llmkit tokenize --tokenizer model.gguf` paid it on every call). Walking the
same layout with `struct` takes a fraction of a second. The `gguf` package still supplies the format's
constants (value and tensor types, block sizes) and dequantizes the tensors.

Layout (ggml's docs/gguf.md, version 2 and 3, little-endian): magic "GGUF", version u32, tensor count
u64, metadata count u64; each metadata entry is a string key, a u32 value type and the value (arrays: u32
element type, u64 count, elements); each tensor entry is a string name, u32 dimension count, u64
dimensions (innermost first), u32 ggml type, u64 offset into the data section, which starts at the next
multiple of `general.alignment` (default 32). Strings are a u64 byte length and UTF-8 bytes.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import ConversionError

# GGUF scalar value types (gguf.GGUFValueType) -> struct format
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # as ggml lists it: innermost dimension first
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # the raw bytes (uint8), a view of the memory map


@dataclass
class GGUFFile:
    metadata: dict
    tensors: list[GGUFTensor]

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)


class _Cursor:
    def __init__(self, buffer, path: Path):
        self.buffer, self.offset, self.path = buffer, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise ValueError(f"the file ends at byte {len(self.buffer)} inside its header")
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def count(self, at_least_bytes_each: int) -> int:
        """A length field, refused when the rest of the file could not hold that many items: a corrupt
        or hostile count must not turn into a billion-iteration loop or allocation."""
        n = self.take("<Q")
        if n * at_least_bytes_each > len(self.buffer) - self.offset:
            raise ValueError(f"a length of {n} at byte {self.offset - 8} runs past the end of the file")
        return n

    def string(self) -> str:
        n = self.count(1)
        raw = bytes(self.buffer[self.offset:self.offset + n])
        self.offset += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            element = self.take("<I")
            n = self.count(1)
            if element in SCALARS:  # one numpy read instead of n struct calls
                dtype = np.dtype(SCALARS[element])
                if n * dtype.itemsize > len(self.buffer) - self.offset:
                    raise ValueError(f"an array of {n} values at byte {self.offset} runs past the end of the file")
                values = np.frombuffer(self.buffer, dtype, n, self.offset)
                self.offset += n * dtype.itemsize
                return values.tolist()
            return [self.value(element) for _ in range(n)]
        raise ValueError(f"unknown metadata value type {kind} at byte {self.offset - 4}")


def _tensor_bytes(buffer, name: str, shape: tuple[int, ...], kind, start: int, offset: int,
                  alignment: int) -> np.ndarray:
    """The raw bytes of one tensor, its table entry checked as ggml's gguf.c checks it: a zero, huge or
    partial-block dimension made a numpy reshape fail (a traceback) when the tensor was dequantized, and an
    offset off the alignment was read as other bytes without complaint."""
    import gguf

    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    if not 1 <= len(shape) <= 4 or any(n < 1 for n in shape):  # GGML_MAX_DIMS = 4
        raise ValueError(f"tensor {name!r} has shape {shape}; ggml tensors have 1 to 4 dimensions of at least 1")
    if shape[0] % block:
        raise ValueError(f"tensor {name!r} has rows of {shape[0]} values, not a multiple of its "
                         f"{kind.name} blocks of {block}")
    if offset % alignment:
        raise ValueError(f"tensor {name!r} starts at offset {offset}, not a multiple of the alignment {alignment}")
    size = math.prod(shape) // block * block_bytes  # Python integers: a huge shape cannot wrap around
    if start + offset + size > len(buffer):
        raise ValueError(f"tensor {name!r} runs past the end of the file")
    return np.frombuffer(buffer, np.uint8, size, start + offset)


def read_gguf_file(path: Path, *, tensors: bool = True) -> GGUFFile:
    """The metadata (plain Python values) and, when asked, the tensor table of a GGUF file."""
    import gguf

    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # an empty file cannot be mapped
        raise ConversionError(f"{path}: not a readable GGUF file ({e})") from None
    cursor = _Cursor(buffer, path)
    try:
        if bytes(buffer[:4]) != b"GGUF":
            raise ValueError("it does not start with the GGUF magic bytes")
        cursor.offset = 4
        version = cursor.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (llmkit reads versions 2 and 3)")
        n_tensors, n_metadata = cursor.take("<Q"), cursor.take("<Q")
        metadata = {}
        for _ in range(n_metadata):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.take("<I"))
        table = []
        if tensors:
            for _ in range(n_tensors):
                name = cursor.string()
                n_dims = cursor.take("<I")
                shape = tuple(cursor.take("<Q") for _ in range(n_dims))
                table.append((name, shape, gguf.GGMLQuantizationType(cursor.take("<I")), cursor.take("<Q")))
            alignment = metadata.get("general.alignment", 32)
            # ggml's gguf.c refuses the same: an alignment of 0 divided by zero below, a string raised TypeError
            if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 \
                    or alignment & (alignment - 1):
                raise ValueError(f"general.alignment must be a power of two, not {alignment!r}")
            start = -(-cursor.offset // alignment) * alignment
            out, names = [], set()
            for name, shape, kind, offset in table:
                out.append(GGUFTensor(name, shape, kind, _tensor_bytes(buffer, name, shape, kind, start, offset,
                                                                       alignment)))
                if name in names:  # one would silently replace the other
                    raise ValueError(f"tensor {name!r} appears twice")
                names.add(name)
            table = out
    except (ValueError, struct.error, OverflowError, KeyError) as e:
        raise ConversionError(f"{path}: not a readable GGUF file ({e})") from None
    return GGUFFile(metadata, table)
