"""The `--device` of every command (merge, stats, evaluate, run, cpt): cpu, cuda or cuda:N, checked before any work."""

from __future__ import annotations

import torch

from spear_mm.errors import SpearError


def resolve_device(device: str, work: str = "merges") -> torch.device:
    """A torch device for the kernels; a clear error when CUDA is asked for but torch sees no GPU."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SpearError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpearError(
                f"--device {device} was requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpearError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible.")
    elif dev.type != "cpu":
        raise SpearError(f"--device {device}: spear-mm {work} on cpu or cuda.")
    return dev
