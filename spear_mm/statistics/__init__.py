"""Probe statistics for the data-aware merge methods (RegMean, Fisher): what each linear layer reads on general
and on domain text, collected once per pair and probe (collect.py), stored as safetensors and read lazily, one
tensor's statistics at a time, by the streaming merge (store.py)."""

from __future__ import annotations

from typing import Literal

# the kinds of statistics `spear-mm stats` collects, each read by the data-aware method of the same name (declared
# here, without torch, so the run config can name them)
Kind = Literal["regmean", "fisher"]
