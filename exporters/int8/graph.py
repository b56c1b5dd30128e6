"""Graph helpers for the int8 rewrites, on onnxruntime.transformers' OnnxModel. They work on the main graph,
except where they say otherwise."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, ValueInfoProto
    from onnxruntime.transformers.onnx_model import OnnxModel

    from .weights import Weights


def as_onnx_model(model: ModelProto | OnnxModel) -> OnnxModel:
    """``model`` as an OnnxModel over the same ModelProto (no copy)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    return model if isinstance(model, OnnxModel) else OnnxModel(model)


def name_nodes(model: OnnxModel) -> None:
    """Give unnamed nodes unique names (``{op_type}_st_{index}``): the rewrites name what they add after the
    node they rewrite."""
    graph = model.graph()
    taken = {n.name for n in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_st_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def fold_constant_identities(model: OnnxModel) -> None:
    """Point every input that reads an Identity of an initializer (how the exporter shares a tensor, e.g.
    ALBERT's one set of layer weights) at the initializer itself, so shared weights are seen as such. The
    Identity nodes go, unless they make a graph output."""
    graph = model.graph()
    inits = {i.name for i in graph.initializer}
    source: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity" and (node.input[0] in inits or node.input[0] in source):
            source[node.output[0]] = source.get(node.input[0], node.input[0])
    if not source:
        return
    for alias, name in source.items():
        model.replace_input_of_all_nodes(alias, name)
    model.remove_nodes(
        [
            n
            for n in graph.node
            if n.op_type == "Identity" and n.output[0] in source and model.find_graph_output(n.output[0]) is None
        ]
    )


class Constants(Mapping):
    """The graph's constant tensors by name: initializers, Constant nodes, and Identity nodes of either (the exporter
    shares equal tensors that way). Values are read when asked for, one at a time (through ``weights``, or inline),
    never all at once: the int8 build rewrites graphs whose weights stay on disk."""

    def __init__(self, model: OnnxModel, weights: Weights | None = None):
        from .weights import Weights

        graph = model.graph()
        self._weights = weights if weights is not None else Weights(model.model, Path("."), None)
        self._inits = {i.name: i for i in graph.initializer}
        self._nodes: dict[str, Any] = {}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                self._nodes[node.output[0]] = node.attribute[0].t
        self._alias: dict[str, str] = {}
        for node in graph.node:
            if node.op_type == "Identity" and (node.input[0] in self._inits or node.input[0] in self._nodes):
                self._alias[node.output[0]] = node.input[0]
            elif node.op_type == "Identity" and node.input[0] in self._alias:
                self._alias[node.output[0]] = self._alias[node.input[0]]

    def _source(self, name: str) -> str:
        return self._alias.get(name, name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        name = self._source(name)
        return name in self._inits or name in self._nodes

    def __getitem__(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        name = self._source(name)
        if name in self._inits:
            return self._weights.read_proto(self._inits[name])
        if name in self._nodes:
            return numpy_helper.to_array(self._nodes[name])
        raise KeyError(name)

    def shape(self, name: str) -> tuple[int, ...]:
        name = self._source(name)
        tensor = self._inits.get(name) or self._nodes.get(name)
        if tensor is None:
            raise KeyError(name)
        return tuple(tensor.dims)

    def __iter__(self) -> Iterator[str]:
        yield from self._inits
        yield from self._nodes
        yield from self._alias

    def __len__(self) -> int:
        return len(self._inits) + len(self._nodes) + len(self._alias)


def constants(model: OnnxModel, weights: Weights | None = None) -> Constants:
    """:class:`Constants` of ``model``."""
    return Constants(model, weights)


def bias_add(
    model: OnnxModel, node: NodeProto, consumers: dict[str, list], consts: Constants
) -> tuple[NodeProto, str] | None:
    """The Add that adds a constant 1-D bias to ``node``'s output, when it is that output's only consumer (and
    the output is no graph output), and the bias's name. ``consumers``: ``model.input_name_to_nodes()``."""
    users = model.get_children(node, consumers, output_index=0)
    if len(users) != 1 or users[0].op_type != "Add" or model.find_graph_output(node.output[0]) is not None:
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    if other not in consts or len(consts.shape(other)) != 1:
        return None
    return add, other


def splice_nodes(
    model: OnnxModel,
    before: dict[str, list[NodeProto]],
    after: dict[str, list[NodeProto]] | None = None,
    drop: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Insert nodes right before / after the node of each name and remove the nodes named in ``drop``, keeping
    the graph's order (OnnxModel.add_nodes appends at the end)."""
    after = after or {}
    graph = model.graph()
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(node.name, ()))
        if node.name not in drop:
            nodes.append(node)
        nodes.extend(after.get(node.name, ()))
    graph.ClearField("node")
    graph.node.extend(nodes)
    model.all_graphs = None  # the cached subgraphs were in the old nodes (as OnnxModel.prune_graph does)


def drop_unused_initializers(model: OnnxModel) -> None:
    """Remove the main graph's initializers that no node of any graph (subgraphs included) reads and no graph
    outputs."""
    used = set(model.input_name_to_nodes()) | set(model.get_graphs_output_names())
    for init in [i for i in model.graph().initializer if i.name not in used]:
        model.remove_initializer(init)


def float_outputs(model: ModelProto, names: list[str]) -> list[ValueInfoProto]:
    """Graph outputs for the tensors ``names`` that are not outputs already (float, shape left open)."""
    import onnx
    from onnx import helper

    have = {o.name for o in model.graph.output}
    return [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in have]
