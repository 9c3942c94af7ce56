"""The interface every merge method implements, and the registry that names them.

`a` is the adapted tensor, `b` the base; t is the weight of the base (t = 0 keeps `a`, t = 1 gives `b`).
A method sees the pair's global statistics first (`PairStats`: inner products in float64), then combines float32
work buffers in place — chunk by chunk when `streamable`, else over the whole tensor at once. The streaming
merge and the whole-tensor `merge()` below run the same `combine_`, so what is tested is what is written.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from spear_mm.errors import SpearError
from spear_mm.merging.kernels import PairStats, pair_stats
from spear_mm.planning.plan import Plan

METHODS: dict[str, type[MergeMethod]] = {}


class MergeMethod:
    """One way to combine a base/adapted tensor pair. Subclasses set `name` and override `coefficients` (linear
    methods) or `combine_` (others), and take their options (e.g. TIES density) as constructor arguments."""

    name: ClassVar[str]
    streamable: ClassVar[bool] = True  # each output element depends only on its inputs and the pair statistics
    keeps_adapted_at_zero: ClassVar[bool] = True  # t = 0 returns `a` bit for bit

    @classmethod
    def from_plan(cls, plan: Plan) -> MergeMethod:
        """The method with the options a plan sets for it (none by default)."""
        return cls()

    def bind(self, name: str, shape: tuple[int, ...]) -> MergeMethod:
        """The method as it applies to one tensor (a data-aware method returns one that knows the tensor's
        statistics, or the method it falls back to for tensors without any); reads nothing yet."""
        return self

    def coefficients(self, stats: PairStats, t: float) -> tuple[float, float, bool]:
        """(ca, cb, lerp_fallback) such that merged = ca·a + cb·b; linear interpolation by default."""
        return 1.0 - t, t, False

    def combine_(self, x: torch.Tensor, y: torch.Tensor, t: float, ca: float, cb: float) -> torch.Tensor:
        """Merged values of the float32 chunk pair (x from a, y from b); may overwrite x and y; returns the result."""
        return x.mul_(ca).add_(y, alpha=cb)

    def merge(
        self, a: torch.Tensor, b: torch.Tensor, t: float, out_dtype: torch.dtype | None = None, name: str | None = None
    ) -> torch.Tensor:
        """The whole-tensor merge, in float32, returned in `out_dtype` (default: a's dtype).

        Args:
            a, b: the adapted and base tensors (same shape).
            t: the weight of the base, in [0, 1].
            name: the tensor's name (data-aware methods look up its statistics by it).
        Returns:
            A new tensor; t = 1 gives `b` and (for most methods) t = 0 gives `a`, bit for bit.
        """
        out_dtype = out_dtype or a.dtype
        if t >= 1.0:
            return b.to(out_dtype)
        if t <= 0.0 and self.keeps_adapted_at_zero:
            return a.to(out_dtype)
        method = self if name is None else self.bind(name, tuple(a.shape))
        x, y = a.to(torch.float32, copy=True).reshape(-1), b.to(torch.float32, copy=True).reshape(-1)
        ca, cb, _ = method.coefficients(pair_stats(x, y), t)
        return method.combine_(x, y, t, ca, cb).reshape(a.shape).to(out_dtype)


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make `cls` available by `cls.name` to plans and `--method`."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options: float) -> MergeMethod:
    """The method called `name`, built with its options (e.g. density=0.2 for TIES).

    Raises SpearError listing the known methods for an unknown name.
    """
    if name not in METHODS:
        raise SpearError(f"unknown merge method {name!r}: use one of {', '.join(sorted(METHODS))}.")
    return METHODS[name](**options)
