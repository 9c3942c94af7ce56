"""Fisher merging (Matena & Raffel, arXiv 2111.09832) between the two models: each parameter is the average of the
base and adapted values weighted by how much each side's probe needs it,

    θ(α) = (α·F_g·θ_base + (1−α)·F_d·θ_adapted) / (α·F_g + (1−α)·F_d)

with F_g the diagonal Fisher of the base on the general probe and F_d that of the adapted model on the domain probe
(spear-mm stats --kinds fisher). α = t is the weight of the base. A small floor (relative to each tensor's mean
Fisher) makes entries that neither probe uses interpolate linearly; tensors without Fisher are SLERPed.
"""

from __future__ import annotations

import torch

from spear_mm.merging.methods.base import MergeMethod, get_method, register
from spear_mm.merging.methods.regmean import open_statistics
from spear_mm.planning.plan import Plan
from spear_mm.statistics.store import Statistics

FLOOR = 1e-6  # Fisher floor relative to the tensor's mean Fisher (both sides)


@register
class Fisher(MergeMethod):
    name = "fisher"
    summary = (
        "per parameter, base and adapted weighted by t·Fisher(general) : (1 - t)·Fisher(domain) (needs spear-mm "
        "stats --kinds fisher)"
    )
    title = "Fisher-weighted average per parameter"
    needs_statistics = True
    streamable = False  # the Fisher is read per whole tensor

    def __init__(self, statistics: Statistics | None = None):
        self.statistics = statistics

    @classmethod
    def from_plan(cls, plan: Plan) -> Fisher:
        return cls(open_statistics(plan, cls.name))

    def bind(self, name: str, shape: tuple[int, ...]) -> MergeMethod:
        if self.statistics is None or self.statistics.meta.files.get("fisher/general") is None:
            return get_method("slerp")
        return _FisherTensor(self.statistics, name)


class _FisherTensor(MergeMethod):
    name = "fisher"
    streamable = False

    def __init__(self, statistics: Statistics, tensor: str):
        self.statistics, self.tensor = statistics, tensor

    def combine_(self, x: torch.Tensor, y: torch.Tensor, t: float, ca: float, cb: float) -> torch.Tensor:
        fg, fd = self.statistics.fisher("general", self.tensor), self.statistics.fisher("domain", self.tensor)
        if fg is None or fd is None or fg.numel() != x.numel():
            return get_method("slerp").combine_(x, y, t, ca, cb)
        fg, fd = fg.reshape(-1).to(x.device), fd.reshape(-1).to(x.device)
        floor = FLOOR * max(float(fg.mean() + fd.mean()) / 2, 1e-30)
        wb = fg.add_(floor).mul_(t)
        wa = fd.add_(floor).mul_(1.0 - t)
        return y.mul_(wb).add_(x.mul_(wa)).div_(wb.add_(wa))
