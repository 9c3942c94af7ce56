"""Lazy, per-tensor access to Hugging Face checkpoints (safetensors, sharded or not, or weights-only .bin).

Nothing is loaded until `read(name)` is called, and then only that tensor: memory stays bounded by the
largest tensor however large the model is. Safetensors headers are parsed and validated here so that a
corrupt or truncated shard fails with a message naming the file, before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spear_mm.errors import SpearError

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
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


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
    if 8 + n + end > size:
        raise SpearError(
            f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + end}). "
            "An interrupted copy or download; fetch the file again."
        )
    return infos, meta


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
        from spear_mm.hub import resolve_model

        path = resolve_model(path).resolve()  # a local folder, or a hub id's cached snapshot
        if not path.exists():
            raise SpearError(f"{path}: no such folder. Pass the path of a Hugging Face model folder.")
        if not path.is_dir():
            raise SpearError(f"{path}: is a file; pass the model folder that contains config.json and weights.")
        config_file = path / "config.json"
        if not config_file.exists():
            raise SpearError(f"{path}: no config.json. Pass a Hugging Face model folder (save_pretrained output).")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise SpearError(f"{config_file}: invalid JSON ({exc}).") from exc
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
                return [self.path / f for f in files], weight_map
        for pattern in ("model.safetensors", "pytorch_model.bin", "*.safetensors", "pytorch_model*.bin"):
            found = sorted(self.path.glob(pattern))
            if found:
                return found, None
        from spear_mm.hub import hub_ref

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
        """A fast content hash: config, every tensor's name/shape/dtype, and sampled bytes of each file.

        Hashing hundreds of GB in full would cost minutes; this changes whenever weights are re-saved
        differently in practice (headers, sizes, and 64 KiB samples at 16 places of every file).
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
        return h.hexdigest()[:16]


# -- pairs ---------------------------------------------------------------------------------------------------------
_CONFIG_KEYS = (
    ("model_type",),
    ("num_hidden_layers", "n_layer", "num_layers"),
    ("hidden_size", "n_embd", "d_model"),
)


@dataclass
class Pair:
    """A validated base/adapted pair: same family, tensors and shapes (up to an allowed vocabulary extension)."""

    base: Checkpoint
    adapted: Checkpoint
    params: dict  # name -> architecture.ParamInfo, in the adapted model's tensor order
    num_layers: int
    vocab_extension: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (base rows, adapted rows)
    dtype_mismatch: dict[str, tuple[torch.dtype, torch.dtype]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.params)


def _cfg(config: dict, keys: tuple[str, ...]):
    cfg = config.get("text_config", config) if keys[0] != "model_type" else config
    return next((cfg[k] for k in keys if k in cfg), None)


def open_pair(
    base: str | Path | Checkpoint, adapted: str | Path | Checkpoint, *, allow_vocab_extension: bool = False
) -> Pair:
    """Open and validate a base/adapted pair, reporting every difference at once."""
    from spear_mm.architecture import layer_map, num_layers_of

    b = base if isinstance(base, Checkpoint) else Checkpoint.open(base)
    a = adapted if isinstance(adapted, Checkpoint) else Checkpoint.open(adapted)
    problems: list[str] = []
    for keys in _CONFIG_KEYS:
        vb, va = _cfg(b.config, keys), _cfg(a.config, keys)
        if vb != va:
            problems.append(f"config {keys[0]}: base {vb!r} vs adapted {va!r}")
    if problems:
        raise SpearError(
            f"{b.path} and {a.path} are not the same architecture ({'; '.join(problems)}). "
            "SPEAR-MM merges a model with its own continually pre-trained version; pass that pair."
        )
    params = layer_map(a.names, a.model_type)
    only_b = [n for n in b.infos if n not in a.infos]
    only_a = [n for n in a.infos if n not in b.infos]
    for n in only_b:
        problems.append(f"'{n}' is in the base ({b.infos[n].file.name}) but missing from the adapted model")
    for n in only_a:
        problems.append(f"'{n}' is in the adapted model ({a.infos[n].file.name}) but missing from the base")
    vocab_ext: dict[str, tuple[int, int]] = {}
    for n in a.infos.keys() & b.infos.keys():
        sb, sa = b.infos[n].shape, a.infos[n].shape
        if sb == sa:
            continue
        grows = params[n].group in ("embed", "head") and len(sa) == len(sb) == 2 and sa[1] == sb[1] and sa[0] > sb[0]
        if grows and allow_vocab_extension:
            vocab_ext[n] = (sb[0], sa[0])
        elif grows:
            problems.append(
                f"'{n}' has {sa[0]} rows in the adapted model vs {sb[0]} in the base (vocabulary "
                "extension); pass --allow-vocab-extension to merge the shared rows and keep the new ones"
            )
        else:
            problems.append(f"'{n}' has shape {list(sa)} in the adapted model vs {list(sb)} in the base")
    if problems:
        shown = problems[:20] + ([f"… and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise SpearError(
            f"{b.path} and {a.path} do not match tensor for tensor ({len(problems)} problem(s)): "
            + "; ".join(shown)
            + "."
        )
    mismatch = {n: (b.infos[n].dtype, a.infos[n].dtype) for n in a.infos if b.infos[n].dtype != a.infos[n].dtype}
    if mismatch:
        n, (db, da) = next(iter(mismatch.items()))
        log.warning(
            "%d tensor(s) differ in dtype (e.g. '%s': base %s, adapted %s); they are merged in float32 "
            "and written in the adapted model's dtype.",
            len(mismatch),
            n,
            db,
            da,
        )
    num_layers = num_layers_of(a.config) or 1 + max(
        (p.layer for p in params.values() if p.layer is not None), default=0
    )
    return Pair(b, a, params, num_layers, vocab_ext, mismatch)
