"""Validation: task types, suites as data, the built-in and lm-eval back ends, and `evaluate`.

The names below load on first use (like `spear_mm`'s own API), so a light module of this package (suites,
uniform_curve, metrics) does not import transformers through this file."""

from __future__ import annotations

from spear_mm import lazy_exports

_API = {
    "MissingDataError": "loaders",
    "evaluate": "runner",
    "evaluate_many": "runner",
    "load_model": "runner",
    "tokenizer_fingerprint": "runner",
    "SUITES": "suites",
    "Suite": "suites",
    "get_suite": "suites",
    "load_task": "suites",
    "load_tasks": "suites",
    "GenItem": "tasks",
    "LoadedTask": "tasks",
    "MCItem": "tasks",
    "TaskSpec": "tasks",
    "TextItem": "tasks",
    "select_items": "tasks",
}


__getattr__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _API.items()})

__all__ = sorted(_API)
