"""The interface every merge method implements, and the registry that names them.

`a` is the adapted tensor, `b` the base; t is the weight of the base (t = 0 keeps `a`, t = 1 gives `b`).
A method sees the pair's global statistics first (`PairStats`: inner products in float64), then combines float32
work buffers in place — chunk by chunk when `streamable`, else over the whole tensor at once. The streaming
merge and the whole-tensor `merge()` below run the same `combine_`, so what is tested is what is written.

A method is one file in this folder: a `MergeMethod` subclass decorated with `@register`, declaring its name, what
`spear-mm ls methods` says of it, its options (the plan fields it reads), whether it needs `spear-mm stats`, and
whether mergekit can perform it. Everything else (CLI choices, plan validation, the mergekit export, cache keys)
asks the registry `METHODS`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from spear_mm.errors import SpearError
from spear_mm.merging.kernels import PairStats, pair_stats
from spear_mm.planning.plan import Plan

METHODS: dict[str, type[MergeMethod]] = {}


class MergeMethod:
    """One way to combine a base/adapted tensor pair. Subclasses set `name` and `summary` and override
    `coefficients` (linear methods) or `combine_` (others). Their options are constructor keywords named in
    `options`; `from_plan` passes the plan's values: a top-level field for the two older ones (TIES `density`,
    RegMean `shrink`), else an entry of the plan's `method_options` (a new option needs no change to the Plan)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line for `spear-mm ls methods` (t = weight of the base)
    title: ClassVar[str] = ""  # a few words naming it in reports (default: its name)
    options: ClassVar[tuple[str, ...]] = ()  # its constructor's options, set by the plan (they enter the cache key)
    needs_statistics: ClassVar[bool] = False  # reads the probe statistics of `spear-mm stats` (plan.statistics)
    mergekit: ClassVar[str | None] = None  # mergekit's `merge_method` performing it per unit at t, or None
    streamable: ClassVar[bool] = True  # each output element depends only on its inputs and the pair statistics
    keeps_adapted_at_zero: ClassVar[bool] = True  # t = 0 returns `a` bit for bit

    @classmethod
    def from_plan(cls, plan: Plan) -> MergeMethod:
        """The method with the options a plan sets for it (its `options`, by keyword; unset ones keep the
        constructor's default)."""
        return cls(**plan.option_values(cls.options))

    @classmethod
    def changes_at_zero(cls, plan: Plan) -> bool:
        """Whether a tensor at t = 0 is rewritten all the same (e.g. TIES trims Δ), so a merge cannot keep it."""
        return not cls.keeps_adapted_at_zero

    @classmethod
    def mergekit_slice(cls, sources: list[dict], rules: list[dict]) -> dict:
        """One mergekit slice of the export (sources: the adapted, then the base) with these t rules (spear-mm's
        t: filter → value); a method with a `mergekit` form converts them."""
        raise NotImplementedError(f"merge method {cls.name!r} declares no mergekit form")

    @classmethod
    def mergekit_parameters(cls, fixed: list[dict], other: float) -> dict[str, Any]:
        """The export's top-level `parameters` (`fixed`: the t rules of the tensors outside the layers; `other`:
        the plan's t for unclassified tensors)."""
        raise NotImplementedError(f"merge method {cls.name!r} declares no mergekit form")

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
    """Class decorator: make `cls` available by `cls.name` to plans, `--method`, `ls methods` and the export.

    Raises SpearError when another class already has the name (a plugin cannot silently replace a method), and
    when the class has no `name` or declares `options` its constructor does not take (found here, at import, not
    when a plan first sets them)."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise SpearError(f'merge method {where} has no `name`: set `name = "..."` on the class (plans use it).')
    taken = inspect.signature(cls).parameters
    missing = [o for o in cls.options if o not in taken and not _takes_any(taken)]
    if missing:
        raise SpearError(
            f"merge method {name!r} ({where}) declares options {missing} that its constructor does not take: add "
            f"them as keyword arguments of __init__ (e.g. `def __init__(self, {missing[0]}: float = 1.0)`)."
        )
    known = METHODS.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise SpearError(
            f"merge method {cls.name!r} is registered twice ({known.__module__}.{known.__qualname__} and "
            f"{cls.__module__}.{cls.__qualname__}): give the new method another `name`."
        )
    METHODS[cls.name] = cls
    return cls


def _takes_any(params: Any) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def get_method(name: str, **options: float) -> MergeMethod:
    """The method called `name`, built with its options (e.g. density=0.2 for TIES).

    Raises SpearError listing the known methods for an unknown name.
    """
    if name not in METHODS:
        raise SpearError(f"unknown merge method {name!r}: use one of {', '.join(METHODS)}.")
    return METHODS[name](**options)
