"""spear-mm: Selective Parameter Evaluation and Restoration via Model Merging.

Repairs forgetting after domain continual pre-training (CPT) post hoc, from the base and adapted
checkpoints alone: score layers, plan which to restore, SLERP them back toward the base, validate.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public API is imported lazily so `import spear_mm` stays fast (torch/transformers load on use).
_API = {
    "analyze": "spear_mm.scoring.layers",
    "make_plan": "spear_mm.planning.policies",
    "merge": "spear_mm.merging.merge",
    "evaluate": "spear_mm.evaluation",
    "run": "spear_mm.pipeline.run",
    "Plan": "spear_mm.planning.plan",
    "Checkpoint": "spear_mm.io.checkpoint",
    "RunConfig": "spear_mm.pipeline.config",
    "ProgressEvent": "spear_mm.progress",
}


def lazy_exports(package: str, api: dict[str, str]):
    """A module `__getattr__` that imports `api[name]` (a module's full name) on first use of `name`: packages
    export their names without importing torch and transformers at `import`."""

    def __getattr__(name: str):
        if name in api:
            return getattr(importlib.import_module(api[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _API)

__all__ = ["__version__", *_API]
