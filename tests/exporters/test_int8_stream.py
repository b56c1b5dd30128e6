"""The int8 build's quantizer writes onnxruntime's dynamic int8 graph one weight at a time: the same nodes and the same
bytes as ``onnxruntime.quantization.quantize_dynamic`` (per channel, QInt8, MatMul), on a real exported graph with a
Dense layer (a Gemm, which onnxruntime's quantizer rewrites as MatMul + Add first), merged projections and smoothed
weights with outlier channels, inline and as external data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import needs_export

pytestmark = needs_export


def _key(node):
    from onnx import helper

    attrs = sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute)
    return (node.op_type, tuple(node.input), tuple(node.output), node.name, tuple(attrs))


@pytest.fixture(scope="module")
def rewritten(zoo, tmp_path_factory):
    """The tiny BERT with a Dense layer, its projections merged and its weights smoothed with outlier channels."""
    import onnx
    from tiny_models import build_tiny

    from exporters import variants
    from exporters.int8.rewrites import OutlierChannels, SmoothQuant, weighted_matmuls

    root = tmp_path_factory.mktemp("int8-stream")
    src = build_tiny(root / "src", "bert", dense=[(24, "Tanh")])
    from exporters import export_model

    out = export_model(str(src), output=root / "onnx", variants=(), log=lambda _m: None)
    model = onnx.load(str(out / "model.onnx"))
    assert any(n.op_type == "Gemm" for n in model.graph.node), "the Dense layer is no longer a Gemm"
    variants.merge_sibling_matmuls(model)
    amax = {}
    dims = {i.name: i.dims for i in model.graph.initializer}
    for n in weighted_matmuls(model):
        amax[n.input[0]] = np.ones(dims[n.input[1]][0], np.float32)
        amax[n.input[0]][1] = 40.0
    assert SmoothQuant(amax, 0.6, OutlierChannels(gain=1.5)).apply(model) > 0
    return model, root


@pytest.mark.parametrize("external", [False, True])
def test_same_graph_and_bytes_as_onnxruntime_quantize_dynamic(rewritten, tmp_path, external):
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from exporters.int8.quantize import quantize_matmuls
    from exporters.int8.rewrites import OUTLIER_SUFFIX
    from exporters.int8.weights import Weights, read_tensor

    model = copy.deepcopy(rewritten[0])  # saving with external data rewrites the model it saves
    side = [n.name for n in model.graph.node if n.name.endswith(OUTLIER_SUFFIX)]
    keep = [n.name for n in model.graph.node if n.op_type == "MatMul" and not n.name.endswith(OUTLIER_SUFFIX)][:1]
    src = tmp_path / "src.onnx"
    if external:
        onnx.save_model(model, str(src), save_as_external_data=True, location="src.onnx.data", size_threshold=64)
    else:
        onnx.save_model(model, str(src))
    want_path = tmp_path / "ort.onnx"
    quantize_dynamic(
        str(src),
        str(want_path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep + side,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    want = onnx.load(str(want_path))
    got = onnx.load(str(src), load_external_data=False)
    n = quantize_matmuls(got, Weights(got, tmp_path, "q.data"), set(keep))
    assert n == sum(x.op_type == "MatMulInteger" for x in want.graph.node) > 0
    assert sorted(map(_key, got.graph.node)) == sorted(map(_key, want.graph.node))
    want_init = {i.name: numpy_helper.to_array(i) for i in want.graph.initializer}
    got_init = {i.name: read_tensor(i, tmp_path) for i in got.graph.initializer}
    assert sorted(got_init) == sorted(want_init)
    for name, value in want_init.items():
        assert got_init[name].dtype == value.dtype and got_init[name].shape == value.shape, name
        np.testing.assert_array_equal(got_init[name], value, err_msg=name)


def test_rewrites_read_and_write_weights_on_disk_one_at_a_time(rewritten, tmp_path, monkeypatch):
    """With the graph's weights as external data, a rewrite reads each weight from its file when it needs it and
    writes what it makes to its own data file: the graph held in memory is the structure only."""
    import onnx

    from exporters.int8 import weights as weights_mod
    from exporters.int8.quantize import quantize_matmuls
    from exporters.int8.weights import Weights

    model, _root = rewritten
    src = tmp_path / "g.onnx"
    onnx.save_model(copy.deepcopy(model), str(src), save_as_external_data=True, location="g.data", size_threshold=64)
    structure = onnx.load(str(src), load_external_data=False)
    big = [t for t in structure.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and not any(t.raw_data for t in big)
    reads = []
    real = weights_mod.read_tensor
    monkeypatch.setattr(weights_mod, "read_tensor", lambda t, f: reads.append(t.name) or real(t, f))
    quantize_matmuls(structure, Weights(structure, tmp_path, "q.data"))
    assert reads and len(reads) == len(set(reads))  # each weight read once
    assert structure.ByteSize() < 0.2 * (tmp_path / "g.data").stat().st_size  # no weight came into the graph
    assert (tmp_path / "q.data").stat().st_size > 0


def test_calibration_keeps_the_noisiest_matmuls_in_fp32_when_it_misses_its_target(zoo, tmp_path):
    """A target no int8 graph can meet: the build keeps MatMuls in fp32 (ranked by their int8 noise, their fp32
    weights read from disk), one more each round (1, then 2 more), up to ``max_excluded``; the graph it writes runs
    and has exactly those MatMuls in fp32."""
    import shutil

    import onnx

    from exporters import variants
    from exporters.int8.build import build_int8, session

    out = zoo.export("bert", variants=())
    for f in ("model.onnx", "tokenizer.json", "manifest.json"):
        shutil.copy(out / f, tmp_path / f)
    inputs = [i.name for i in onnx.load(str(out / "model.onnx")).graph.input]
    feeds = variants.calibration_feeds(tmp_path, inputs)
    dst = tmp_path / "model_int8.onnx"
    info = build_int8(tmp_path / "model.onnx", dst, feeds, "sentence_embedding", 1.01, 1.01, tmp_path, max_excluded=3)
    assert len(info["fp32_matmuls"]) == 3 and info["external_data"] is False
    assert info["calibration"]["target_min_cosine"] == info["calibration"]["target_mean_cosine"] == 1.01
    graph = onnx.load(str(dst)).graph
    plain = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(info["fp32_matmuls"]) <= plain
    integer = ("MatMulInteger", "MatMulIntegerToFloat")  # per batch, per row
    assert sum(n.op_type in integer for n in graph.node) == info["int8_matmuls"]
    got = session(dst).run(["sentence_embedding"], feeds[0])[0]
    want = session(out / "model.onnx").run(["sentence_embedding"], feeds[0])[0]
    assert (got * want).sum(1).min() > 0.95
