"""Validation: task types, suites as data, the built-in and lm-eval back ends, and `evaluate`."""

from spear_mm.evaluation.loaders import MissingDataError
from spear_mm.evaluation.runner import evaluate, evaluate_many, load_model, tokenizer_fingerprint
from spear_mm.evaluation.suites import SUITES, Suite, get_suite, load_task, load_tasks
from spear_mm.evaluation.tasks import GenItem, LoadedTask, MCItem, TaskSpec, TextItem, select_items

__all__ = [
    "SUITES",
    "GenItem",
    "LoadedTask",
    "MCItem",
    "MissingDataError",
    "Suite",
    "TaskSpec",
    "TextItem",
    "evaluate",
    "evaluate_many",
    "get_suite",
    "load_model",
    "load_task",
    "load_tasks",
    "select_items",
    "tokenizer_fingerprint",
]
