"""Graph variants: fusions recorded and asserted, gates enforced, the runtime's choice."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import TEXTS, assert_parity, fastest_timed

from exporters import errors, export, variants
from exporters.int8 import build as int8_build
from exporters.int8 import graph as int8_graph
from exporters.int8.rewrites import OUTLIER_SUFFIX, OutlierChannels, SmoothQuant, weighted_matmuls
from st_runtime import SentenceEncoder
from st_runtime.errors import VariantError

pytestmark = pytest.mark.filterwarnings("ignore")

# Fused operators expected in the "opt" graph of each tiny model (2 layers).
EXPECTED_FUSIONS = {
    "bert": {"Attention": 2, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1, "BiasGelu": 2},
    "distilbert": {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2},
    "xlm-roberta": {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2},
    # MPNet's relative-position-bias attention is fused by our own pass (exporters/fusions.py).
    "mpnet": {"Attention": 2, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1, "BiasGelu": 2},
    # ModernBERT (3 layers, bias-free GLU MLP): onnxruntime has no fusion for its rotary, windowed attention.
    "modernbert": {"Attention": 0, "MultiHeadAttention": 0, "SkipLayerNormalization": 6, "Gelu": 3},
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_FUSIONS))
def test_opt_variant_fuses_and_records_counts(zoo, arch):
    out = zoo.export(arch)
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["towers"]["text"]["variants"]["opt"]["build"]["fused_operators"]
    for op, n in EXPECTED_FUSIONS[arch].items():
        assert counts[op] == n, (op, counts)
    import onnx

    graph = onnx.load(str(out / "model_opt.onnx"))
    assert sum(n.op_type == "Attention" for n in graph.graph.node) == counts["Attention"]


@pytest.fixture(scope="module")
def with_int8(zoo):
    return zoo.model("bert"), zoo.export("bert", variants=("opt", "int8"))


def test_int8_variant_passes_its_gate_and_is_opt_in(with_int8, zoo):
    src, out = with_int8
    manifest = json.loads((out / "manifest.json").read_text())
    v = manifest["towers"]["text"]["variants"]["int8"]
    assert v["status"] == "passed" and v["exact"] is False and v["providers"] == ["CPUExecutionProvider"]
    assert v["validation"]["min_cosine"] >= 0.99 and v["validation"]["mean_cosine"] >= 0.995
    assert v["build"]["int8_matmuls"] > 0
    # calibrated to the mean real text's worst needs (its worst error was 2.65-6.9x the calibration's mean), and the
    # build either reached it or kept as many MatMuls in fp32 as it may (half of them)
    cal = v["build"]["calibration"]
    assert cal["target_mean_cosine"] == variants.CALIBRATION_MEAN >= 0.9992
    n = v["build"]["int8_matmuls"] + len(v["build"]["fp32_matmuls"])
    assert cal["mean_cosine_vs_fp32"] >= cal["target_mean_cosine"] or len(v["build"]["fp32_matmuls"]) == n // 2
    # Not chosen by default (not within fp32 accuracy) but by "fastest" or by name.
    assert SentenceEncoder(out).variant == fastest_timed(out) != "int8"
    assert SentenceEncoder(out, variant="fastest").variant == fastest_timed(out, exact_only=False)
    timing = manifest["towers"]["text"]["variants"]
    assert all(timing[v]["cpu_timing"]["median_s"] > 0 for v in ("fp32", "opt", "int8"))
    enc = SentenceEncoder(out, variant="int8")
    assert_parity(zoo.reference(src).encode(TEXTS), enc.encode(TEXTS), gate=0.99)
    graph_ops = {n.op_type for n in __import__("onnx").load(str(out / "model_int8.onnx")).graph.node}
    assert graph_ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def test_only_the_per_row_int8_is_calibrated_to_the_stricter_mean():
    """int8-dynamic stays the int8 of earlier exports (the gate's mean + 0.002); int8 calibrates to
    CALIBRATION_MEAN."""
    from exporters.tasks import TASKS

    gate = TASKS["embedding"].int8_gate
    assert gate(variants.PLANS["int8"], {})[1:] == (0.993, variants.CALIBRATION_MEAN)
    assert gate(variants.PLANS["int8-dynamic"], {})[1:] == pytest.approx((0.993, 0.997))


def test_variant_missing_its_gate_is_not_written(zoo, tmp_path, monkeypatch):
    strict = dataclasses.replace(variants.PLANS["int8"], min_cosine=1.5)
    monkeypatch.setitem(variants.PLANS, "int8", strict)
    out = export.export_model(
        str(zoo.model("distilbert")), output=tmp_path / "o", variants=["int8"], log=lambda _m: None
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert "int8" not in manifest["towers"]["text"]["variants"]
    assert not (out / "model_int8.onnx").exists()
    assert manifest["export"]["rejected_variants"]["int8"]["status"] == "failed"
    with pytest.raises(VariantError, match="missed its accuracy gate"):
        SentenceEncoder(out, variant="int8")
    assert SentenceEncoder(out).variant == "fp32"


def test_fp16_refused_without_cuda(zoo, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(errors.ExportError, match="fp16 variant can only be validated on CUDA"):
        export.export_model(str(zoo.model("bert")), output=tmp_path / "o", variants=["fp16"], log=lambda _m: None)


def test_fp16_graph_builds_and_keeps_reductions_fp32(zoo, tmp_path):
    """The conversion itself (validated on CUDA at export; here: structure and that it loads)."""
    import onnx

    out = zoo.export("bert")
    variants.build_fp16(out / "model_opt.onnx", tmp_path / "f16.onnx")
    model = onnx.load(str(tmp_path / "f16.onnx"))
    f16 = onnx.TensorProto.FLOAT16
    assert any(i.data_type == f16 for i in model.graph.initializer)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # reductions of pooling / normalization consume fp32 (their inputs come through Cast to fp32)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("ReduceSum", "ReduceL2"):
            src = producers.get(node.input[0])
            assert (
                src is not None
                and src.op_type == "Cast"
                and next(a.i for a in src.attribute if a.name == "to") == onnx.TensorProto.FLOAT
            )
    # names and outputs unique: onnxruntime refuses repeats, which onnxruntime 1.31's converter made
    names = [n.name for n in model.graph.node if n.name]
    outputs = [o for n in model.graph.node for o in n.output]
    assert len(names) == len(set(names)) and len(outputs) == len(set(outputs))


def test_fp16_repeated_casts_of_one_tensor_are_merged():
    """A converter that casts one tensor twice under one name (onnxruntime 1.31, found on the first GPU run)
    leaves one Cast; distinct nodes that merely share a name are renamed, unnamed ones stay unnamed."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    cast = dict(op_type="Cast", inputs=["x"], outputs=["x32"], name="x_cast", to=TensorProto.FLOAT)
    nodes = [
        helper.make_node(**cast),
        helper.make_node(**cast),
        helper.make_node("ReduceSum", ["x32"], ["s"], name="r", keepdims=0),
        helper.make_node("Neg", ["x32"], ["n"], name="r"),
        helper.make_node("Abs", ["n"], ["a"]),
        helper.make_node("Abs", ["a"], ["b"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
    )
    variants._unique_node_names(graph)
    assert [n.op_type for n in graph.node] == ["Cast", "ReduceSum", "Neg", "Abs", "Abs"]
    assert [n.name for n in graph.node] == ["x_cast", "r", "r_1", "", ""]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    s, b = sess.run(None, {"x": np.array([1.5, -2.0], dtype=np.float16)})
    assert float(s) == -0.5 and b.tolist() == [1.5, 2.0]


def test_variant_that_cannot_be_built_is_reported_and_left_out(zoo, tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(variants, "build_int8", broken)
    said = []
    out = export.export_model(str(zoo.model("bert")), output=tmp_path / "o", variants=["opt", "int8"], log=said.append)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["towers"]["text"]["variants"]) == ["fp32", "opt"]
    assert "quantizer exploded" in manifest["export"]["rejected_variants"]["int8"]["error"]
    assert any("int8: could not be built" in line and "quantizer exploded" in line for line in said)
    with pytest.raises(VariantError, match="quantizer exploded"):
        SentenceEncoder(out, variant="int8")
    assert not list(out.glob("model_int8*"))


def test_int8_graph_rewrites_are_exact_before_quantization(zoo):
    """Merging the query/key/value projections and taking outlier channels out of the int8 product change
    nothing in fp32: only the quantization itself may move the embeddings."""
    import copy

    import numpy as np
    import onnx

    out = zoo.export("bert")
    model = onnx.load(str(out / "model.onnx"))
    feeds = variants.calibration_feeds(out, [i.name for i in model.graph.input])[-3:]
    merged = copy.deepcopy(model)
    assert variants.merge_sibling_matmuls(merged) == 2  # one query/key/value group per layer
    assert sum(n.op_type == "Split" for n in merged.graph.node) == 2
    inputs = {n.input[0] for n in weighted_matmuls(merged)}
    dims = {i.name: i.dims for i in merged.graph.initializer}
    sizes = {n.input[0]: dims[n.input[1]][0] for n in weighted_matmuls(merged)}
    amax = {}
    for name in inputs:  # one channel far above the rest: it must be taken out
        amax[name] = np.ones(sizes[name], np.float32)
        amax[name][3] = 50.0
    smoothed = copy.deepcopy(merged)
    decomposed = SmoothQuant(amax, 0.7, OutlierChannels(gain=1.5)).apply(smoothed)
    assert decomposed == len(weighted_matmuls(merged))
    results = [
        int8_build.run_all(int8_build.session(m), feeds, ["sentence_embedding"]) for m in (model, merged, smoothed)
    ]
    for got in results[1:]:
        for a, b in zip(results[0], got):
            np.testing.assert_allclose(a[0], b[0], atol=2e-6)


def test_int8_warns_on_a_cpu_without_the_int8_dot_product_it_was_validated_with(with_int8, monkeypatch):
    import warnings

    from st_runtime import variants as runtime_variants

    _src, out = with_int8
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["towers"]["text"]["variants"]["int8"]["build"]["cpu_int8_dot_product"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))  # as if exported on a VNNI machine
    monkeypatch.setattr(runtime_variants, "cpu_int8_dot_product", lambda: False)
    with pytest.warns(RuntimeWarning, match="VNNI"):
        SentenceEncoder(out, variant="int8")
    monkeypatch.setattr(runtime_variants, "cpu_int8_dot_product", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SentenceEncoder(out, variant="int8")
        SentenceEncoder(out)  # the exact default is never affected


def test_int8_rewrites_stay_exact_with_shared_weights_and_unnamed_nodes():
    """ALBERT-style graphs use one weight in several MatMuls; it is scaled once, for all its inputs."""
    import copy

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    w = numpy_helper.from_array(rng.randn(8, 8).astype(np.float32), "shared_w")
    b = numpy_helper.from_array(rng.randn(8).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "shared_w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MatMul", ["r", "shared_w"], ["y"]),
    ]  # unnamed nodes, one weight twice
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 8]) for n in ("hb", "y")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])], out, [w, b]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.randn(5, 8).astype(np.float32)
    x[:, 2] = np.abs(x[:, 2]) * 1000  # an outlier channel in both MatMuls' inputs
    amax = {"x": np.abs(x).max(0), "r": np.maximum(x, 0).max(0)}
    smoothed = copy.deepcopy(model)
    decomposed = SmoothQuant(amax, 0.7, OutlierChannels(gain=1.5)).apply(smoothed)
    assert decomposed == 2
    assert sum(i.name.endswith("/smoothed") for i in smoothed.graph.initializer) == 1  # one scaled copy
    want = int8_build.session(model).run(None, {"x": x})
    got = int8_build.session(smoothed).run(None, {"x": x})
    for a, b_ in zip(want, got):
        np.testing.assert_allclose(b_, a, rtol=1e-5, atol=1e-3)


def test_int8_quantizes_weights_the_exporter_shares_through_identity(zoo):
    """ALBERT's layers share one set of weights: several MatMuls read one initializer (directly, or through the
    Identity nodes torch's exporter writes for a shared tensor it transposed itself). Every MatMul with a constant
    weight must end up int8 or be listed as kept in fp32."""
    from collections import Counter

    import onnx

    out = zoo.export("albert", variants=("int8",))
    fp32 = onnx.load(str(out / "model.onnx"))
    inits = {i.name for i in fp32.graph.initializer}
    source = {n.output[0]: n.input[0] for n in fp32.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    reads = Counter(source.get(n.input[1], n.input[1]) for n in fp32.graph.node if n.op_type == "MatMul")
    shared = [w for w, k in reads.items() if w in inits and k > 1]
    assert shared, "the tiny ALBERT no longer shares weights between MatMuls; this test needs a new model"
    build = json.loads((out / "manifest.json").read_text())["towers"]["text"]["variants"]["int8"]["build"]
    int8 = onnx.load(str(out / "model_int8.onnx"))
    consts = int8_graph.constants(int8_graph.as_onnx_model(int8))
    left = [
        n.name
        for n in int8.graph.node
        if n.op_type == "MatMul" and n.input[1] in consts and not n.name.endswith(OUTLIER_SUFFIX)
    ]
    assert sorted(left) == sorted(build["fp32_matmuls"])
    n_int8 = sum(
        n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat") for n in int8.graph.node
    )
    assert n_int8 == build["int8_matmuls"] >= 2 * 4  # both layers' projections (Q/K/V merged) and FFN


def test_each_cpu_variant_gets_its_measured_batch_budget(zoo):
    """st-export times a grid of CPU batch budgets per variant and records the fastest; the runtime plans its CPU
    batches with it (the default budget unless another was measurably faster)."""
    from exporters.batch_policy import SHORT_BUDGETS
    from st_runtime import SentenceEncoder

    out = zoo.export("bert")
    variants = json.loads((out / "manifest.json").read_text())["towers"]["text"]["variants"]
    for name, v in variants.items():
        batching = v["cpu_batching"]
        assert batching["short_tokens"] in SHORT_BUDGETS
        assert set(batching["measured_items_per_s"]["short"]) == {str(b) for b in SHORT_BUDGETS}
        policy = SentenceEncoder(out, variant=name).text_tower.policy
        assert policy.budget(8) == batching["short_tokens"]


def test_length_routing_runs_wide_batches_on_the_long_text_variant(zoo, tmp_path):
    """cpu_routing (written by st-export when another exact graph is measurably faster on long texts): the
    default runs batches from long_from tokens wide on that graph, narrower ones on the short-text graph; results
    stay those of sentence-transformers. An explicit variant is never routed."""
    import shutil

    from helpers import TEXTS, assert_parity

    from st_runtime import SentenceEncoder

    src, out = zoo.model("bert"), zoo.export("bert")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "short_items_per_s" in manifest["towers"]["text"]["variants"]["fp32"]["cpu_timing"]
    routed = tmp_path / "routed"
    shutil.copytree(out, routed)
    manifest["towers"]["text"]["cpu_routing"] = {"short": "fp32", "long": "opt", "long_from": 16}
    (routed / "manifest.json").write_text(json.dumps(manifest))
    enc = SentenceEncoder(routed)
    assert (enc.variant, enc.long_text_variant) == ("fp32", "opt") and "long_text_variant='opt'" in repr(enc)
    widths = {"short": [], "long": []}
    for key, runner in (("short", enc.text_tower.runner), ("long", enc.text_tower.long_runner)):
        real = runner.session.run
        runner.session.run = lambda names, feeds, _real=real, _k=key: (
            widths[_k].append(feeds["input_ids"].shape[1]) or _real(names, feeds)
        )
    got = enc.encode(TEXTS, batch_size=2)
    assert widths["short"] and widths["long"]
    assert max(widths["short"]) < 16 <= min(widths["long"])
    assert_parity(zoo.reference(src).encode(TEXTS), got)
    assert SentenceEncoder(routed, variant="fp32").long_text_variant is None
