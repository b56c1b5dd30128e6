"""The on-disk contract between st-export and st_runtime.

An exported folder holds ``manifest.json`` plus the files it lists. The manifest is a JSON object whose
schema (every key, at every depth) lives in :mod:`st_runtime.schema`; ``FORMAT_VERSION`` is bumped whenever
a reader of an older version would misread it. The exporter builds the manifest with :func:`file_record`
and writes it with :func:`dump_manifest`; the runtime reads it with :func:`load_manifest` and checks the
files with :func:`verify_files`. Both sides check the schema.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    ManifestError,
    ManifestVersionError,
    ModelFolderError,
)
from .schema import SchemaError, check_manifest

# 1: one text tower with a Hugging Face tokenizer.
# 2: towers other than text (CLIP's "image" with its "preprocessor"), tokenizer "kind" ("hf" or "whitespace")
#    and "pairs". A version-1 reader would misread these (image paths embedded as text, a whitespace vocabulary
#    parsed as tokenizer.json), so it must refuse them. Version-1 manifests read as before.
# 3: model tasks other than embedding (cross-encoder "scores", sparse-embedding "sparse"), the text tower's
#    token_output, the tokenizer's padding_side and add_special_tokens (decoder and static models), and each
#    variant's measured cpu_batching and the tower's cpu_routing. A version-2 reader would refuse these keys as
#    unknown and advise re-exporting, where upgrading st-runtime is the fix; the version says so first.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest entry of one file: its size and sha256."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def read_spec(manifest: dict[str, Any]):
    """The typed view (st_runtime.spec.ModelSpec) of a manifest that passed the schema check."""
    from .kinds import get
    from .schema import DEFAULT_TASK
    from .spec import ModelSpec

    return ModelSpec.from_dict(manifest, get(manifest.get("task", DEFAULT_TASK)).output)


def dump_manifest(manifest: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write ``manifest.json`` into ``folder`` (through a temporary file and a rename), after checking it
    against the schema and building the runtime's typed view of it: a manifest the runtime would refuse is never
    written."""
    path = Path(folder) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    try:
        as_read = json.loads(text)  # as it will be read (tuples become lists)
        check_manifest(as_read)
        read_spec(as_read)
    except SchemaError as exc:
        raise ValueError(
            f"st-export built a manifest that does not fit the schema ({exc}); this is a bug in "
            "st-export, please report it."
        ) from exc
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _schema_error(path: Path, exc: SchemaError) -> ManifestError:
    return ManifestError(
        f"{path}: {exc} The folder was not written by this st-export or was edited by hand; "
        "re-export the model with `st-export`."
    )


def load_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check the manifest of an exported folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(
            f"Model folder {str(folder)!r} does not exist. Pass the folder written by `st-export NAME` "
            "(by default exported_models/NAME)."
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"{str(folder)!r} has no {MANIFEST_NAME}, so it is not an st-export folder. "
            f"Run `st-export MODEL -o {folder}` to create one."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{path} is not valid JSON ({exc}). The file is damaged; re-export the model with `st-export`."
        ) from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} must hold a JSON object. Re-export the model with `st-export`.")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        from . import __version__

        raise ManifestVersionError(
            f"{path} has format_version {version}, but st-runtime {__version__} reads format versions up "
            f"to {FORMAT_VERSION}. Upgrade st-runtime (`pip install -U st-runtime`) or export the model "
            "with the st-export that matches this runtime."
        )
    try:
        check_manifest(manifest)
    except SchemaError as exc:
        raise _schema_error(path, exc) from None
    for fname in manifest["files"]:
        if Path(fname).is_absolute() or ".." in Path(fname).parts:
            raise ManifestError(
                f"{path}: file entry {fname!r} points outside the model folder, which an "
                "st-export manifest never does; the manifest was edited or forged. Re-export the "
                "model with `st-export` and do not load model folders from untrusted sources."
            )
    return manifest


def verify_files(
    folder: str | os.PathLike, manifest: dict[str, Any], names: list[str] | None = None, checksums: bool = True
) -> None:
    """Check that the files of the manifest are present with the recorded size (and sha256)."""
    folder = Path(folder)
    for name in names if names is not None else list(manifest["files"]):
        rec = manifest["files"][name]
        path = folder / name
        if not path.is_file():
            raise ArtifactMissingError(
                f"{path} is listed in the manifest but missing. The folder was copied incompletely; copy it "
                "again or re-export the model with `st-export`."
            )
        size = path.stat().st_size
        if size != rec["size"]:
            raise ArtifactCorruptError(
                f"{path} has {size} bytes but the manifest records {rec['size']}: the file is truncated or was "
                "replaced. Copy the folder again or re-export the model with `st-export`."
            )
        if checksums:
            digest = sha256_file(path)
            if digest != rec["sha256"]:
                raise ArtifactCorruptError(
                    f"{path} has sha256 {digest}, but the manifest records {rec['sha256']}: the file was altered "
                    "or damaged. Copy the folder again or re-export the model with `st-export`. "
                    "(verify_checksums=False skips this check, at your own risk.)"
                )


def graph_files(folder: str | os.PathLike, manifest: dict[str, Any], variant: dict[str, Any]) -> list[str]:
    """The files a graph variant needs: its ``.onnx`` file and, for graphs stored with ONNX external data,
    the weights file next to it (``<file>.data``, or the names the variant lists under
    ``external_data_files``). All of them are then size- and checksum-checked like the graph."""
    graph = variant["file"]
    names = [graph]
    extra = variant.get("external_data_files")
    if extra is None:
        extra = [graph + ".data"] if graph + ".data" in manifest["files"] else []
    for name in extra:
        if name not in manifest["files"]:
            raise ManifestError(
                f"{Path(folder) / MANIFEST_NAME}: variant file {graph!r} uses external data "
                f"{name!r}, which is not listed under 'files'. Re-export the model with `st-export`."
            )
        names.append(name)
    if variant.get("external_data") and len(names) == 1:
        raise ManifestError(
            f"{Path(folder) / MANIFEST_NAME}: {graph!r} is marked as using external data but no "
            f"{graph + '.data'!r} is listed under 'files'. Re-export the model with `st-export`."
        )
    return names
