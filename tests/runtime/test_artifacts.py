"""Damaged or foreign model folders give typed errors that say how to fix them."""

from __future__ import annotations

import json
import shutil

import pytest

from st_runtime import SentenceEncoder
from st_runtime.errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    GraphLoadError,
    ManifestError,
    ManifestVersionError,
    ModelFolderError,
    StRuntimeError,
)


@pytest.fixture
def copy(tiny_bert, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_bert[1], dst)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="st-export"):
        SentenceEncoder(tmp_path / "nope")


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ModelFolderError, match=r"manifest\.json"):
        SentenceEncoder(tmp_path)


def test_newer_format_version(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 999
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestVersionError, match="Upgrade st-runtime"):
        SentenceEncoder(copy)


def test_manifest_not_json(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        SentenceEncoder(copy)


def test_manifest_missing_key(copy):
    m = json.loads((copy / "manifest.json").read_text())
    del m["embedding"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="embedding: missing"):
        SentenceEncoder(copy)


def test_missing_tokenizer(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactMissingError, match=r"tokenizer\.json"):
        SentenceEncoder(copy)


def test_truncated_graph(copy):
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactCorruptError, match="truncated"):
        SentenceEncoder(copy)


def test_altered_graph_same_size(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match="sha256"):
        SentenceEncoder(copy)


def test_garbage_graph_without_checksums_is_typed_not_protobuf(copy):
    size = (copy / "model.onnx").stat().st_size
    (copy / "model.onnx").write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(GraphLoadError, match="re-export"):
        SentenceEncoder(copy, verify_checksums=False)


def test_every_error_is_a_st_runtime_error():
    import st_runtime.errors as e

    classes = [
        getattr(e, n) for n in dir(e) if isinstance(getattr(e, n), type) and issubclass(getattr(e, n), Exception)
    ]
    assert len(classes) >= 10
    assert all(issubclass(c, StRuntimeError) for c in classes)
