"""Fill the export cache with ``st-export``, run as its own process: the loading process never imports torch
(and gets its memory back), and the export writes its folder under a temporary name that it renames into place
only once validated, so a killed export leaves nothing the cache would serve. The process dies with the loading
process (Linux), and a file lock makes concurrent loads (server workers, Ray actors, two shells) export once."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ExportFailedError, ExportUnavailableError
from ..manifest import FORMAT_VERSION
from . import cache

logger = logging.getLogger("st_runtime")

# The opset the cache exports with: st-export's default (exporters.export.DEFAULT_OPSET; a test checks they agree).
EXPORT_OPSET = 17
# The variants besides fp32 the cache exports: st-export's CPU default. ST_RUNTIME_EXPORT_VARIANTS overrides it
# (comma-separated, empty for fp32 only); a variant= asked for at load is added.
DEFAULT_EXPORT_VARIANTS = ("opt", "int8")
# What st-export needs besides the runtime (the [export] extra).
EXPORT_STACK = ("exporters", "torch", "transformers", "sentence_transformers", "onnx", "huggingface_hub")
EXPORT_EXTRA = 'pip install "st-runtime[export]"'

# st-export's command line, run in the child process only (this process never imports the exporter)
EXPORTER_CLI = "exporters.cli"
# Run in the child: on Linux, die with the loading process (PR_SET_PDEATHSIG), so that a load killed mid-export
# leaves no export running behind it; then st-export's own command line (argv: parent pid, module, arguments).
_CHILD = """
import ctypes, importlib, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("st-export: the loading process is gone")
sys.exit(importlib.import_module(sys.argv[2]).main(sys.argv[3:]))
"""


def export_variants(variant: str | None) -> list[str]:
    env = os.environ.get("ST_RUNTIME_EXPORT_VARIANTS")
    names = list(DEFAULT_EXPORT_VARIANTS) if env is None else [v.strip() for v in env.split(",") if v.strip()]
    if variant not in (None, "fastest", "fp32"):
        names.append(str(variant))
    return [v for v in dict.fromkeys(names) if v != "fp32"]


def settings(variant: str | None) -> str:
    """The cache key part of an export: this st-runtime's manifest format, the opset and the variants."""
    return f"export-fmt{FORMAT_VERSION}-opset{EXPORT_OPSET}-" + "+".join(["fp32", *export_variants(variant)])


def missing_export_stack() -> list[str]:
    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            return True

    return [m for m in EXPORT_STACK if absent(m)]


def export(repo_id: str, commit: str, variant: str | None, model: str) -> Path:
    """The cache folder of ``repo_id`` at ``commit`` exported with these settings (exported first, once)."""
    dest = cache.entry_path(repo_id, commit, settings(variant))
    if cache.complete(dest):
        return dest
    missing = missing_export_stack()
    if missing:
        raise ExportUnavailableError(
            f"{model!r} ({repo_id}, commit {commit[:12]}) is a sentence-transformers model, not an st-runtime export, "
            f"and it is not in the export cache ({cache.cache_root()}). Exporting it needs the export extra, which "
            f"this environment lacks ({', '.join(missing)}). Either install it here: pip install torch (the CPU "
            f"build is enough), then {EXPORT_EXTRA}; the first load then exports it once into the cache. Or run "
            f"`st-export {repo_id}` on a machine that has it and copy the folder here (load it by its path), or "
            f"push it there with `st-export {repo_id} --push-to-hub ORG/REPO` and load ORG/REPO."
        )
    with cache.locked(dest, lambda: logger.info("%s: waiting for another process exporting it", model)):
        if cache.complete(dest):
            return dest
        cache.clear_leftovers(dest)
        logger.info("%s: not in the export cache; exporting %s (commit %s) with st-export", model, repo_id, commit)
        t0 = time.perf_counter()
        _run_st_export(repo_id, commit, dest, export_variants(variant))
    logger.warning(
        "%s: exported %s (commit %s) with st-export into %s in %.0f s, once: later loads use this folder",
        model,
        repo_id,
        commit[:12],
        dest,
        time.perf_counter() - t0,
    )
    return dest


def _run_st_export(repo_id: str, commit: str, dest: Path, variants: list[str]) -> None:
    args = [
        repo_id,
        "--revision",
        commit,
        "-o",
        str(dest),
        "--opset",
        str(EXPORT_OPSET),
        "--variants",
        ",".join(variants),
    ]
    log = dest.with_name(dest.name + ".log")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(os.getpid()), EXPORTER_CLI, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc != 0 or not cache.complete(dest):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ExportFailedError(
            f"st-export {' '.join(args)} failed (exit status {rc}); nothing was added to the export cache. "
            f"Its output ({log}) ends with:\n{tail}"
        )
