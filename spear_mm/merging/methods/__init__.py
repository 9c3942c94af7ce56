"""Merge methods, registered by name behind one interface (`MergeMethod`). A new method is one new file here
that subclasses `MergeMethod` with `@register`, plus its import below."""

from __future__ import annotations

from spear_mm.merging.methods.base import METHODS, MergeMethod, get_method, register
from spear_mm.merging.methods.fisher import Fisher
from spear_mm.merging.methods.lerp import Lerp, TaskArithmetic
from spear_mm.merging.methods.regmean import RegMean
from spear_mm.merging.methods.slerp import Slerp
from spear_mm.merging.methods.ties import Ties

__all__ = [
    "METHODS",
    "Fisher",
    "Lerp",
    "MergeMethod",
    "RegMean",
    "Slerp",
    "TaskArithmetic",
    "Ties",
    "get_method",
    "register",
]
