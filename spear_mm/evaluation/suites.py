"""Suites as data: the shipped suites (YAML in spear_mm/_data/suites), users' suite files, and the task loader."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from spear_mm.errors import SpearError, field_errors, read_text
from spear_mm.evaluation.loaders import LOADERS, MissingDataError
from spear_mm.evaluation.tasks import LoadedTask, TaskSpec, select_items
from spear_mm.io.strict_yaml import load_strict_yaml

log = logging.getLogger(__name__)

# The shipped suites are YAML files in the package data, read by the same loader as a user's suite file; the
# embedded demo data (original writing, shipped in the package) needs no --data-dir.
DATA = Path(__file__).resolve().parents[1] / "_data"
DEMO_DATA = DATA / "demo"  # the embedded demo data (its suite's files, CPT corpus, probe)
SUITES: dict[str, Path] = {p.stem: p for p in sorted((DATA / "suites").glob("*.yaml"))}  # name -> suite file


class Suite(BaseModel):
    """A named list of task specs (a YAML file: `name: ...`, `tasks: [...]`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tasks: tuple[TaskSpec, ...]


def _specs(
    name: str, raw: Iterable[dict[str, Any]], group: str | None = None, source: Path | None = None
) -> tuple[TaskSpec, ...]:
    specs = []
    for i, t in enumerate(raw, 1):
        if not isinstance(t, dict):
            raise SpearError(f"{_where(name, source)}: task {i} is {type(t).__name__}, not a mapping of fields.")
        try:
            specs.append(TaskSpec(**({"group": group} if group else {}) | dict(t)))
        except ValidationError as exc:
            raise SpearError(f"{_where(name, source)}: task {i} ({t.get('name', '?')!r}): {_problems(exc)}") from None
    return tuple(specs)


def _where(name: str, source: Path | None) -> str:
    return f"suite file {source}" if source is not None else f"suite {name!r}"


def _problems(exc: ValidationError) -> str:
    """Pydantic errors as one line each: `field: what is wrong (allowed values)`."""
    parts = []
    for e in field_errors(exc):
        msg = "unknown field (check its spelling)" if e.type == "extra_forbidden" else e.msg
        parts.append(f"{e.field or 'task'}: {msg}")
    return "; ".join(parts) + ". Fix the suite file (fields and values in docs/evaluation.md)."


def get_suite(name: str) -> Suite:
    """A shipped suite by name ('general', 'domain', 'demo') or a suite YAML file."""
    if name in SUITES:
        return load_suite_file(SUITES[name])
    path = Path(name).expanduser()
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise SpearError(
                f"suite file {path}: no such file (a suite is {', '.join(sorted(SUITES))} or a suite .yaml file); "
                "check the path."
            )
        return load_suite_file(path)
    raise SpearError(f"unknown suite {name!r}: use one of {sorted(SUITES)} or a suite .yaml file")


def load_suite_file(path: Path) -> Suite:
    """A suite from YAML: a list of task dicts, or a mapping with `name`, optional `group`, optional `data_dir`
    (the folder, relative to this file, that the tasks' relative paths are under) and `tasks`."""
    data = load_strict_yaml(read_text(path, "suite file"), f"suite file {path}")  # a key given twice is refused
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise SpearError(f"suite file {path}: expected a list of tasks or a mapping with a 'tasks' list")
    unknown = sorted(set(data) - _SUITE_KEYS)
    if unknown:
        raise SpearError(
            f"suite file {path}: unknown top-level key(s) {unknown}; a suite has only {sorted(_SUITE_KEYS)}. "
            "Check the spelling (or move the field into each task)."
        )
    if data.get("group") not in (None, "general", "domain"):
        raise SpearError(f"suite file {path}: group {data['group']!r}: use 'general' (enters R) or 'domain' (K).")
    name = str(data.get("name", path.stem))
    tasks = data["tasks"]
    if data.get("data_dir") is not None:
        tasks = _under(_folder(data["data_dir"], path), tasks)
    return Suite(name=name, tasks=_specs(name, tasks, data.get("group"), path))


_SUITE_KEYS = {"name", "group", "data_dir", "tasks"}


def _folder(value: Any, path: Path) -> Path:
    """A suite's `data_dir`: an existing folder (relative to the suite file, or absolute)."""
    folder = Path(path).parent / Path(str(value)).expanduser()
    if not isinstance(value, str) or not folder.is_dir():
        raise SpearError(
            f"suite file {path}: data_dir {value!r} is not a folder (looked for {folder}); give the folder of the "
            "tasks' data files, relative to the suite file or absolute, or leave it out to use --data-dir."
        )
    return folder


def _under(folder: Path, tasks: list[Any]) -> list[Any]:
    """Task dicts whose relative `path` is made absolute under `folder` (other entries unchanged)."""
    root = folder.resolve()
    out: list[Any] = []
    for t in tasks:
        rel = t.get("path") if isinstance(t, dict) else None
        if isinstance(rel, str) and not Path(rel).expanduser().is_absolute():
            t = {**t, "path": str(root / rel)}
        out.append(t)
    return out


def resolve_tasks(tasks: str | Suite | TaskSpec | dict[str, Any] | Sequence[Any]) -> list[TaskSpec]:
    """Task specs from 'general,domain', a suite, a spec, a dict or a list of any of those (names de-duplicated)."""
    if isinstance(tasks, str):
        parts: list[Any] = [p.strip() for p in tasks.split(",") if p.strip()]
    elif isinstance(tasks, (Suite, TaskSpec, dict)):
        parts = [tasks]
    else:
        parts = list(tasks)
    specs: list[TaskSpec] = []
    for part in parts:
        if isinstance(part, str):
            specs.extend(get_suite(part).tasks)
        elif isinstance(part, Suite):
            specs.extend(part.tasks)
        elif isinstance(part, TaskSpec):
            specs.append(part)
        elif isinstance(part, dict):
            specs.extend(_specs(str(part.get("name", "task")), [part]))
        else:
            raise SpearError(f"cannot use {part!r} as a task: give a suite name, a TaskSpec or a dict")
    seen: dict[str, TaskSpec] = {}
    for spec in specs:
        if spec.name in seen and seen[spec.name] != spec:
            raise SpearError(f"two different tasks are named {spec.name!r}")
        seen[spec.name] = spec
    return list(seen.values())


def load_task(
    spec: TaskSpec, data_dir: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> LoadedTask:
    """Read a task's items (SpearError when its data is missing), then sample `limit` of them (stratified; the
    task's own `limit` caps it further)."""
    loader = LOADERS.get(spec.loader)
    if loader is None:
        raise SpearError(f"task {spec.name!r}: unknown loader {spec.loader!r}; known: {sorted(LOADERS)}")
    items, source = loader(spec, Path(data_dir).expanduser() if data_dir is not None else None)
    if not items:
        raise SpearError(f"task {spec.name!r}: no items found in {source}")
    kinds = {"multiple_choice": "MCItem", "perplexity": "TextItem", "generation": "GenItem"}
    if type(items[0]).__name__ != kinds[spec.kind]:
        raise SpearError(f"task {spec.name!r}: loader {spec.loader!r} does not produce {spec.kind} items")
    caps = [n for n in (limit, spec.limit) if n is not None]
    chosen = select_items(items, min(caps) if caps else None, seed)
    log.debug("task %s: %d of %d items from %s", spec.name, len(chosen), len(items), source)
    return LoadedTask(spec=spec, items=tuple(chosen), total=len(items), source=source)


def load_tasks(
    tasks: str | Suite | Sequence[Any],
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    skip_missing: bool = False,
    skipped: dict[str, str] | None = None,
) -> list[LoadedTask]:
    """Load every task of `tasks`. With `skip_missing`, a task whose data file is missing is skipped with a
    warning (and its reason recorded in `skipped` when given); otherwise that is a SpearError."""
    loaded: list[LoadedTask] = []
    for spec in resolve_tasks(tasks):
        try:
            loaded.append(load_task(spec, data_dir, limit, seed))
        except MissingDataError as exc:
            if not skip_missing:
                raise
            log.warning("skipping task %s: %s", spec.name, exc)
            if skipped is not None:
                skipped[spec.name] = str(exc)
    return loaded
