"""`RunConfig`: every choice of one `spear-mm run`, as one strict, reproducible value.

The CLI (`spear-mm run --config run.yaml`, flags override the file), the Python API (`run(..., config=...)` or
keyword arguments) and the pipeline all share it; the run folder keeps the resolved copy as `RUN/run.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spear_mm.errors import SpearError, field_errors, read_text
from spear_mm.executors import KINDS
from spear_mm.io.dtype_names import DtypeName
from spear_mm.io.files import atomic_write_text
from spear_mm.io.strict_yaml import load_strict_yaml
from spear_mm.measured.objective import PlannerConfig, PlannerOptions
from spear_mm.pipeline.candidates import check_policy_names, parse_sweep
from spear_mm.scoring.table import ScoreConfig
from spear_mm.statistics import Kind

ExecutorKind = Literal["local", "process", "ray"]
assert set(KINDS) == {"local", "process", "ray"}


def cli(
    panel: str, *flags: str, prefix: str = "", skip: tuple[str, ...] = (), metavar: str = "", argument: bool = False
) -> dict[str, Any]:
    """How a field appears on `spear-mm run` (spear_mm.cli.config_options): its help panel, its flag spellings
    (default `--field-name`; a short one such as `-o` adds to it), and for a sub-model the flags' prefix and the
    fields it leaves out; `argument`: positional."""
    extra: dict[str, Any] = {"panel": panel, "flags": list(flags), "prefix": prefix, "skip": list(skip)}
    extra |= {"argument": True} if argument else {}
    return extra | ({"metavar": metavar} if metavar else {})


_ARG, _IN, _CAND, _PLAN, _OPS = (
    cli("Inputs", argument=True),
    cli("Inputs"),
    cli("Candidates"),
    cli("Measured planner"),
    cli("Data-aware operators"),
)
_CH, _EV, _EX, _OUT = cli("Choice"), cli("Evaluation"), cli("Execution"), cli("Output")


_ALIASES = {"suite": "suites", "tasks": "general_tasks"}  # flag spelling -> key


def flag_spellings(data: dict[str, Any]) -> dict[str, Any]:
    """Keys as the flags spell them, as their run.yaml keys: `suite:` (--suite) is `suites:`, `tasks:` (--tasks)
    `general_tasks:`, `planner_budget: 8` (--planner-budget) `planner: {budget: 8}`. Both spellings at once are
    refused; RUN/run.yaml keeps the keys."""
    data = dict(data)
    for alias, key in _ALIASES.items():
        if alias in data and key in data:
            raise ValueError(f"{key} and {alias} are the same option (--{alias}): give one")
        if alias in data:
            data[key] = data.pop(alias)
    if "planner_budget" in data:
        budget, planner = data.pop("planner_budget"), data.get("planner") or {}
        if not isinstance(planner, dict) or planner.get("budget", budget) != budget:
            raise ValueError("planner_budget and planner.budget are the same option (--planner-budget): give one")
        data["planner"] = {**planner, "budget": budget}
    return data


class RunConfig(BaseModel):
    """What to compare and how to choose. Paths are kept as written (relative to the working folder)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    base: str = Field(
        description="base model folder (before CPT) or hub id org/name(@rev); or base: in --config",
        json_schema_extra=_ARG,
    )
    adapted: str = Field(
        description="adapted model folder (after CPT) or hub id; or adapted: in --config", json_schema_extra=_ARG
    )
    out: str | None = Field(
        None, description="run folder (created; a re-run resumes it)", json_schema_extra=cli("Inputs", "-o")
    )
    suites: str | list[Any] = Field(
        "general,domain",
        description="suites: general, domain, demo or a suite .yaml (none with task names)",
        json_schema_extra=cli("Inputs", "--suite", "-s"),
    )
    data_dir: str | None = Field(None, description="folder with the suites' data files", json_schema_extra=_IN)
    allow_vocab_extension: bool = Field(
        False,
        description="the adapted model added vocabulary rows: shared rows are scored and merged, new rows kept",
        json_schema_extra=_IN,
    )
    policies: list[str] = Field(
        ["conservative", "balanced", "aggressive"],
        description="comma-separated presets, 'measured' (the probe-driven planner: needs --domain-probe) and/or "
        "plan .yaml files",
        json_schema_extra=_CAND,
    )
    rank_by: Literal["score", "restore_gain", "activation_drift"] = Field(
        "score", description="ranking the presets and the sweep restore from", json_schema_extra=_CAND
    )
    sweep: str | bool | None = Field(
        None,
        description="fractions × t grid, e.g. 'f=0.1,0.25,0.5;t=0.5,0.7,0.9' ('default' for that grid)",
        json_schema_extra=_CAND,
    )
    baselines: bool = Field(True, description="uniform SLERP, task arithmetic and TIES", json_schema_extra=_CAND)
    uniform_grid: list[float] = Field(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        description="the t values of the uniform-SLERP curve every plan is compared with",
        json_schema_extra=_CAND,
    )
    domain_probe: str | None = Field(
        None, description="held-out domain text (.txt, or .jsonl with a 'text' field)", json_schema_extra=_PLAN
    )
    general_probe: str | None = Field(
        None, description="general text (default: texts sampled once from the base)", json_schema_extra=_PLAN
    )
    planner: PlannerOptions = Field(
        default_factory=PlannerOptions,
        description="measured planner options (budget, max_domain_loss, …)",
        json_schema_extra=cli("Measured planner", prefix="planner"),
    )
    operators: dict[Kind, list[float]] = Field(  # a data-aware method per kind of statistics `stats` collects
        {},
        description="data-aware operator curves, e.g. 'regmean=0.3,0.5,0.7;fisher=0.5' (needs --domain-probe)",
        json_schema_extra=_OPS,
    )
    stats_tokens: int = Field(
        4096, ge=16, description="probe tokens per side for the statistics", json_schema_extra=_OPS
    )
    target_retention: float | None = Field(
        None, gt=0, le=2, description="choose the most K among models with R ≥ this (e.g. 0.9)", json_schema_extra=_CH
    )
    choose_from: Literal["all", "plans"] = Field(
        "all", description="all: plans, sweep, baselines, CPT; plans: SPEAR-MM plans only", json_schema_extra=_CH
    )
    keep_chance_tasks: bool = Field(
        False, description="keep tasks at chance level in R and K (default: flagged, left out)", json_schema_extra=_CH
    )
    backend: Literal["builtin", "lm-eval"] = Field(
        "builtin", description="back end for the suites' items (task names imply lm-eval)", json_schema_extra=_EV
    )
    general_tasks: list[str] = Field(
        [], description="registered lm-eval tasks that count in R (e.g. arc_easy)", json_schema_extra=_EV
    )
    domain_tasks: list[str] = Field([], description="registered lm-eval tasks that count in K", json_schema_extra=_EV)
    lm_eval_include: str | None = Field(
        None, description="folder of extra lm-eval task YAMLs (lm-eval's --include_path)", json_schema_extra=_EV
    )
    limit: int | None = Field(
        None, ge=1, description="items per task (seeded, stratified by label)", json_schema_extra=_EV
    )
    seed: int = Field(0, description="seed of the --limit sample", json_schema_extra=_EV)
    batch_size: int = Field(16, ge=1, description="items per evaluation batch", json_schema_extra=_EV)
    scoring: ScoreConfig = Field(
        default_factory=ScoreConfig,
        description="how tensors are scored",
        json_schema_extra=cli("Scoring", prefix="scoring", skip=("device",)),  # run's --device is used
    )
    device: str = Field(
        "cpu",
        description="where merges and evaluation run",
        json_schema_extra=cli("Execution", metavar="[cpu|cuda|cuda:N]"),
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per evaluation (default: torch's choice)", json_schema_extra=_EX
    )
    workers: int | None = Field(
        None, ge=1, description="executor workers (process / ray)", json_schema_extra=cli("Execution", "-j")
    )
    executor: ExecutorKind = Field("local", description="where candidate evaluations run", json_schema_extra=_EX)
    ray_address: str | None = Field(
        None, description="Ray cluster address ('auto' or HOST:PORT; needs --executor ray)", json_schema_extra=_EX
    )
    cpt_cost_seconds: float | None = Field(
        None,
        gt=0,
        description="cost of one CPT run (default: ADAPTED/cost.json from spear-mm cpt)",
        json_schema_extra=_EX,
    )
    keep_all: bool = Field(False, description="write every candidate to RUN/models/ (disk!)", json_schema_extra=_OUT)
    out_dtype: DtypeName | None = Field(
        None, description="dtype of the written model(s) (default: the adapted model's)", json_schema_extra=_OUT
    )
    title: str | None = Field(None, description="report title", json_schema_extra=_OUT)
    report: bool = Field(True, description="write RUN/report.md and report.html", json_schema_extra=_OUT)

    @model_validator(mode="before")
    @classmethod
    def _flag_spellings(cls, data: Any) -> Any:
        return flag_spellings(data) if isinstance(data, dict) else data

    @field_validator("policies", "general_tasks", "domain_tasks", mode="before")
    @classmethod
    def _split_policies(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return list(v) if isinstance(v, tuple) else v

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, v: list[str]) -> list[str]:
        """Presets, 'measured' or plan .yaml files, each naming one candidate (refused before any scoring)."""
        return _checked(check_policy_names, v)

    @field_validator("operators", mode="before")
    @classmethod
    def _parse_operators(cls, v: Any) -> Any:
        """'regmean=0.3,0.5;fisher=0.5' as on the command line, or a mapping."""
        if isinstance(v, str):
            out: dict[str, list[float]] = {}
            for part in filter(None, v.replace(" ", "").split(";")):
                name, sep, values = part.partition("=")
                if name in out:
                    raise ValueError(f"'{name}' is given twice: give one curve per operator, e.g. '{name}=0.3,0.5'")
                try:
                    out[name] = [float(a) for a in values.split(",")]
                except ValueError:
                    sep = ""
                if not sep or not values:
                    raise ValueError(f"'{part}': write operators as 'regmean=0.3,0.5,0.7;fisher=0.5'")
            return out
        if isinstance(v, dict):  # the Python API's tuples are lists (strict mode)
            return {k: list(g) if isinstance(g, tuple) else g for k, g in v.items()}
        return v

    @field_validator("operators")
    @classmethod
    def _check_operators(cls, v: dict) -> dict:
        for name, grid in v.items():
            if not grid or any(not 0.0 < a < 1.0 for a in grid):
                raise ValueError(f"{name}: every α must lie strictly between 0 and 1, e.g. [0.3, 0.5, 0.7]")
        return v

    @field_validator("out_dtype", mode="before")
    @classmethod
    def _dtype_name(cls, v: Any) -> Any:
        """'bf16' or 'bfloat16', … (any case) as the enum: strict mode takes no plain string."""
        if isinstance(v, str) and not isinstance(v, DtypeName):
            names = {d.value: d for d in DtypeName}
            if v.strip().lower() not in names:
                raise ValueError(f"{v!r}: use one of {', '.join(names)}")
            return names[v.strip().lower()]
        return v

    @field_validator("sweep")
    @classmethod
    def _check_sweep(cls, v: str | bool | None) -> str | bool | None:
        """The sweep's grid parses (before any work, not when the candidates are built)."""
        return _checked(parse_sweep, v)

    @field_validator("uniform_grid", mode="before")
    @classmethod
    def _split_grid(cls, v: Any) -> Any:
        """'0.1,0.3,0.5' as the flag gives it."""
        if not isinstance(v, str):
            return v
        try:
            return [float(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"{v!r}: give comma-separated t values, e.g. 0.1,0.3,0.5,0.7,0.9") from None

    @field_validator("uniform_grid")
    @classmethod
    def _check_grid(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < t < 1.0 for t in v):
            raise ValueError("uniform_grid needs t values strictly between 0 and 1, e.g. [0.1, 0.3, 0.5, 0.7, 0.9]")
        return v

    @field_validator("base", "adapted", "out", "data_dir", "domain_probe", "general_probe", mode="before")
    @classmethod
    def _path_str(cls, v: Any) -> Any:
        """Paths as strings; an empty one is refused (it would silently mean the working folder)."""
        if isinstance(v, str) and not v.strip():
            raise ValueError("an empty path; give the file or folder (write '.' for the working folder)")
        return str(v) if isinstance(v, Path) else v

    @model_validator(mode="before")
    @classmethod
    def _python_values(cls, data: Any) -> Any:
        """Tuples, paths and a `PlannerConfig` given through the Python API are lists, strings and a dict (strict
        types otherwise)."""
        if not isinstance(data, dict):
            return data
        plain = {tuple: list, Path: str, PlannerConfig: lambda c: c.model_dump(exclude_unset=True)}
        return {k: next((f(v) for t, f in plain.items() if isinstance(v, t)), v) for k, v in data.items()}

    @model_validator(mode="before")
    @classmethod
    def _tasks_imply_lm_eval(cls, data: Any) -> Any:
        """lm-eval task names imply `backend: lm-eval` (unless a back end is given for the suites)."""
        if isinstance(data, dict) and any(data.get(k) for k in ("general_tasks", "domain_tasks", "tasks")):
            data = {"backend": "lm-eval", **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """Cross-field checks, made when the config is built: before any file is read or any work starts."""
        changed = sorted(k for k, v in self.planner if v != PlannerOptions.model_fields[k].default)
        if changed and "measured" not in self.policies:
            raise ValueError(
                f"planner options ({', '.join(changed)}) are used only by the measured policy, which is not among "
                f"the policies ({', '.join(self.policies) or 'none'}); add 'measured' to policies (it needs "
                "domain_probe) or remove the planner options"
            )
        for needs, what in (
            ("measured" in self.policies, "the measured policy needs"),
            (self.operators, "operators need"),
        ):
            if needs and self.domain_probe is None:
                raise ValueError(
                    f"{what} a domain probe: pass --domain-probe FILE (domain_probe: in run.yaml), held-out CPT "
                    "text (.txt or .jsonl with a 'text' field)"
                )
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"--ray-address needs --executor ray (executor: ray), not {self.executor}")
        if self.lm_eval_include is not None and not (self.general_tasks or self.domain_tasks):
            raise ValueError(
                "--lm-eval-include needs --tasks, --general-tasks or --domain-tasks (the task names; "
                "general_tasks: or domain_tasks: in run.yaml)"
            )
        both = sorted(set(self.general_tasks) & set(self.domain_tasks))
        if both:
            raise ValueError(f"lm-eval task(s) {both} are given as both general and domain; pick one")
        return self

    @classmethod
    def build(cls, source: str | Path | None = None, /, **overrides: Any) -> RunConfig:
        """A config from an optional YAML file, then `overrides` (None values leave the file's value).

        Args:
            source: a run.yaml written by hand or kept by an earlier run (RUN/run.yaml).
            overrides: field values, e.g. from CLI flags.
        Returns:
            The validated config. Raises SpearError naming the file and field on any mistake.
        """
        data: dict[str, Any] = {}
        if source is not None:
            loaded = load_strict_yaml(read_text(Path(source), what="run config"), str(source))
            if not isinstance(loaded, dict):
                raise SpearError(f"{source}: a run config is a mapping of fields (base:, adapted:, suites:, …).")
            try:
                data = flag_spellings(loaded)
            except ValueError as exc:
                raise SpearError(f"{source}: {exc}.") from exc
        given = {k: v for k, v in overrides.items() if v is not None}
        for section in _SECTIONS:  # a flag changes one planner (scoring) option of the file's
            if isinstance(given.get(section), dict) and isinstance(data.get(section), dict):
                given[section] = {**data[section], **given[section]}
        data.update(given)
        try:
            return cls.model_validate(data, strict=True)  # strict: nested models (scoring) too
        except ValidationError as exc:
            where = f"{source}" if source is not None else "run options"
            raise SpearError(f"{where}: {_problems(exc)}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def inputs(self) -> list[Path]:
        """The files and folders a run reads besides the pair: suites, data, probes, plan files, lm-eval tasks."""
        named = [self.data_dir, self.domain_probe, self.general_probe, self.lm_eval_include]
        if isinstance(self.suites, str) and self.suites.endswith((".yaml", ".yml")):
            named.append(self.suites)
        named += [p for p in self.policies if p.endswith((".yaml", ".yml"))]
        return [Path(p) for p in named if p]

    def save(self, path: Path) -> Path:
        atomic_write_text(
            path, "# the resolved configuration of this run: `spear-mm run --config` re-runs it\n" + self.to_yaml()
        )
        return path


def _checked(check: Any, value: Any) -> Any:
    """`value` if `check(value)` passes; its SpearError as the ValueError pydantic reports under the field."""
    try:
        check(value)
    except SpearError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    return value


_SECTIONS: dict[str, type[BaseModel]] = {"planner": PlannerOptions, "scoring": ScoreConfig}


def _problems(exc: ValidationError) -> str:
    """One sentence per mistake, naming the field; an unknown key lists the fields of its section."""
    problems, sections = [], []
    for e in field_errors(exc):
        msg = e.msg
        if isinstance(e.input, str) and e.type in _QUOTED:
            msg += f" (got the string {e.input!r}: {_QUOTED[e.type]}, without quotes)"
        problems.append(f"{e.field}: {msg}" if e.field else msg)
        if e.type == "extra_forbidden":
            section = str(e.loc[0]) if len(e.loc) > 1 else ""
            model = _SECTIONS.get(section, RunConfig)
            sections.append(f" Fields{' of ' + section if section else ''}: {', '.join(model.model_fields)}.")
    return "; ".join(problems) + "." + "".join(dict.fromkeys(sections))


_QUOTED = {"bool_type": "write true or false", "int_type": "write a whole number", "float_type": "write a number"}
