"""RUN/summary.json as typed data: `RunSummary` (written by `spear-mm run`, read once by `spear-mm report` with
`RunSummary.model_validate_json`), its model entries, stage costs, cost accounting, baseline comparisons and the
report's extra tables. Field names are the file's keys: renaming one breaks the reports of older runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from spear_mm import __version__
from spear_mm.evaluation.uniform_curve import CurveComparison, CurvePoint
from spear_mm.io.files import atomic_write_text

Role = Literal["base", "adapted", "policy", "sweep", "baseline", "operator"]


class ModelEntry(BaseModel):
    """One evaluated model: its role, plan, R and K, and what it cost."""

    name: str
    kind: Role
    description: str = ""
    method: str | None = None
    plan: str | None = None  # path of the plan YAML, relative to the run folder
    retention: float | None = None
    gain_kept: float | None = None
    retention_per_task: dict[str, float | None] = Field(default_factory=dict)
    gain_kept_per_task: dict[str, float | None] = Field(default_factory=dict)
    on_front: bool = False
    eval_seconds: float = 0.0
    merge_seconds: float = 0.0
    cost_seconds: float | None = None  # score (once) + merge + evaluate: the cost of this configuration
    n_merged: int | None = None
    n_lerp_fallback: int | None = None


class StageCost(BaseModel):
    """Wall time of one stage. `seconds` is what the stage cost when it ran (also when this run skipped it)."""

    name: str
    seconds: float
    device: str
    status: Literal["ran", "skipped", "partly skipped"] = "ran"
    detail: str = ""


class CostSummary(BaseModel):
    """Cost per configuration (score once + merge + evaluate) against one measured CPT run."""

    device: str
    score_seconds: float
    mean_merge_seconds: float
    mean_eval_seconds: float
    per_configuration_seconds: float
    configurations: int
    total_seconds: float  # score + every merge and evaluation of this run (base and adapted included)
    cpt_seconds: float | None = None
    cpt_source: str | None = None
    cpt_device: str | None = None
    ratio: float | None = None  # per_configuration / cpt (the paper: ≈ 0.1)
    ratio_with_eval: float | None = None  # per_configuration / (cpt + evaluating the re-trained model)


class Comparison(BaseModel):
    """One SPEAR-MM plan against the baselines at (nearly) equal K and at (nearly) equal R."""

    candidate: str
    retention: float
    gain_kept: float
    equal_k_baseline: str | None = None  # the baseline whose K is nearest
    equal_k_baseline_k: float | None = None
    equal_k_baseline_r: float | None = None
    delta_r: float | None = None  # candidate R − that baseline's R (> 0: the plan retains more at equal K)
    equal_r_baseline: str | None = None  # the baseline whose R is nearest
    equal_r_baseline_r: float | None = None
    equal_r_baseline_k: float | None = None
    delta_k: float | None = None  # candidate K − that baseline's K (> 0: the plan keeps more at equal R)
    dominated_by: list[str] = []  # baselines at least as good on both axes and better on one


class ReportTable(BaseModel):
    """One extra table of the report: a heading, a paragraph above it, the column heads and the rows."""

    title: str
    text: str = ""
    columns: list[str]
    rows: list[list[str]]


class RunSummary(BaseModel):
    """RUN/summary.json: the run's models, choice, comparisons and costs."""

    spear_mm_summary: Literal[1] = 1
    title: str = "SPEAR-MM run"
    run_dir: str
    base: str = "base"
    adapted: str = "adapted"
    base_path: str
    adapted_path: str
    base_hub: str | None = None  # 'org/name@<commit>' when the model came from the hub cache
    adapted_hub: str | None = None
    base_fingerprint: str
    adapted_fingerprint: str
    suites: str
    limit: int | None
    seed: int
    tasks: dict[str, str] = Field(default_factory=dict)  # task -> group
    skipped_tasks: dict[str, str] = Field(default_factory=dict)  # task -> reason
    chosen: str | None
    chosen_model_path: str | None = None
    choice_rule: str
    choice_reason: str = ""
    first_pick: str | None = None  # the rule's pick when a simpler model not distinguishable from it was chosen
    choice_tests: str = ""  # the paired tests of the noise check
    excluded_tasks: dict[str, str] = Field(default_factory=dict)  # chance-level tasks left out of R and K
    keep_chance_tasks: bool = False
    target_retention: float | None = None
    baselines: list[str] = Field(default_factory=list)
    candidates: dict[str, ModelEntry] = Field(default_factory=dict)  # policies, sweep and baselines
    reference: dict[str, ModelEntry] = Field(default_factory=dict)  # base and adapted
    pareto_front: list[str] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    uniform_curve: list[CurvePoint] = Field(default_factory=list)  # adapted (t 0), uniform-t*, base (t 1)
    curve_comparisons: list[CurveComparison] = Field(default_factory=list)  # ΔR at equal K per plan
    curve_note: str = ""
    costs: dict[str, float] = Field(default_factory=dict)  # name -> cost_seconds (the report's "cost s")
    cost: CostSummary
    stages: list[StageCost] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    tables: list[ReportTable] = Field(default_factory=list)  # extra report tables (comparisons, curve, cost)
    report_html: str | None = None
    report_md: str | None = None
    seconds: float = 0.0
    spear_mm_version: str = __version__

    def entry(self, name: str) -> ModelEntry:
        return self.candidates.get(name) or self.reference[name]

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> RunSummary:
        path = Path(path)
        return cls.model_validate_json((path / "summary.json" if path.is_dir() else path).read_text())
