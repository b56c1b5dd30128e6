"""One resolve step for every door (the model classes, ``st_runtime.load``, st-serve, st-embed, Ray): a folder is
returned as it is; a name is turned into a folder of the export cache, made once when missing."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNameError
from ..manifest import MANIFEST_NAME
from . import cache

logger = logging.getLogger("st_runtime")

HUB_EXTRA = 'pip install "st-runtime[hub]"'


@dataclass(frozen=True)
class Resolved:
    """Where a model argument led: the folder to load and, for a name, the repository and commit it came from."""

    path: Path
    repo_id: str | None = None
    commit: str | None = None


def resolve_model(model: str | os.PathLike, revision: str | None = None, variant: str | None = None) -> Path:
    """The folder to load for ``model``: a folder as is; a hub id, short name or ``hf://`` URI through the export
    cache (see :func:`locate`)."""
    return locate(model, revision, variant).path


def locate(model: str | os.PathLike, revision: str | None = None, variant: str | None = None) -> Resolved:
    """Resolve ``model``. For a name: the commit of ``revision`` (default: main) is asked of the hub (or, offline,
    read from the Hugging Face cache), and the cache folder for it (and for ``variant``'s graphs) is returned,
    downloaded from a repository that st-export pushed, or exported here once."""
    repo_id = cache.repo_id_of(model)
    if repo_id is None:
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to hub names; {str(model)!r} is a local folder.")
        return Resolved(Path(model))
    from . import export, fetch

    keys = {True: fetch.settings(variant), False: export.settings(variant)}
    if cache.is_commit(revision):  # an immutable commit already in the cache: no need to ask anyone
        found = _cached(repo_id, str(revision), keys, None)
        if found is not None:
            return found
    commit, pre_exported = _commit(model, repo_id, revision)
    found = _cached(repo_id, commit, keys, pre_exported)
    if found is not None:
        return found
    if pre_exported is None:  # the hub could not be asked and nothing for this commit is in the cache
        raise _not_cached(model, repo_id, revision, commit)
    make = fetch.fetch if pre_exported else export.export
    return Resolved(make(repo_id, commit, variant, str(model)), repo_id, commit)


def _cached(repo_id: str, commit: str, keys: dict[bool, str], pre_exported: bool | None) -> Resolved | None:
    for kind, settings in keys.items():
        path = cache.entry_path(repo_id, commit, settings)
        if pre_exported in (None, kind) and cache.complete(path):
            return Resolved(path, repo_id, commit)
    return None


def _commit(model: object, repo_id: str, revision: str | None) -> tuple[str, bool | None]:
    """The commit ``revision`` names and whether the repository holds an st-runtime export (None: unknown, the hub
    being out of reach and the Hugging Face cache without it, where the commit comes from this cache's refs)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        return _from_refs(model, repo_id, revision, "huggingface_hub is not installed")
    try:  # only the manifest: a repository st-export pushed is told apart from a model to export
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[MANIFEST_NAME]))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelNameError(
            f"{model!r}: the Hugging Face hub has no accessible model {repo_id!r} ({type(exc).__name__}), and no "
            f"folder of that name exists here. Check the name (short names are looked up under "
            f"{cache.DEFAULT_ORG}/), log in (`hf auth login`) for private or gated models, or pass a folder."
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNameError(f"{repo_id!r} has no revision {revision!r} on the Hugging Face hub.") from exc
    except LocalEntryNotFoundError as exc:
        return _from_refs(model, repo_id, revision, f"the hub cannot be reached ({exc})")
    cache.write_ref(repo_id, revision, snapshot.name)
    return snapshot.name, (snapshot / MANIFEST_NAME).is_file()


def _from_refs(model: object, repo_id: str, revision: str | None, why: str) -> tuple[str, None]:
    commit = cache.read_ref(repo_id, revision)
    if commit is None:
        raise _not_cached(model, repo_id, revision, None, why)
    logger.info("%s: %s; using the export cache's %s -> %s", repo_id, why, revision or "main", commit)
    return commit, None


def _not_cached(model: object, repo_id: str, revision: str | None, commit: str | None, why: str = "") -> Exception:
    where = f"{repo_id} at {revision or 'main'}" + (f" (commit {commit[:12]})" if commit else "")
    try:
        import huggingface_hub  # noqa: F401

        hub = ""
    except ImportError:
        hub = f"Install the hub extra ({HUB_EXTRA}) to download it or resolve the name. "
    return ModelNameError(
        f"{model!r}: {where} is not in the export cache ({cache.cache_root()})"
        + (f", and {why}" if why else "")
        + f". {hub}With HF_HUB_OFFLINE=1 only cached models load: load it once online, or run `st-export {repo_id}` "
        "on a machine that has the export extra and copy the folder here (pass its path)."
    )
