"""Floating-point dtypes as users write them (`bf16`, `fp16`, `fp32`, or the names transformers, mergekit and
lm-eval use: `bfloat16`, `float16`, `float32`), for `merge --out-dtype`, `evaluate --dtype`, `cpt --save-dtype` and
run.yaml's `out_dtype`: one parser, one list of choices shown by `--help`."""

from __future__ import annotations

import torch

from spear_mm.errors import SpearError
from spear_mm.io.dtype_names import DtypeName

__all__ = ["DtypeName", "dtype_label", "parse_dtype"]


_ALIASES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def parse_dtype(value: str | DtypeName | torch.dtype | None) -> torch.dtype | None:
    """`bf16`/`fp16`/`fp32` (or bfloat16/float16/float32, or a torch dtype) -> torch dtype; None stays None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = value.value if isinstance(value, DtypeName) else str(value).strip().lower().removeprefix("torch.")
    if key not in _ALIASES:
        names = ", ".join(d.value for d in DtypeName)
        raise SpearError(f"dtype {value!r} is not understood; use one of {names}.")
    return _ALIASES[key]


def dtype_label(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16' (the name transformers writes in config.json)."""
    return str(dtype).removeprefix("torch.")
