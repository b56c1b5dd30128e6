"""Graphs stored with ONNX external data (exports over 2 GB), forced on a tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import TEXTS, assert_parity

from st_runtime import SentenceEncoder
from st_runtime.errors import ArtifactCorruptError, ArtifactMissingError, ManifestError
from st_runtime.manifest import file_record, load_manifest, sha256_file


@pytest.fixture(scope="module")
def external(zoo, tmp_path_factory):
    from exporters import export_model

    out = tmp_path_factory.mktemp("ext") / "tiny-external"
    export_model(str(zoo.model("bert")), output=out, external_data=True, variants=["opt"], log=lambda _m: None)
    return out


@pytest.fixture
def copy(external, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(external, dst)
    return dst


def test_folder_has_graph_and_data_listed_with_checksums(external):
    names = sorted(p.name for p in external.iterdir())
    assert names == [
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
        "model_opt.onnx",
        "model_opt.onnx.data",
        "tokenizer.json",
    ]
    m = load_manifest(external)
    for name in ("model.onnx", "model.onnx.data", "model_opt.onnx", "model_opt.onnx.data"):
        assert m["files"][name] == file_record(external / name)
        assert m["files"][name]["sha256"] == sha256_file(external / name)
    assert m["towers"]["text"]["variants"]["fp32"]["external_data"] is True
    assert m["towers"]["text"]["variants"]["opt"]["external_data"] is True
    # the weights really are outside the graph file
    assert (external / "model.onnx").stat().st_size < (external / "model.onnx.data").stat().st_size


def test_loads_and_matches_sentence_transformers_and_inline_export(zoo, external):
    enc = SentenceEncoder(external)
    assert_parity(zoo.reference(zoo.model("bert")).encode(TEXTS), enc.encode(TEXTS))
    inline = zoo.export("bert", variants=())
    np.testing.assert_array_equal(
        SentenceEncoder(external, variant="fp32").encode(TEXTS), SentenceEncoder(inline).encode(TEXTS)
    )


def test_loads_from_another_working_directory(external, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the .data file is found next to the graph, not relative to the CWD
    enc = SentenceEncoder(external)
    assert enc.encode("x").shape == (enc.get_sentence_embedding_dimension(),)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage,error,match,checksums",
    [
        pytest.param(_truncate, ArtifactCorruptError, "truncated", True, id="truncated"),
        pytest.param(_truncate, ArtifactCorruptError, "truncated", False, id="truncated_no_checksums"),
        pytest.param(_flip, ArtifactCorruptError, "sha256", True, id="altered"),
        pytest.param(lambda p: p.unlink(), ArtifactMissingError, "missing", True, id="missing"),
    ],
)
def test_damaged_data_file_is_detected(copy, damage, error, match, checksums):
    damage(copy / "model_opt.onnx.data")
    with pytest.raises(error, match=match) as info:
        SentenceEncoder(copy, verify_checksums=checksums, variant="opt")
    assert "model_opt.onnx.data" in str(info.value)


def test_data_file_missing_from_manifest_is_a_manifest_error(copy):
    m = json.loads((copy / "manifest.json").read_text())
    del m["files"]["model_opt.onnx.data"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"model_opt\.onnx\.data"):
        SentenceEncoder(copy, variant="opt")


def test_weights_spilled_to_one_file_each_are_gathered_into_one(zoo, tmp_path):
    """torch writes each weight of a graph over 2 GB to its own file; st-export gathers them into model.onnx.data
    one tensor at a time (the torch model is still loaded then) and removes them."""
    import onnx
    import onnxruntime as ort

    from exporters.artifacts import gather_external_data

    graph = zoo.export("bert", variants=()) / "model.onnx"
    path = tmp_path / "model.onnx"
    onnx.save_model(onnx.load(str(graph)), str(path), save_as_external_data=True, all_tensors_to_one_file=False)
    spilled = sorted(p.name for p in tmp_path.iterdir() if p != path)
    assert len(spilled) > 5
    gather_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert path.stat().st_size < 100_000 < (tmp_path / "model.onnx.data").stat().st_size
    feeds = {"input_ids": np.array([[101, 2054, 102]]), "attention_mask": np.ones((1, 3), dtype=np.int64)}
    feeds["token_type_ids"] = np.zeros((1, 3), dtype=np.int64)
    want = ort.InferenceSession(str(graph)).run(None, feeds)[0]
    np.testing.assert_array_equal(ort.InferenceSession(str(path)).run(None, feeds)[0], want)
