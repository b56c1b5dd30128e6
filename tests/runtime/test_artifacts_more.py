"""More damaged artifacts: each damage gets its own typed error; a killed st-export never loses an export."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_export

from st_runtime import SentenceEncoder
from st_runtime.errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    GraphLoadError,
    ManifestError,
    ManifestVersionError,
    OpsetTooNewError,
)
from st_runtime.graph_meta import read_opset_imports
from st_runtime.manifest import FORMAT_VERSION, file_record, load_manifest, verify_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tiny_bert, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_bert[1], dst)
    return dst


def _rerecord(folder: Path, name: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][name] = file_record(folder / name)
    (folder / "manifest.json").write_text(json.dumps(m))


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path):
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x01
    p.write_bytes(bytes(data))


def _append(p: Path):
    p.write_bytes(p.read_bytes() + b"\0")


DAMAGE = {
    "model_missing": (lambda d: (d / "model.onnx").unlink(), ArtifactMissingError, "model.onnx"),
    "model_truncated": (lambda d: _truncate(d / "model.onnx"), ArtifactCorruptError, "truncated"),
    "model_one_bit_flipped": (lambda d: _flip(d / "model.onnx"), ArtifactCorruptError, "sha256"),
    "model_byte_appended": (lambda d: _append(d / "model.onnx"), ArtifactCorruptError, "bytes"),
    "model_empty": (lambda d: (d / "model.onnx").write_bytes(b""), ArtifactCorruptError, "0 bytes"),
    "tokenizer_missing": (lambda d: (d / "tokenizer.json").unlink(), ArtifactMissingError, "tokenizer.json"),
    "tokenizer_truncated": (lambda d: _truncate(d / "tokenizer.json"), ArtifactCorruptError, "tokenizer.json"),
    "tokenizer_altered": (lambda d: _flip(d / "tokenizer.json"), ArtifactCorruptError, "tokenizer.json"),
    "manifest_missing": (lambda d: (d / "manifest.json").unlink(), Exception, "manifest.json"),
    "manifest_truncated": (lambda d: _truncate(d / "manifest.json"), ManifestError, "not valid JSON"),
    "manifest_newer_version": (
        lambda d: (d / "manifest.json").write_text(
            json.dumps({**json.loads((d / "manifest.json").read_text()), "format_version": FORMAT_VERSION + 1})
        ),
        ManifestVersionError,
        "pip install -U st-runtime",
    ),
    "manifest_file_entry_outside": (
        lambda d: (d / "manifest.json").write_text(
            json.dumps(
                {
                    **(m := json.loads((d / "manifest.json").read_text())),
                    "files": {**m["files"], "../evil": {"size": 1, "sha256": "0"}},
                }
            )
        ),
        ManifestError,
        "outside",
    ),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_folder_gives_typed_actionable_error(copy, name):
    damage, error, match = DAMAGE[name]
    damage(copy)
    with pytest.raises(error, match=match) as info:
        SentenceEncoder(copy)
    msg = str(info.value)
    assert "st-export" in msg or "st-runtime" in msg, msg  # says what to run
    assert "onnxruntime_pybind11_state" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("name", ["model_truncated", "model_byte_appended", "tokenizer_truncated"])
def test_size_is_checked_even_without_checksums(copy, name):
    damage, error, match = DAMAGE[name]
    damage(copy)
    with pytest.raises(error, match=match):
        SentenceEncoder(copy, verify_checksums=False)


def _set_opset(folder: Path, version: int) -> None:
    onnx = pytest.importorskip("onnx")  # rewriting a graph needs onnx (the export extra)

    model = onnx.load(str(folder / "model.onnx"))
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version
    onnx.save(model, str(folder / "model.onnx"))
    _rerecord(folder, "model.onnx")


def test_opset_reader_agrees_with_onnx(copy):
    onnx = pytest.importorskip("onnx")

    model = onnx.load(str(copy / "model.onnx"))
    expected = {(op.domain or "ai.onnx"): op.version for op in model.opset_import}
    assert read_opset_imports(copy / "model.onnx") == expected
    _set_opset(copy, 123)
    assert read_opset_imports(copy / "model.onnx")["ai.onnx"] == 123


def test_opset_reader_rejects_truncated_file(copy):
    _truncate(copy / "model.onnx")
    with pytest.raises(ValueError):
        read_opset_imports(copy / "model.onnx")


@pytest.mark.parametrize("opset", [99, 1000])
def test_opset_newer_than_onnxruntime_gets_its_own_error(copy, opset):
    import onnxruntime as ort

    _set_opset(copy, opset)
    with pytest.raises(OpsetTooNewError) as info:
        SentenceEncoder(copy)
    msg = str(info.value)
    assert f"opset {opset}" in msg and "ai.onnx" in msg
    assert ort.__version__ in msg and "Upgrade onnxruntime" in msg and "pip install -U onnxruntime" in msg
    assert isinstance(info.value, GraphLoadError)


def test_unloadable_graph_with_supported_opset_is_not_an_opset_error(copy):
    size = (copy / "model.onnx").stat().st_size
    (copy / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * (size - 2))
    with pytest.raises(GraphLoadError) as info:
        SentenceEncoder(copy, verify_checksums=False)
    assert not isinstance(info.value, OpsetTooNewError)


# ---------------------------------------------------------------------------- killing st-export
def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def previous_export(tiny_bert, tmp_path):
    """A parent folder holding one complete export, as st-export left it."""
    out = tmp_path / "exports" / "tiny"
    out.parent.mkdir()
    shutil.copytree(tiny_bert[1], out)
    return out


def _run_and_kill(src: Path, out: Path, marker: str | None, delay: float) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporters.cli", str(src), "-o", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 120
    try:
        if marker is not None:
            for line in proc.stdout:
                seen.append(line)
                if line.startswith(marker) or time.monotonic() > deadline:
                    break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid, "".join(seen)


KILL_POINTS = {
    # (line of st-export's output to wait for, upper bound of the random delay after it)
    "while_loading": (None, 4.0),
    "while_tracing": ("Tracing", 1.5),
    "after_validation": ("fp32:", 0.05),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
@needs_export
def test_killed_export_keeps_previous_export(tiny_bert, previous_export, point):
    marker, max_delay = KILL_POINTS[point]
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0, max_delay)
    before = _tree_digest(previous_export)
    pid, log = _run_and_kill(tiny_bert[0], previous_export, marker, delay)
    parent = previous_export.parent
    visible = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    assert visible == ["tiny"], (visible, seed, log)
    after = _tree_digest(previous_export)
    if after != before:  # the kill came after the swap: the new export must then be complete and valid
        assert after["model.onnx"] == before["model.onnx"]
    verify_files(previous_export, load_manifest(previous_export), checksums=True)
    enc = SentenceEncoder(previous_export, variant="fp32")  # the graph both exports have
    np.testing.assert_array_equal(enc.encode(["kill test"]), SentenceEncoder(tiny_bert[1]).encode(["kill test"]))
    hidden = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert all(h.startswith(".tiny.partial-") or h.startswith(".tiny.old-") for h in hidden), hidden
    if point == "while_tracing":  # killed with its temporary folder open: it is left hidden, not visible
        assert f".tiny.partial-{pid}" in hidden, (hidden, seed, log)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_export_removes_leftovers_of_killed_exports(zoo, tiny_bert, previous_export):
    from exporters.export import export_model

    parent = previous_export.parent
    partial = parent / f".tiny.partial-{_dead_pid()}"
    shutil.copytree(tiny_bert[1], partial)
    (partial / "model.onnx").write_bytes(b"half")
    export_model(str(tiny_bert[0]), output=previous_export, log=lambda _m: None)
    assert sorted(p.name for p in parent.iterdir()) == ["tiny"]
    SentenceEncoder(previous_export)


def test_previous_export_moved_aside_by_a_killed_export_is_restored(tiny_bert, tmp_path):
    from exporters.artifacts import cleanup_stale

    old = tmp_path / f".tiny.old-{_dead_pid()}"
    shutil.copytree(tiny_bert[1], old)
    live = tmp_path / f".tiny.partial-{os.getpid()}"  # our own: must not be touched
    live.mkdir()
    cleanup_stale(tmp_path, "tiny")
    assert (tmp_path / "tiny" / "manifest.json").is_file() and not old.exists() and live.exists()
    SentenceEncoder(tmp_path / "tiny")
