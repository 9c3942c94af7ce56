"""The dtype names users write (`bf16`, `bfloat16`, …) as one Enum, without torch: the run config and the CLI's
choices use it before any model is loaded (io/dtypes.py turns a name into a torch dtype)."""

from __future__ import annotations

from enum import Enum


class DtypeName(str, Enum):
    """The dtypes a merged model can be written in, or a model evaluated in (both spellings of each)."""

    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"
