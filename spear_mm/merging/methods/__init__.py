"""Merge methods, registered by name behind one interface (`MergeMethod`). A new method is one new file here
that subclasses `MergeMethod` with `@register`, plus its import below; a module outside the package registers
its methods the same way by being imported (before the command line is parsed, or before a plan is loaded)."""

from __future__ import annotations

# Import order = registration order = the order `ls methods`, `--method` and errors list them.
# isort: off
from spear_mm.merging.methods.base import METHODS, MergeMethod, get_method, register
from spear_mm.merging.methods.slerp import Slerp
from spear_mm.merging.methods.lerp import Lerp, TaskArithmetic
from spear_mm.merging.methods.ties import Ties
from spear_mm.merging.methods.regmean import RegMean
from spear_mm.merging.methods.fisher import Fisher
# isort: on

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
