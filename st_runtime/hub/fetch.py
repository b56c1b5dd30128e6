"""Download a repository that ``st-export --push-to-hub`` made: its manifest, then only the files the manifest
lists (graphs only of the variant asked for, when one is), each checked against the manifest's size and sha256,
placed into the export cache in one rename. Runs without torch (huggingface_hub is the only addition)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import ArtifactCorruptError, ModelNameError, VariantError
from ..manifest import MANIFEST_NAME, graph_files, load_manifest, sha256_file
from . import cache

logger = logging.getLogger("st_runtime")


def settings(variant: str | None) -> str:
    """The cache key part of a download: every variant, or only the graphs of the one asked for."""
    return "hub-all" if variant in (None, "fastest") else f"hub-{variant}"


def wanted_files(manifest: dict[str, Any], variant: str | None, where: str) -> list[str]:
    """The manifest's files to download: all of them, or, for a named ``variant``, all but other variants' graphs."""
    files = list(manifest["files"])
    if variant in (None, "fastest"):
        return files
    towers = manifest["towers"]
    if not any(variant in t["variants"] for t in towers.values()):
        have = sorted({v for t in towers.values() for v in t["variants"]})
        raise VariantError(f"variant {variant!r} is not in {where}; it has {have}. Pass one of them (or none).")
    others = {
        name
        for tower in towers.values()
        for vname, vspec in tower["variants"].items()
        if vname != variant
        for name in graph_files(where, manifest, vspec)
    }
    keep = {
        name
        for tower in towers.values()
        if variant in tower["variants"]
        for name in graph_files(where, manifest, tower["variants"][variant])
    }
    return [f for f in files if f not in others or f in keep]


def _check(path: Path, record: dict[str, Any], where: str, name: str) -> None:
    size = path.stat().st_size
    digest = sha256_file(path) if size == record["size"] else None
    if digest != record["sha256"]:
        found = f"sha256 {digest}" if digest else f"{size} bytes"
        raise ArtifactCorruptError(
            f"{name} of {where} has {found}, but its manifest records sha256 {record['sha256']} ({record['size']} "
            "bytes): the file was altered or damaged, so it is refused and nothing was placed in the cache. Remove "
            "the repository from the Hugging Face cache (`hf cache rm`) and load it again; if it persists, the "
            "repository itself is damaged: re-export and push it again."
        )


def _link(src: Path, dst: Path) -> None:
    """Hard-link a file of the Hugging Face cache (no second copy on disk); copy it across file systems."""
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _download(repo_id: str, commit: str, name: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, name, revision=commit))
    except LocalEntryNotFoundError as exc:
        raise ModelNameError(
            f"{name} of {repo_id} (commit {commit[:12]}) is not in the local Hugging Face cache and the hub cannot "
            f"be reached ({exc}). Load it once online (HF_HUB_OFFLINE unset), or copy an exported folder here."
        ) from exc


def fetch(repo_id: str, commit: str, variant: str | None, model: str) -> Path:
    """The cache folder holding ``repo_id`` at ``commit`` (downloaded and checked first, when missing)."""
    dest = cache.entry_path(repo_id, commit, settings(variant))
    if cache.complete(dest):
        return dest
    with cache.locked(dest, lambda: logger.info("waiting for another process downloading %s", repo_id)):
        if cache.complete(dest):
            return dest
        cache.clear_leftovers(dest)
        t0 = time.perf_counter()
        where = f"{repo_id} (commit {commit[:12]})"
        manifest_file = _download(repo_id, commit, MANIFEST_NAME)
        manifest = load_manifest(manifest_file.parent)  # schema, format version, no file outside the folder
        names = wanted_files(manifest, variant, where)
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            for name in names:
                local = _download(repo_id, commit, name)
                _check(local, manifest["files"][name], where, name)
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                _link(local, tmp / name)
            _link(manifest_file, tmp / MANIFEST_NAME)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    size = sum((dest / n).stat().st_size for n in names)
    logger.info(
        "%s: %d files (%.1f MB) of %s checked and placed in %s in %.1f s",
        model,
        len(names),
        size / 1e6,
        where,
        dest,
        time.perf_counter() - t0,
    )
    return dest
