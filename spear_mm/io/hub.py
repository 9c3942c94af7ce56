"""Model references as users write them: a local folder, or a Hugging Face hub id `org/name[@revision]`.

`resolve_model` is the one resolver every command goes through (checkpoints, evaluation, CPT). A local folder
always wins; otherwise the id is fetched with `huggingface_hub.snapshot_download` — weights (safetensors),
their index, config, tokenizer and generation files only — into the usual hub cache. With `HF_HUB_OFFLINE=1`
only the cache is used, and a miss is an error naming the id and the cache folder; when the hub cannot be
reached, huggingface_hub falls back to a cached snapshot of the revision. `hub_ref(path)` reads the
id and the commit back from a cache snapshot path, so provenance (plan, model card, run summary) can say
which revision was used without any state being passed around.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spear_mm.errors import SpearError

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
ALLOW_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class HubRef:
    """A model in the hub cache: its id and the commit its snapshot holds."""

    repo_id: str
    commit: str

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None); anything else -> None."""
    m = _HUB_ID.fullmatch(text.strip())
    if m is None or ".." in m.group("repo"):
        return None
    return m.group("repo"), m.group("rev")


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, then HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(ref: str | Path) -> Path:
    """A local folder for `ref`: the folder itself if it exists, else the hub snapshot of `org/name[@rev]`."""
    path = Path(ref).expanduser()
    if path.exists() or isinstance(ref, Path) and path.is_absolute():
        return path
    parsed = parse_hub_id(str(ref))
    if parsed is None:
        return path  # not an id: the caller reports the missing folder
    repo_id, revision = parsed
    return _download(repo_id, revision, str(ref))


def _download(repo_id: str, revision: str | None, ref: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # a dependency of transformers: only a broken install lacks it
        raise SpearError(f"'{ref}' is not a local folder, and huggingface_hub is not installed to fetch it.") from exc
    cache = hub_cache_dir()
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            allow_patterns=list(ALLOW_PATTERNS),
            local_files_only=_offline(),
            endpoint=os.environ.get("HF_ENDPOINT") or None,  # read now: huggingface_hub reads it at import
        )
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types (offline miss, 404, auth, network)
        raise SpearError(_explain(ref, repo_id, revision, folder, exc)) from exc
    return Path(local)


def _explain(ref: str, repo_id: str, revision: str | None, folder: Path, exc: Exception) -> str:
    rev = revision or "main"
    what = f"'{ref}' is not a local folder, so it was read as the hub model {repo_id} (revision {rev})"
    if _offline():
        return (
            f"{what}, but HF_HUB_OFFLINE=1 and that revision is not in the hub cache {folder}. Fetch it once "
            f"online (`spear-mm inspect {repo_id}{'@' + revision if revision else ''}`), point HF_HUB_CACHE at a "
            "cache that holds it, or pass a local model folder."
        )
    return (
        f"{what}, which could not be fetched ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
        f"Check the id and revision, your network and token (HF_TOKEN for gated models), or set HF_HUB_OFFLINE=1 "
        f"to use the cache ({folder})."
    )


def hub_ref(path: str | Path | None) -> HubRef | None:
    """The hub id and commit of a path inside a hub cache snapshot (`models--org--name/snapshots/<sha>`)."""
    if path is None:
        return None
    parts = Path(path).parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            repo = parts[i][len("models--") :].replace("--", "/", 1)
            return HubRef(repo, parts[i + 2])
    return None


def hub_label(path: str | Path | None) -> str | None:
    """'org/name@<commit>' for a hub snapshot path, else None (for provenance fields)."""
    ref = hub_ref(path)
    return None if ref is None else str(ref)
