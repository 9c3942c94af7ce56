"""spear-mm: Selective Parameter Evaluation and Restoration via Model Merging.

Repairs forgetting after domain continual pre-training (CPT) post hoc, from the base and adapted
checkpoints alone: score layers, plan which to restore, SLERP them back toward the base, validate.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'spear_mm' has no attribute {name!r}")


__all__ = ["__version__", *_API]
