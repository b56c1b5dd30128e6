"""Graph fusions onnxruntime's optimizer does not do for us.

RelativeBiasAttentionFusion: MPNet adds a relative position bias to the attention scores
(softmax(QK^T / sqrt(d) + position_bias + mask) V), a pattern onnxruntime.transformers does not
fuse. Each such block becomes one com.microsoft Attention node, which takes the bias as its
``attention_bias`` input, with the Q/K/V projections packed into one weight matrix.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


def _perm(node) -> list[int] | None:
    from onnx import helper

    for a in node.attribute:
        if a.name == "perm":
            return list(helper.get_attribute_value(a))
    return None


def _single_consumer(model, node, op_type: str):
    consumers = model.input_name_to_nodes().get(node.output[0], [])
    return consumers[0] if len(consumers) == 1 and consumers[0].op_type == op_type else None


def _reshape_consumer(model, node):
    """The Reshape that consumes ``node``, when every other consumer only reads its shape."""
    consumers = model.input_name_to_nodes().get(node.output[0], [])
    reshapes = [c for c in consumers if c.op_type == "Reshape"]
    if len(reshapes) == 1 and all(c.op_type in ("Reshape", "Shape") for c in consumers):
        return reshapes[0]
    return None


def _constant(model, name: str):
    """The value of an initializer, also behind Identity nodes (the exporter shares equal constants)."""
    from onnx import numpy_helper

    out2node = model.output_name_to_node()
    while name in out2node and out2node[name].op_type == "Identity":
        name = out2node[name].input[0]
    init = model.get_initializer(name)
    return None if init is None else numpy_helper.to_array(init)


def _linear(model, add_node):
    """(x, W, b) of Add(MatMul(x, W), b) with W and b constants, else None."""
    out2node = model.output_name_to_node()
    for i in (0, 1):
        mm = out2node.get(add_node.input[i])
        bias = _constant(model, add_node.input[1 - i])
        if mm is not None and mm.op_type == "MatMul" and bias is not None:
            w = _constant(model, mm.input[1])
            if w is not None:
                return mm.input[0], w, bias
    return None


class _AttentionBlock(NamedTuple):
    """One matched attention block: the projections' input ``x``, the (W, b) of the query, key and value
    projections, the relative bias input, the score scale, and the Reshape whose output the block computes."""

    x: str
    projections: list[tuple[np.ndarray, np.ndarray]]
    bias: str
    scale: float
    out: Any


def fuse_relative_bias_attention(model, num_heads: int, mask_input: str = "attention_mask") -> int:
    """Rewrite every matching attention block of ``model`` (an onnxruntime.transformers OnnxModel)
    in place; returns how many were fused."""
    from onnx import TensorProto, helper

    new_nodes, dead, inits = [], [], []
    mask_index = None
    for softmax in model.get_nodes_by_op_type("Softmax"):
        block = _match_block(model, softmax, num_heads)
        if block is None:
            continue
        if mask_index is None:
            mask_index = "attention_mask_int32"
            new_nodes.append(
                helper.make_node(
                    "Cast", [mask_input], [mask_index], to=TensorProto.INT32, name="RelativeBiasAttention/mask_cast"
                )
            )
        node, weights = _attention_node(block, f"RelativeBiasAttention_{len(dead)}", mask_index, num_heads)
        inits += weights
        new_nodes.append(node)
        dead.append(block.out)
    if dead:
        model.remove_nodes(dead)
        model.add_nodes(new_nodes)
        for init in inits:
            model.add_initializer(init)
        if not any(o.domain == "com.microsoft" for o in model.model.opset_import):
            model.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        model.prune_graph()
    return len(dead)


def _match_block(model, softmax, num_heads: int) -> _AttentionBlock | None:
    """The attention block whose scores ``softmax`` normalizes: softmax(QK^T / scale + bias + mask) V with the
    head layout MPNet's export gives and Q, K, V projections of one input to the hidden width; None where the
    pattern differs."""
    scores = model.match_parent_path(softmax, ["Add", "Add", "Div", "MatMul"], [0, None, None, 0])
    if scores is None:
        return None
    _add_mask, add_bias, div, matmul_qk = scores
    scale_const = model.get_constant_value(div.input[1])
    q = model.match_parent_path(matmul_qk, ["Transpose", "Reshape", "Add"], [0, 0, 0])
    k = model.match_parent_path(matmul_qk, ["Transpose", "Reshape", "Add"], [1, 0, 0])
    matmul_qkv = _single_consumer(model, softmax, "MatMul")
    if q is None or k is None or matmul_qkv is None or scale_const is None:
        return None
    v = model.match_parent_path(matmul_qkv, ["Transpose", "Reshape", "Add"], [1, 0, 0])
    out_t = _single_consumer(model, matmul_qkv, "Transpose")
    out_r = _reshape_consumer(model, out_t) if out_t is not None else None
    if v is None or out_r is None or [_perm(q[0]), _perm(k[0]), _perm(v[0]), _perm(out_t)] != _HEAD_LAYOUT:
        return None
    lin = [_linear(model, path[2]) for path in (q, k, v)]
    if any(x is None for x in lin) or len({x[0] for x in lin}) != 1:
        return None
    hidden = lin[0][1].shape[0]
    if hidden % num_heads or any(x[1].shape != (hidden, hidden) for x in lin):
        return None
    bias_name = next(i for i in add_bias.input if i != div.output[0])
    # The bias is usually Expand(Unsqueeze(bias), [batch, ...]): feed the un-expanded [1, heads, S, S].
    producer = model.output_name_to_node().get(bias_name)
    if producer is not None and producer.op_type == "Expand":
        bias_name = producer.input[0]
    scale = 1.0 / float(np.asarray(scale_const).reshape(-1)[0])
    return _AttentionBlock(lin[0][0], [(w, b) for _x, w, b in lin], bias_name, scale, out_r)


# the Transposes' perms of Q, K (transposed for QK^T), V and the output: [batch, heads, sequence, head size]
_HEAD_LAYOUT = [[0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3], [0, 2, 1, 3]]


def _attention_node(block: _AttentionBlock, prefix: str, mask_index: str, num_heads: int):
    """The com.microsoft Attention node computing ``block`` (its Q, K, V projections packed into one weight and
    one bias, named after ``prefix``) and those two initializers."""
    from onnx import helper, numpy_helper

    w = np.concatenate([w for w, _b in block.projections], axis=1).astype(np.float32)
    b = np.concatenate([b for _w, b in block.projections]).astype(np.float32)
    inits = [numpy_helper.from_array(w, f"{prefix}/qkv_weight"), numpy_helper.from_array(b, f"{prefix}/qkv_bias")]
    hidden = w.shape[0]
    attrs: dict[str, Any] = {"num_heads": num_heads}
    if not math.isclose(block.scale, 1.0 / math.sqrt(hidden // num_heads), rel_tol=1e-6):
        attrs["scale"] = block.scale
    node = helper.make_node(
        "Attention",
        [block.x, f"{prefix}/qkv_weight", f"{prefix}/qkv_bias", mask_index, "", block.bias],
        [block.out.output[0]],
        name=prefix,
        domain="com.microsoft",
        **attrs,
    )
    return node, inits
