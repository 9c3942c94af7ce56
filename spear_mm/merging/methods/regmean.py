"""RegMean restoration (Jin et al., ICLR 2023, arXiv 2212.09849), as a per-linear-layer least squares between the
two models: produce the base model's outputs on the inputs the general text gives the layer, and the adapted
model's outputs on the inputs the domain text gives it:

    W(α)ᵀ = argmin α·E_g‖x(Wᵀ − W_baseᵀ)‖² + (1−α)·E_d‖x(Wᵀ − W_adaptedᵀ)‖²
          = (α·G_g + (1−α)·G_d)⁻¹ (α·G_g·W_baseᵀ + (1−α)·G_d·W_adaptedᵀ)

with G the mean x xᵀ of the layer's inputs (spear-mm stats: the base on the general probe, the adapted model on the
domain probe), off-diagonal entries scaled by `shrink` (λ) for conditioning. α = t is the weight of the base, as
everywhere in spear-mm: 0 keeps the adapted weights, 1 gives the base. Written as
W = W_base + Δ·Qᵀ with Q = (1−α)(A + εI)⁻¹(G_d + εI), A = α·G_g + (1−α)·G_d: the ε-prior makes directions that
neither probe uses interpolate linearly, and Q is solved once per input site and α (q/k/v share it) in float64.
Tensors that are not linear layers of the blocks (embeddings, norms, biases) are SLERPed at the same t.
"""

from __future__ import annotations

import torch

from spear_mm.errors import SpearError
from spear_mm.merging.methods.base import MergeMethod, get_method, register
from spear_mm.planning.plan import Plan
from spear_mm.statistics.store import Statistics

RIDGE = 1e-9  # ε relative to the mean diagonal of A: float64 keeps the solve exact to ~1e-7 at that conditioning


def shrunk(g: torch.Tensor, shrink: float) -> torch.Tensor:
    """λ·G + (1 − λ)·diag(G): RegMean's scaling of the off-diagonal entries, in float64."""
    g = g.double()
    return g * shrink + torch.diag_embed(torch.diagonal(g)) * (1.0 - shrink)


def regmean_projection(g_general: torch.Tensor, g_domain: torch.Tensor, alpha: float, shrink: float) -> torch.Tensor:
    """Q (in × in, float64) such that the merged weight is W_base + Δ·Qᵀ (Δ = W_adapted − W_base)."""
    gg, gd = shrunk(g_general, shrink), shrunk(g_domain, shrink)
    a = alpha * gg + (1.0 - alpha) * gd
    eps = RIDGE * max(float(torch.diagonal(a).mean()), 1e-30)
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return (1.0 - alpha) * torch.linalg.solve(a + eps * eye, gd + eps * eye)


def open_statistics(plan: Plan, kind: str) -> Statistics:
    if plan.statistics is None:
        raise SpearError(
            f"the plan merges with '{kind}' but names no statistics folder: collect them with `spear-mm stats BASE "
            "ADAPTED -o STATS` and pass `--stats STATS` to merge (or set `statistics:` in the plan)."
        )
    stats = Statistics(plan.statistics)
    stats.require(kind)  # type: ignore[arg-type]
    return stats


@register
class RegMean(MergeMethod):
    name = "regmean"
    summary = (
        "per linear layer, least squares: base outputs on general-probe inputs, adapted outputs on domain-probe "
        "inputs, weighted t : 1 - t (needs spear-mm stats); other tensors SLERP"
    )
    options = ("shrink",)
    title = "RegMean per linear layer"
    needs_statistics = True
    streamable = False  # W·Qᵀ mixes a row's elements

    def __init__(self, statistics: Statistics | None = None, shrink: float = 0.9):
        self.statistics = statistics
        self.shrink = shrink
        self._cached: tuple[tuple[str, float, torch.device], torch.Tensor] | None = None

    @classmethod
    def from_plan(cls, plan: Plan) -> RegMean:
        return cls(open_statistics(plan, cls.name), shrink=plan.shrink)

    def bind(self, name: str, shape: tuple[int, ...]) -> MergeMethod:
        if self.statistics is None or self.statistics.site(name) is None or len(shape) != 2:
            return get_method("slerp")
        return _RegMeanTensor(self, name, shape)

    def projection(self, name: str, alpha: float, device: torch.device) -> torch.Tensor:
        """Q of the tensor's input site at α (the last one is kept: q/k/v and gate/up share it)."""
        assert self.statistics is not None
        site = (self.statistics.site(name), alpha, device)
        if self._cached is None or self._cached[0] != site:
            gg = self.statistics.gram("general", name).to(device)
            gd = self.statistics.gram("domain", name).to(device)
            self._cached = (site, regmean_projection(gg, gd, alpha, self.shrink).float())
        return self._cached[1]


class _RegMeanTensor(MergeMethod):
    """RegMean applied to one linear weight (whole tensor, float32 work buffers)."""

    name = "regmean"
    streamable = False

    def __init__(self, parent: RegMean, weight: str, shape: tuple[int, ...]):
        self.parent, self.weight, self.shape = parent, weight, shape

    def combine_(self, x: torch.Tensor, y: torch.Tensor, t: float, ca: float, cb: float) -> torch.Tensor:
        q = self.parent.projection(self.weight, t, x.device)
        transposed = self.parent.statistics.transposed(self.weight)  # GPT-2 Conv1D: W is in × out
        delta = x.sub_(y).view(self.shape)
        w = y.view(self.shape)
        if transposed:
            w.add_(q @ delta)  # (Δᵀ Qᵀ)ᵀ = Q Δ
        else:
            w.add_(delta @ q.T)
        return y
