from __future__ import annotations

import importlib.util

import numpy as np
import pytest

# whether the export extra (torch, sentence-transformers, onnx) is installed: tests that need it skip without
HAVE_EXPORT = all(importlib.util.find_spec(m) for m in ("torch", "sentence_transformers", "onnx"))
needs_export = pytest.mark.skipif(not HAVE_EXPORT, reason="needs the export extra: pip install 'st-runtime[export]'")

# word lists that tests build random texts from (one line each: as list literals they would run a word a line)
COMMON_WORDS = "the of and to in is was for on are with as by at from his her they this that".split()  # noqa: SIM905
FOX_WORDS = "the quick brown fox jumps over a lazy dog".split()  # noqa: SIM905

TEXTS = [
    "How big is London",
    "London has 9,787,426 inhabitants at the 2011 census.",
    "a",
    "",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "I love this! 😀🎉",
    " ".join(["a long text that goes well past the maximum sequence length"] * 40),
    "The weather is lovely today.",
]


def row_cosines(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_parity(ref, got, gate: float = 0.99999) -> None:
    ref = np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == np.float32
    cos = row_cosines(ref, got)
    assert np.all(cos >= gate), f"cosines below {gate}: {cos[cos < gate]} at {np.flatnonzero(cos < gate)}"


def fastest_timed(folder, exact_only: bool = True) -> str:
    """The passed CPU variant st-export timed fastest (among those within fp32 accuracy by default)."""
    import json
    from pathlib import Path

    variants = json.loads((Path(folder) / "manifest.json").read_text())["towers"]["text"]["variants"]
    timed = {
        n: v["cpu_timing"]["median_s"]
        for n, v in variants.items()
        if v["status"] == "passed" and (v["exact"] or not exact_only)
    }
    return min(timed, key=timed.get)


def place_in_hf_cache(src, hub, repo_id: str, commit: str):
    """Put folder ``src`` into the Hugging Face hub cache ``hub`` as ``snapshot_download`` leaves a download of
    ``repo_id`` at ``commit``: blobs named by their hash, the snapshot's files as relative symlinks to them,
    refs/main naming the commit. The snapshot folder."""
    import hashlib
    import os
    import shutil
    from pathlib import Path

    repo = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def offline_hub(monkeypatch, root):
    """An empty Hugging Face cache and an empty st-runtime export cache under ``root``, with HF_HUB_OFFLINE=1, for
    this process (huggingface_hub's constants, when it is already imported) and the processes it starts.
    (hub cache, export cache)."""
    import sys
    from pathlib import Path

    hub, cache = Path(root) / "hf-hub", Path(root) / "st-cache"
    hub.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ST_RUNTIME_CACHE", str(cache))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub, cache
