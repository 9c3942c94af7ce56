"""Where `spear-mm report -o` may write: never into a model folder, never over a file the report reads."""

from __future__ import annotations

import json
from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.io.outputs import check_not_input, input_paths, resolved

REPORT_FILES = ("report.md", "report.html", "report_files")
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report_inputs(run_dir: Path) -> list[Path]:
    """What a report of `run_dir` reads, and the models it names: summary.json, eval results, layer scores, and
    the base, adapted, chosen and evaluated model folders."""
    summary = _read_json(run_dir / "summary.json")
    results = sorted((run_dir / "eval" if (run_dir / "eval").is_dir() else run_dir).glob("*.json"))
    models = [summary.get(k) for k in ("base_path", "adapted_path", "chosen_model_path")]
    models += [_read_json(p).get("model_path") for p in results]
    files = [run_dir / "summary.json", *results, run_dir / "scores" / "layer_scores.csv"]
    return [*files, *(Path(m) for m in models if isinstance(m, str) and m)]


def check_report_output(run_dir: str | Path, out: str | Path) -> Path:
    """Refuse a report folder that is a model folder or lies in a model the run names, or whose report
    files would replace a file the report reads; returns the resolved folder."""
    final = resolved(out)
    found = [name for name in _MODEL_FILES if (final / name).exists()]
    if found:
        raise SpearError(
            f"report folder {final} holds a model ({', '.join(found)}); spear-mm never writes a report into a model "
            "folder (it may be published or the only copy). Choose another -o, e.g. the run folder."
        )
    inputs = report_inputs(Path(run_dir))
    for model in input_paths([p for p in inputs if p.suffix not in (".json", ".csv")]):
        if final == model or model in final.parents:  # a folder that merely holds models (the run's) is fine
            raise SpearError(
                f"report folder {final} is or lies inside the model {model}; spear-mm never writes a report into a "
                "model folder. Choose another -o, e.g. the run folder."
            )
    for name in REPORT_FILES:
        check_not_input(final / name, inputs, "report file")
    return final
