"""Dynamic int8 quantization of a graph's MatMuls, one weight at a time: the graph onnxruntime's
``quantize_dynamic(per_channel=True, weight_type=QInt8, op_types_to_quantize=["MatMul"])`` writes, node for node
and byte for byte (tests/exporters/test_int8_stream.py compares them), without its memory: onnxruntime's quantizer
loads the whole model, keeps a float copy of every weight it quantizes and serializes the result in memory
(several times the weights; docs/exporting.md gives the measurement). Here each weight is read from disk, quantized with
onnxruntime's own per-channel routine and written to the output's data file before the next is read.

The pattern, per MatMul(x, W) with a constant 2-D W: DynamicQuantizeLinear(x) (uint8, once per activation) ->
MatMulInteger(x_q, W_q int8 per output channel, symmetric) -> Cast(float) -> Mul(x_scale * W_scale). onnxruntime
fuses it into DynamicQuantizeMatMul when the session loads.

``per_row=True`` quantizes each activation row (each token) with a scale of its own instead of one scale for the
whole tensor: x_scale = max|x| / 127 over the row's last axis, x_q = QuantizeLinear(x / x_scale, 1, 128) (uint8,
symmetric about 128), and the product rescaled by x_scale [..., 1] * W_scale [N]. A row's result then depends on
that row alone: not on the other texts of its batch, nor on padding rows (dynamic per-tensor scales take the
whole batch's maximum)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .graph import as_onnx_model, drop_unused_initializers
from .rewrites import weighted_matmuls

if TYPE_CHECKING:
    from onnx import ModelProto

    from .weights import Weights


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (the last axis), symmetric int8 with onnxruntime's quant_utils: the quantized weight and
    the float32 scales. Each channel goes through ``quantize_data`` as onnxruntime's per-channel quantizer calls it,
    so the values are exactly its values."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    scales = np.empty(weight.shape[-1], np.float32)
    quantized = np.empty(weight.shape, np.int8)
    for i in range(weight.shape[-1]):
        zero, scale, q = quantize_data(weight[..., i].flatten(), TensorProto.INT8, True, reduce_range=False)
        if int(zero) != 0:
            raise ValueError(f"symmetric int8 gave zero point {zero} for channel {i}")
        scales[i] = scale
        quantized[..., i] = np.asarray(q).reshape(weight.shape[:-1])
    return quantized, scales


def quantize_matmuls(
    model: ModelProto,
    weights: Weights,
    exclude: set[str] | frozenset[str] = frozenset(),
    per_row: bool = False,
) -> int:
    """Rewrite ``model`` in place: every MatMul with a constant 2-D weight (but those named in ``exclude``) in
    dynamic int8, activations per tensor or (``per_row``) per row; the float weights that no node reads any more
    are dropped. New initializers go through ``weights`` (to its data file). Returns how many MatMuls were
    quantized."""
    from onnx import helper

    gemms_to_matmuls(model, weights)
    targets = {n.name for n in weighted_matmuls(model) if n.name not in exclude}
    activations: set[str] = set()
    quantized_weights: set[str] = set()
    nodes = []
    count = 0
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        x, w = node.input[0], node.input[1]
        if x not in activations and per_row:  # one quantization per activation, however many MatMuls read it
            activations.add(x)
            nodes += _quantize_rows(model, x)
        elif x not in activations:
            activations.add(x)
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear",
                    [x],
                    [f"{x}_quantized", f"{x}_scale", f"{x}_zero_point"],
                    f"{x}_QuantizeLinear",
                )
            )
        if w not in quantized_weights:
            quantized_weights.add(w)
            _add_quantized_weight(model, weights, w)
        if per_row:
            nodes += _integer_matmul_to_float(node, x, w, "per_row_q_one", f"{x}_scale")
        else:
            nodes += _integer_matmul(node, x, w)
        count += 1
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    if per_row:
        _use_ms_domain(model)
    drop_unused_initializers(as_onnx_model(model))
    return count


_ROW_CONSTANTS = {"per_row_q_127": 127.0, "per_row_q_tiny": 1e-30, "per_row_q_one": 1.0}


def _quantize_rows(model: ModelProto, x: str) -> list:
    """Nodes quantizing activation ``x`` row by row (see the module's docstring): ``<x>_quantized`` (uint8),
    ``<x>_scale`` ([..., 1] float) and the zero point ``<x>_zero_point`` (128), the names the integer MatMul reads."""
    from onnx import TensorProto, helper

    have = {t.name for t in model.graph.initializer}
    for name, value in _ROW_CONSTANTS.items():
        if name not in have:
            model.graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
    model.graph.initializer.append(helper.make_tensor(f"{x}_zero_point", TensorProto.UINT8, [], [128]))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        model.graph.initializer.append(helper.make_tensor(f"{x}_row_axes", TensorProto.INT64, [1], [-1]))
        reduce = helper.make_node("ReduceMax", [f"{x}_abs", f"{x}_row_axes"], [f"{x}_amax"], f"{x}_RowMax", keepdims=1)
    else:
        reduce = helper.make_node("ReduceMax", [f"{x}_abs"], [f"{x}_amax"], f"{x}_RowMax", axes=[-1], keepdims=1)
    return [
        helper.make_node("Abs", [x], [f"{x}_abs"], f"{x}_RowAbs"),
        reduce,
        helper.make_node("Max", [f"{x}_amax", "per_row_q_tiny"], [f"{x}_amax_safe"], f"{x}_RowMaxSafe"),
        helper.make_node("Div", [f"{x}_amax_safe", "per_row_q_127"], [f"{x}_scale"], f"{x}_RowScale"),
        helper.make_node("Div", ["per_row_q_127", f"{x}_amax_safe"], [f"{x}_inv_scale"], f"{x}_RowInvScale"),
        helper.make_node("Mul", [x, f"{x}_inv_scale"], [f"{x}_scaled"], f"{x}_RowScaled"),
        helper.make_node(
            "QuantizeLinear",
            [f"{x}_scaled", "per_row_q_one", f"{x}_zero_point"],
            [f"{x}_quantized"],
            f"{x}_RowQuantize",
        ),
    ]


def _add_quantized_weight(model: ModelProto, weights: Weights, w: str) -> None:
    """The weight ``w`` in int8 (``<w>_quantized``, through ``weights``), with its per-channel scales and zero
    points as initializers of ``model``."""
    from onnx import TensorProto, helper

    q, scales = quantize_weight(weights.read(w))
    weights.add(q, f"{w}_quantized")
    n_out = q.shape[-1]
    model.graph.initializer.extend(
        [
            helper.make_tensor(f"{w}_scale", TensorProto.FLOAT, [n_out], scales.tolist()),
            helper.make_tensor(f"{w}_zero_point", TensorProto.INT8, [n_out], [0] * n_out),
        ]
    )


def _integer_matmul(node, x: str, w: str) -> list:
    """The nodes that compute MatMul ``node`` of activation ``x`` and weight ``w`` from their int8 forms:
    MatMulInteger, then its cast to float times both scales, into the MatMul's own output."""
    from onnx import TensorProto, helper

    name = f"{node.name}_quant"
    product = f"{node.output[0]}_output_quantized"
    return [
        helper.make_node(
            "MatMulInteger",
            [f"{x}_quantized", f"{w}_quantized", f"{x}_zero_point", f"{w}_zero_point"],
            [product],
            name,
        ),
        helper.make_node("Cast", [product], [f"{product}_cast_output"], f"{product}_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{x}_scale", f"{w}_scale"], [f"{name}_scales_mul:0"], f"{name}_scales_mul"),
        helper.make_node(
            "Mul",
            [f"{product}_cast_output", f"{name}_scales_mul:0"],
            [node.output[0]],
            f"{name}_output_scale_mul",
        ),
    ]


def _integer_matmul_to_float(node, x: str, w: str, a_scale: str, row_scale: str | None = None) -> list:
    """MatMul ``node`` from the int8 forms of ``x`` and ``w`` in one onnxruntime MatMulIntegerToFloat (com.microsoft:
    the integer product, cast and scaled by ``a_scale`` (one per tensor) times the weight's per-channel scales), then,
    for activations quantized per row, times the row scales ``row_scale`` [..., 1]. (MatMulIntegerToFloat reads one
    activation scale per tensor: the row scales stay out of it.)"""
    from onnx import helper

    name = f"{node.name}_quant"
    out = node.output[0] if row_scale is None else f"{name}_channels_scaled"
    nodes = [
        helper.make_node(
            "MatMulIntegerToFloat",
            [f"{x}_quantized", f"{w}_quantized", a_scale, f"{w}_scale", f"{x}_zero_point", f"{w}_zero_point"],
            [out],
            name,
            domain="com.microsoft",
        )
    ]
    if row_scale is not None:
        nodes.append(helper.make_node("Mul", [out, row_scale], [node.output[0]], f"{name}_row_scale_mul"))
    return nodes


def _use_ms_domain(model: ModelProto) -> None:
    """Declare onnxruntime's contrib domain (com.microsoft), whose ops the rewrites use."""
    from onnx import helper

    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def gemms_to_matmuls(model: ModelProto, weights: Weights) -> None:
    """onnxruntime's dynamic quantizer first rewrites each Gemm (alpha = beta = 1, A not transposed) of the main
    graph as MatMul (+ Add of C), with a constant transposed B stored transposed; the same here, names included."""
    from onnx import helper

    nodes = []
    transposed: dict[str, str] = {}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0)
        ):
            nodes.append(node)
            continue
        b = node.input[1]
        if attrs.get("transB", 0):
            if b in weights:
                if b not in transposed:
                    transposed[b] = f"{b}_Transposed"
                    weights.add(weights.read(b).T, transposed[b])
                b = transposed[b]
            else:
                nodes.append(helper.make_node("Transpose", [b], [f"{b}_Transposed"], f"{node.name}_Transpose"))
                b = f"{b}_Transposed"
        biased = len(node.input) > 2
        out = node.output[0] + ("_MatMul" if biased else "")
        nodes.append(helper.make_node("MatMul", [node.input[0], b], [out], f"{node.name}_MatMul"))
        if biased:
            nodes.append(helper.make_node("Add", [out, node.input[2]], list(node.output), f"{node.name}_Add"))
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
