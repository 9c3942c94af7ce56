"""Lazy, per-tensor access to Hugging Face checkpoints (safetensors, sharded or not, or weights-only .bin).

Nothing is loaded until `read(name)` is called, and then only that tensor: memory stays bounded by the
largest tensor however large the model is. Safetensors headers are parsed and validated here so that a
corrupt or truncated shard fails with a message naming the file, before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spear_mm.errors import SpearError, read_text
from spear_mm.io.hub import hub_ref, resolve_model

log = logging.getLogger(__name__)

SAFE_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in SAFE_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int = -1  # absolute byte offset of the data in a safetensors file; -1 for .bin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


# Parsed here, not with the safetensors library: we need each tensor's byte offset to pread element ranges straight
# into reused (pooled) buffers without mmapping the file, and to refuse a bad header with a message naming the file.
def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: tensor infos and the `__metadata__` dict."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise SpearError(f"{path}: not a safetensors file (shorter than 8 bytes). Re-export the weights.")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _MAX_HEADER or 8 + n > size:
                raise SpearError(
                    f"{path}: corrupt safetensors header (declared header length {n} bytes, file {size} bytes). "
                    "The file is damaged or not safetensors; copy or download it again."
                )
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpearError(f"{path}: corrupt safetensors header ({exc}). Copy or download the file again.") from exc
    if not isinstance(header, dict):
        raise SpearError(f"{path}: corrupt safetensors header (not a JSON object). Copy the file again.")
    meta = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, h in header.items():
        try:
            dtype = SAFE_DTYPES[h["dtype"]]
            begin, stop = (int(x) for x in h["data_offsets"])
            shape = tuple(int(d) for d in h["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SpearError(f"{path}: corrupt safetensors header entry for tensor '{name}' ({exc}).") from exc
        info = TensorInfo(name, shape, dtype, path, 8 + n + begin)
        if stop - begin != info.nbytes:
            raise SpearError(
                f"{path}: tensor '{name}' declares {stop - begin} bytes but shape {list(shape)} of "
                f"{h['dtype']} needs {info.nbytes}. The file is corrupt; re-export it."
            )
        infos[name] = info
        end = max(end, stop)
    _refuse_overlaps(path, infos)
    if 8 + n + end > size:
        raise SpearError(
            f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + end}). "
            "An interrupted copy or download; fetch the file again."
        )
    return infos, meta


def _refuse_overlaps(path: Path, infos: dict[str, TensorInfo]) -> None:
    """Two tensors sharing bytes would alias each other's data (the safetensors library refuses such files)."""
    spans = sorted((i.offset, i.offset + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise SpearError(
                f"{path}: tensors '{first}' and '{second}' declare overlapping byte ranges in the safetensors "
                "header (a crafted or corrupt file; the safetensors library refuses it). Re-export the weights "
                "with save_pretrained()."
            )


def read_config(config_file: Path) -> dict:
    """A model's config.json as a dict, or a SpearError naming the file: not UTF-8, not JSON, not an object."""
    text = read_text(config_file, "model config")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpearError(f"{config_file}: invalid JSON ({exc}). Restore the model's config.json.") from exc
    if not isinstance(config, dict):
        raise SpearError(
            f'{config_file}: a model config is a JSON object ({{"model_type": …}}), not a '
            f"{type(config).__name__}. Restore the model's config.json."
        )
    return config


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """Memory-mapped, weights-only load of a PyTorch .bin; refuses anything that needs full unpickling."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unsafe or broken pickles
        raise SpearError(
            f"{path}: refused to load. spear-mm only reads .bin files with torch.load(weights_only=True) and "
            f"this file needs full unpickling or is corrupt ({type(exc).__name__}: {str(exc)[:200]}). "
            "Convert it to safetensors in a trusted environment (model.save_pretrained(..., "
            "safe_serialization=True))."
        ) from exc
    if not isinstance(sd, dict):
        raise SpearError(f"{path}: expected a state dict (name -> tensor), found {type(sd).__name__}.")
    return sd


@dataclass
class Checkpoint:
    """A Hugging Face model folder opened lazily: `infos` lists every tensor; `read(name)` loads one."""

    path: Path
    config: dict
    infos: dict[str, TensorInfo]
    _bins: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """Open a model's headers (no tensor data is read).

        Args:
            path: a Hugging Face model folder, or a hub id `org/name[@revision]` (resolved through the cache).
        Returns:
            The `Checkpoint`; raises SpearError naming the folder and the fix when it is not a model.

        Example:
            >>> ckpt = Checkpoint.open("adapted/")  # doctest: +SKIP
            >>> ckpt.read("model.layers.0.mlp.up_proj.weight").shape  # doctest: +SKIP
        """
        path = resolve_model(path).resolve()  # a local folder, or a hub id's cached snapshot
        if not path.exists():
            raise SpearError(f"{path}: no such folder. Pass the path of a Hugging Face model folder.")
        if not path.is_dir():
            raise SpearError(f"{path}: is a file; pass the model folder that contains config.json and weights.")
        config_file = path / "config.json"
        if not config_file.exists():
            raise SpearError(f"{path}: no config.json. Pass a Hugging Face model folder (save_pretrained output).")
        config = read_config(config_file)
        ckpt = cls(path, config, {})
        ckpt.infos = ckpt._scan()
        return ckpt

    # -- discovery ---------------------------------------------------------------------------------------------
    def _weight_files(self) -> tuple[list[Path], dict[str, str] | None]:
        """The weight files, and the index's weight map (tensor -> shard) when the folder has one."""
        for index_name in _INDEX_FILES:
            index = self.path / index_name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                    files = sorted(set(weight_map.values()))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    raise SpearError(
                        f"{index}: invalid index file ({exc}); it needs a 'weight_map' of tensor name -> shard "
                        "file. Re-save the model with save_pretrained()."
                    ) from exc
                missing = [f for f in files if not (self.path / f).exists()]
                if missing:
                    raise SpearError(
                        f"{index}: points at missing shard(s) {', '.join(missing)}. Copy the missing files "
                        "into the folder (an incomplete download?)."
                    )
                self._refuse_strays(index, files)
                return [self.path / f for f in files], weight_map
        for pattern in ("model.safetensors", "pytorch_model.bin", "*.safetensors", "pytorch_model*.bin"):
            found = sorted(self.path.glob(pattern))
            if found:
                return found, None

        ref = hub_ref(self.path)
        hint = (
            f" This is the hub snapshot of {ref.repo_id}: spear-mm fetches safetensors weights only, and this "
            "repository has none at that revision; convert it (save_pretrained(..., safe_serialization=True)) "
            "or pass a local folder."
            if ref
            else " Save the model with save_pretrained()."
        )
        raise SpearError(
            f"{self.path}: no weights found (looked for model.safetensors, *.safetensors with an index, "
            f"pytorch_model*.bin).{hint}"
        )

    def _refuse_strays(self, index: Path, shards: list[str]) -> None:
        """Shards with an index beside a single-file checkpoint: spear-mm would read the shards, transformers the
        single file, so merge and evaluate would disagree about which weights the folder holds."""
        singles = (
            ("model.safetensors", "pytorch_model.bin") if index.name.startswith("pytorch") else ("model.safetensors",)
        )
        strays = [n for n in singles if (self.path / n).exists() and n not in shards]  # transformers' order
        if strays:
            raise SpearError(
                f"{self.path}: ambiguous weights: {index.name} lists shards, and {' and '.join(strays)} is there "
                "too (transformers would load that file, the index's shards would be merged). Remove the stale "
                "one: the single file or the index with its shards."
            )

    def _scan(self) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        files, weight_map = self._weight_files()
        for file in files:
            if file.suffix == ".safetensors":
                found, _ = read_safetensors_header(file)
            else:
                sd = _load_bin(file)
                self._bins[file] = sd
                found = {n: TensorInfo(n, tuple(t.shape), t.dtype, file) for n, t in sd.items()}
            for name, info in found.items():
                if name in infos:
                    raise SpearError(
                        f"{self.path}: tensor '{name}' appears in both {infos[name].file.name} "
                        f"and {file.name}. Remove the stale shard."
                    )
                infos[name] = info
        lost = [n for n in weight_map or {} if n not in infos]
        if lost:
            raise SpearError(
                f"{self.path}: the index lists {len(lost)} tensor(s) that their shard does not contain (e.g. "
                f"'{lost[0]}' in {weight_map[lost[0]]}). A shard is stale or from another save; copy the "
                "model folder again."
            )
        return infos

    # -- access ------------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.infos)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    @property
    def num_parameters(self) -> int:
        return sum(i.numel for i in self.infos.values())

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor into fresh memory (or into `out`, a contiguous tensor of the same dtype/shape)."""
        info = self._info(name)
        if info.offset < 0:
            t = self._bins[info.file][name]
            return t.clone() if out is None else out.copy_(t)
        t = torch.empty(info.shape, dtype=info.dtype) if out is None else out
        self._pread(info, 0, t)
        return t

    def read_range(self, name: str, start: int, count: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Elements [start, start + count) of the flattened tensor (into `out`, 1-D, when given)."""
        info = self._info(name)
        if not 0 <= start <= start + count <= info.numel:
            raise ValueError(f"range [{start}, {start + count}) outside tensor '{name}' of {info.numel} elements")
        if info.offset < 0:
            t = self._bins[info.file][name].reshape(-1)[start : start + count]
            return t.clone() if out is None else out.copy_(t)
        t = torch.empty(count, dtype=info.dtype) if out is None else out
        self._pread(info, start * info.dtype.itemsize, t)
        return t

    def _info(self, name: str) -> TensorInfo:
        info = self.infos.get(name)
        if info is None:
            raise SpearError(f"{self.path}: no tensor named '{name}'.")
        return info

    @staticmethod
    def _pread(info: TensorInfo, skip: int, t: torch.Tensor) -> None:
        """Fill `t` with the bytes at `skip` past the start of the tensor's data."""
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return
        buf = memoryview(t.view(-1).view(torch.uint8).numpy())
        with info.file.open("rb", buffering=0) as f:
            f.seek(info.offset + skip)
            got = f.readinto(buf)
        if got != nbytes:
            raise SpearError(
                f"{info.file}: short read of tensor '{info.name}' ({got} of {nbytes} bytes); "
                "the file is truncated. Copy it again."
            )

    def read_raw(self, name: str) -> memoryview:
        """The tensor's bytes exactly as stored (for bit-exact copies)."""
        t = self.read(name)
        return memoryview(t.reshape(-1).view(torch.uint8).numpy())

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names or self.names:
            yield name, self.read(name)

    def fingerprint(self) -> str:
        """A fast content hash: config, every tensor's name/shape/dtype, each file's size, 16 samples of 64 KiB
        per file, and 256 bytes at the start, middle and end of every tensor's data.

        Hashing hundreds of GB in full would cost minutes. A tensor re-saved with other values changes its own
        samples even when the file's size and most of its bytes stay the same (a fine-tune of one layer).
        Modification times are left out on purpose: a copied model (plain `cp`) is the same model, and its
        resume keys and plan provenance must still match.
        """
        h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for name in sorted(self.infos):
            i = self.infos[name]
            h.update(f"{name}|{i.shape}|{i.dtype}\n".encode())
        for file in sorted({i.file for i in self.infos.values()}):
            size = file.stat().st_size
            h.update(f"{file.name}|{size}".encode())
            with file.open("rb") as f:
                for k in range(16):
                    f.seek(size * k // 16)
                    h.update(f.read(65536))
                for name in sorted(n for n, i in self.infos.items() if i.file == file and i.offset >= 0):
                    i = self.infos[name]
                    nbytes = i.numel * i.dtype.itemsize
                    for at in sorted({0, max(0, nbytes // 2 - 128), max(0, nbytes - 256)}):
                        f.seek(i.offset + at)
                        h.update(f.read(min(256, nbytes)))
        return h.hexdigest()[:16]


def require_finite(x: torch.Tensor, name: str, where: str | Path, doing: str) -> None:
    """Raise a SpearError naming the tensor and file if `x` holds NaN or Inf.

    The sum is checked first (NaN/Inf anywhere make it non-finite; 2.8 ms per 11.5 M bf16 elements), the exact
    test only then. `doing` ("scoring", "merging") ends the message.
    """
    if not x.dtype.is_floating_point or x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        raise SpearError(
            f"tensor '{name}' in {where} contains NaN or Inf values. The checkpoint is damaged (or training "
            f"diverged); fix or re-export it before {doing}."
        )
