"""Atomic output folders and a streaming sharded-safetensors writer.

Shapes and dtypes of the output are known before any data is computed, so every shard's header is
written up front and each tensor is later written at its final offset (`os.pwrite`): no shard is held in
memory, tensors may arrive in any order, and memory stays bounded by the tensors in flight.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from spear_mm.errors import SpearError
from spear_mm.io.checkpoint import DTYPE_NAMES

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def parse_size(size: str | int) -> int:
    """'5GB', '500M', '2GiB' or a byte count -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", size)
    if not m or m.group(2).upper() not in _UNITS:
        raise SpearError(f"size '{size}' is not understood; write e.g. 5GB, 500MB or 2GiB.")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Slot:
    file: Path
    offset: int
    nbytes: int
    dtype: torch.dtype | None = None  # what the slot holds: chunks of another float dtype are cast to it


class ShardedWriter:
    """Pre-laid-out safetensors shards; `write(name, tensor)` puts one tensor at its place."""

    def __init__(self, out_dir: Path, layout: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_size: int):
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in layout:
            nbytes = dtype.itemsize * math.prod(shape)
            if shards[-1] and size + nbytes > max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append((name, dtype, shape, nbytes))
            size += nbytes
        n = len(shards)
        self.slots: dict[str, Slot] = {}
        self.files: list[Path] = []
        self._fds: dict[Path, int] = {}
        self.total_size = 0
        for i, shard in enumerate(shards, 1):
            file = out_dir / ("model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors")
            header: dict = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, dtype, shape, nbytes in shard:
                header[name] = {
                    "dtype": DTYPE_NAMES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            base = 8 + len(raw)
            for name, dtype, _, nbytes in shard:
                begin = header[name]["data_offsets"][0]
                self.slots[name] = Slot(file, base + begin, nbytes, dtype)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides (0644 under 022)
            os.write(fd, len(raw).to_bytes(8, "little") + raw)
            _reserve(fd, base + offset)
            self._fds[file] = fd
            self.files.append(file)
            self.total_size += offset
        self._bytes: dict[str, int] = {}  # bytes written per tensor (chunks add up)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Write one whole tensor at its slot; returns the byte count. Thread-safe per distinct name."""
        slot = self.slots[name]
        if tensor.numel() * (slot.dtype or tensor.dtype).itemsize != slot.nbytes:
            raise SpearError(f"internal: tensor '{name}' does not match the size of its slot.")
        return self.write_range(name, 0, tensor)

    def write_range(self, name: str, start: int, chunk: torch.Tensor) -> int:
        """Write elements [start, start + chunk.numel()) of a tensor (chunks of large tensors stream through)."""
        slot = self.slots[name]
        if slot.dtype is not None and chunk.dtype != slot.dtype and chunk.dtype.is_floating_point:
            chunk = chunk.to(slot.dtype)  # --out-dtype: the merge computes in float32, kept tensors are cast here
        if chunk.dtype == torch.float16:
            _refuse_overflow(name, chunk)
        data = chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        at = start * chunk.element_size()
        if at + data.nbytes > slot.nbytes:
            raise SpearError(f"internal: chunk of '{name}' at element {start} overruns its slot.")
        view, done, fd = memoryview(data), 0, self._fds[slot.file]
        while done < data.nbytes:
            done += os.pwrite(fd, view[done:], slot.offset + at + done)
        self._bytes[name] = self._bytes.get(name, 0) + data.nbytes
        return data.nbytes

    def close(self) -> None:
        """Check completeness, flush, close, and write the index when there are several shards."""
        missing = {n for n, slot in self.slots.items() if self._bytes.get(n, 0) != slot.nbytes}
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if missing:
            raise SpearError(f"internal: {len(missing)} tensor(s) were never written, e.g. {sorted(missing)[0]}.")
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: slot.file.name for name, slot in self.slots.items()},
            }
            (self.files[0].parent / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _refuse_overflow(name: str, chunk: torch.Tensor) -> None:
    """float16 holds at most ±65504: larger weights become ±inf (inputs are checked finite, so an inf here is an
    overflow of the narrowing cast, e.g. --out-dtype fp16 of a bf16/fp32 model)."""
    if not torch.isfinite(chunk).all():
        raise SpearError(
            f"tensor '{name}': values beyond ±65504 do not fit in float16 and would be written as ±inf. Write "
            "this model as bf16 or fp32 (--out-dtype bf16 / fp32, or leave --out-dtype unset)."
        )


def _reserve(fd: int, size: int) -> None:
    """Give the file its final size: allocated blocks where the file system supports it (measured faster to
    fill than a sparse file), else a sparse file."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (OSError, AttributeError):
        os.ftruncate(fd, size)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
