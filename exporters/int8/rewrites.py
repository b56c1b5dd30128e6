"""Graph rewrites that make dynamic int8 accurate, each exact in fp32: merging sibling projections
(SiblingMatMulMerge), SmoothQuant scaling (SmoothQuant), and taking outlier input channels out of the int8
product (OutlierChannels, applied by SmoothQuant). onnxruntime's quantizer does neither for dynamic int8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .graph import (
    Constants,
    as_onnx_model,
    bias_add,
    constants,
    drop_unused_initializers,
    fold_constant_identities,
    name_nodes,
    splice_nodes,
)
from .weights import Weights

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto
    from onnxruntime.transformers.onnx_model import OnnxModel

OUTLIER_SUFFIX = "/outlier_matmul"  # ends the name of each fp32 side product of outlier channels


def weighted_matmuls(model: ModelProto | OnnxModel) -> list[NodeProto]:
    """MatMuls with a constant 2-D weight, except the fp32 side products of outlier channels."""
    graph = as_onnx_model(model).graph()
    inits = {i.name: i for i in graph.initializer}
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and len(n.input) == 2
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
        and not n.name.endswith(OUTLIER_SUFFIX)
    ]


class SiblingMatMulMerge:
    """MatMuls with constant weights that read the same activation, each followed only by a constant bias Add
    (attention's query, key and value projections), become one MatMul + Add + Split: one larger GEMM and, in
    int8, one quantization of the shared activation. Exact up to fp32 summation order."""

    def apply(self, model: ModelProto | OnnxModel, weights: Weights | None = None) -> int:
        """Rewrite ``model`` in place; returns how many groups were merged. ``weights``: where its weights are read
        from and the merged ones written to (default: inline in the graph)."""
        from onnx import helper, numpy_helper

        model = as_onnx_model(model)
        weights = weights if weights is not None else Weights(model.model, Path("."), None)
        try:
            opset = model.get_opset_version()
        except RuntimeError:  # no default-domain opset
            return 0
        if opset < 13:
            return 0  # Split takes its sizes as an input from opset 13
        name_nodes(model)
        fold_constant_identities(model)
        consts = constants(model, weights)
        consumers = model.input_name_to_nodes(exclude_subgraphs=True)
        groups: dict[str, list] = {}
        for node in weighted_matmuls(model):
            found = bias_add(model, node, consumers, consts)
            if found is not None:
                groups.setdefault(node.input[0], []).append((node, *found))
        replace: dict[str, list] = {}
        drop: set[str] = set()
        made: dict[tuple, str] = {}  # shared weights (ALBERT) are concatenated once
        for x, members in groups.items():
            if len(members) < 2:
                continue
            shapes = [consts.shape(m.input[1]) for m, _, _ in members]
            bias_shapes = [consts.shape(b) for _, _, b in members]
            if len({w[0] for w in shapes}) != 1 or any(b[0] != w[1] for w, b in zip(shapes, bias_shapes)):
                continue
            base = f"{members[0][0].name}/merged"
            key = tuple(m.input[1] for m, _, _ in members) + tuple(b for _, _, b in members)
            if key not in made:
                made[key] = base
                weights.add(np.concatenate([consts[m.input[1]] for m, _, _ in members], 1), f"{base}/weight")
                weights.add(np.concatenate([consts[b] for _, _, b in members], 0), f"{base}/bias")
                sizes = np.array([w[1] for w in shapes], np.int64)
                model.add_initializer(numpy_helper.from_array(sizes, f"{base}/sizes"))
            tensors = made[key]
            replace[members[0][0].name] = [
                helper.make_node("MatMul", [x, f"{tensors}/weight"], [f"{base}/product"], name=f"{base}/MatMul"),
                helper.make_node("Add", [f"{base}/product", f"{tensors}/bias"], [f"{base}/biased"], name=f"{base}/Add"),
                helper.make_node(
                    "Split",
                    [f"{base}/biased", f"{tensors}/sizes"],
                    [add.output[0] for _, add, _ in members],
                    axis=-1,
                    name=f"{base}/Split",
                ),
            ]
            drop.update(n.name for m in members for n in m[:2])
        if not replace:
            return 0
        splice_nodes(model, before=replace, drop=drop)
        drop_unused_initializers(model)
        return len(replace)


def merge_sibling_matmuls(model: ModelProto | OnnxModel) -> int:
    """SiblingMatMulMerge on ``model``, in place; returns how many groups were merged."""
    return SiblingMatMulMerge().apply(model)


class OutlierChannels:
    """Where a few input channels still dominate a MatMul's range after smoothing (in BERT-style models the
    [CLS] token carries, in one or two channels, values several times larger than anything else), those
    channels are multiplied in fp32 beside the int8 product: X W = X[:, ~O] W[~O] + X[:, O] W[O]. Exact in
    fp32. ``gain``: how many times the int8 range must shrink for channels to be taken out (None: never)."""

    def __init__(self, gain: float | None = None):
        self.gain = gain

    def pick(self, smoothed_amax: np.ndarray) -> list[int]:
        """The fewest top channels (1, 2, 4 or 8) whose removal shrinks the range at least ``gain``-fold."""
        if self.gain is None:
            return []
        order = np.argsort(-smoothed_amax, kind="stable")
        top = smoothed_amax[order]
        for k in (1, 2, 4, 8):
            if k < len(top) and top[0] >= self.gain * max(float(top[k]), 1e-12):
                return [int(c) for c in order[:k]]
        return []

    @staticmethod
    def add_weights(weights: Weights, wname: str, weight: np.ndarray, channels: list[int]) -> None:
        """The channels' indices and their rows of the (unscaled) weight ``wname``, as initializers."""
        weights.add(np.array(channels, np.int64), f"{wname}/outlier_channels")
        weights.add(weight[channels, :].astype(np.float32), f"{wname}/outlier_weight")

    @staticmethod
    def decompose(
        model: OnnxModel, node: NodeProto, consumers: dict[str, list], consts: Constants
    ) -> tuple[list[NodeProto], str, NodeProto]:
        """The fp32 side product of MatMul ``node`` (nodes to go before it), and the Add that adds it back
        after the node's bias Add, or after the node itself, whose output it takes over: (side-product nodes,
        name of the node the Add follows, the Add). Call before ``node``'s inputs are rewritten."""
        from onnx import helper

        x, wname = node.input[0], node.input[1]
        picked, side = f"{node.name}/outlier_input", f"{node.name}/outlier_product"
        nodes = [
            helper.make_node(
                "Gather", [x, f"{wname}/outlier_channels"], [picked], axis=-1, name=f"{node.name}/outlier_gather"
            ),
            helper.make_node("MatMul", [picked, f"{wname}/outlier_weight"], [side], name=node.name + OUTLIER_SUFFIX),
        ]
        found = bias_add(model, node, consumers, consts)
        tail = found[0] if found is not None else node
        final = tail.output[0]
        tail.output[0] = f"{final}/without_outliers"
        add = helper.make_node("Add", [tail.output[0], side], [final], name=f"{node.name}/outlier_add")
        return nodes, tail.name, add


class SmoothQuant:
    """Move activation outliers of each MatMul input into its weights, X W = (X / s)(s W), so per-tensor int8
    activations lose less (exact in fp32); ``outliers`` then takes out the channels that still dominate.
    ``amax``: per-channel calibration maxima of each MatMul input; ``alpha``: the smoothing strength."""

    def __init__(self, amax: dict[str, np.ndarray], alpha: float, outliers: OutlierChannels | None = None):
        self.amax = amax
        self.alpha = alpha
        self.outliers = outliers or OutlierChannels()

    def scales(self, weight: np.ndarray, amax: np.ndarray) -> np.ndarray:
        """Per input channel s of ``weight``, for inputs whose channels reach ``amax``."""
        # Channels calibration saw nearly silent (a GELU output that stayed negative) are scaled as if
        # typical: scaling them up by their calibrated range would blow up the int8 range on the first
        # text that does activate them.
        s = np.maximum(amax, np.median(amax)) ** self.alpha / np.maximum(np.abs(weight).max(1), 1e-8) ** (
            1 - self.alpha
        )
        s = np.clip(np.nan_to_num(s, nan=1.0, posinf=1.0), 1e-4, 1e4).astype(np.float32)
        s[amax == 0] = 1.0
        return s

    def apply(self, model: ModelProto | OnnxModel, weights: Weights | None = None) -> int:
        """Rewrite ``model`` in place; returns how many MatMuls had outlier channels taken out. ``weights``: where
        its weights are read from and the scaled ones written to, one at a time (default: inline in the graph)."""
        from onnx import helper

        model = as_onnx_model(model)
        weights = weights if weights is not None else Weights(model.model, Path("."), None)
        name_nodes(model)
        fold_constant_identities(model)
        consts = constants(model, weights)
        consumers = model.input_name_to_nodes(exclude_subgraphs=True)
        targets = [n for n in weighted_matmuls(model) if n.input[0] in self.amax]
        uses: dict[str, list[str]] = {}
        for n in targets:
            uses.setdefault(n.input[1], []).append(n.input[0])
        # One scaling per weight: a weight shared by several MatMuls (ALBERT) is scaled once, for the widest
        # range any of its inputs reaches; each input is divided by the same s, so every product stays exact.
        channels: dict[str, list[int]] = {}
        for wname, xs in uses.items():
            w = consts[wname]
            a = np.max(np.stack([np.nan_to_num(self.amax[x], nan=0.0, posinf=0.0) for x in xs]), 0)
            s = self.scales(w, a)
            inv = (1.0 / s).astype(np.float32)
            scaled = (w * s[:, None]).astype(np.float32)
            out = self.outliers.pick(a / s)
            if out:
                inv[out] = 0.0
                scaled[out, :] = 0.0
                self.outliers.add_weights(weights, wname, w, out)
            weights.add(scaled, f"{wname}/smoothed")
            weights.add(inv, f"{wname}/smooth_scale")
            channels[wname] = out
            del w, scaled
        before: dict[str, list] = {}
        after: dict[str, list] = {}
        decomposed = 0
        for node in targets:
            x, wname = node.input[0], node.input[1]
            before[node.name] = []
            if channels[wname]:
                decomposed += 1
                side, tail, add = self.outliers.decompose(model, node, consumers, consts)
                before[node.name] += side
                after[tail] = [add]
            smoothed = f"{x}/smoothed_for/{node.name}"
            before[node.name].append(
                helper.make_node("Mul", [x, f"{wname}/smooth_scale"], [smoothed], name=f"{node.name}/smooth")
            )
            node.input[0] = smoothed
            node.input[1] = f"{wname}/smoothed"
        splice_nodes(model, before=before, after=after)
        drop_unused_initializers(model)
        return decomposed
