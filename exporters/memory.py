"""Keeping the exporter's resident memory near one copy of the model's weights."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def release_memory() -> None:
    """Collect what was dropped and hand the freed heap back to the system: glibc keeps freed memory
    otherwise, so one step's peak would stay resident through the next."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


class ChildFailedError(RuntimeError):
    """A step run in a child process failed; the message ends with the child's own error."""


def run_in_child(function: str, kwargs: dict[str, Any], workdir: Path) -> Any:
    """``module:function(**kwargs)`` in a fresh Python process, its working directory a scratch folder made
    (and removed) under ``workdir``, and its JSON-able result. The exporter's process holds the torch stack,
    the references and the tokenizers; a graph rewrite that needs several transient copies of the weights
    (onnxruntime's optimizer, its quantizer) then adds only its own peak, and all of it is returned to the
    system when the child exits. This very package is imported, wherever it was imported from here."""
    module, name = function.split(":")
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory(prefix=".child-", dir=workdir) as scratch:
        result_path = Path(scratch) / "result.json"
        code = (
            "import importlib, json, sys\n"
            f"f = getattr(importlib.import_module({module!r}), {name!r})\n"
            "result = f(**json.loads(sys.argv[1]))\n"
            "open(sys.argv[2], 'w').write(json.dumps(result))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(kwargs), str(result_path)],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if done.returncode != 0:
            lines = done.stdout.strip().splitlines() or [f"exit status {done.returncode}"]
            tail = "\n".join(lines[-15:])
            # the child's own error first: callers may show only the message's beginning
            raise ChildFailedError(f"{lines[-1]} (in the child process running {function}; it ended with:\n{tail})")
        return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------- weights kept on disk
def graph_tensors(graph) -> Iterator[Any]:
    """Every TensorProto of a graph and its subgraphs (initializers, tensor attributes)."""
    from onnx import AttributeProto

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.GRAPH:
                yield from graph_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from graph_tensors(g)


def weights_to_disk(src: Path, data_file: str, min_bytes: int = 65536):
    """The graph in ``src`` with every initializer of at least ``min_bytes`` moved to ``data_file`` (a path
    relative to the working directory) as ONNX external data. onnx.numpy_helper.to_array reads such a
    tensor from the working directory when a rewrite needs its values, so rewrites and shape inference that
    copy the graph copy only its structure. :func:`weights_from_disk` puts the weights back, byte for byte."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load(str(src))
    with open(data_file, "wb") as f:
        for tensor in model.graph.initializer:
            # a tensor whose location field is set (even to DEFAULT) would not come back byte for byte
            if len(tensor.raw_data) < min_bytes or tensor.HasField("data_location"):
                continue
            offset = f.tell()
            f.write(tensor.raw_data)
            external_data_helper.set_external_data(tensor, data_file, offset, len(tensor.raw_data))
            tensor.ClearField("raw_data")
    # a fresh, small message: protobuf keeps a cleared field's bytes in the message's arena until it is freed
    compact = onnx.ModelProto()
    compact.ParseFromString(model.SerializeToString())
    del model
    release_memory()
    return compact


def weights_from_disk(model, data_file: str) -> None:
    """Load every tensor of ``model`` stored in ``data_file`` by :func:`weights_to_disk` back into the graph
    (also those a rewrite already read), exactly as it was before."""
    from onnx import TensorProto, external_data_helper

    with open(data_file, "rb") as f:
        for tensor in graph_tensors(model.graph):
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            info = external_data_helper.ExternalDataInfo(tensor)
            if info.location != data_file:
                raise ValueError(f"tensor {tensor.name!r} is stored in {info.location!r}, not {data_file!r}")
            f.seek(info.offset)
            tensor.raw_data = f.read(info.length)
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")


# ----------------------------------------------------------------------------- the torch model while it is traced
@contextmanager
def weights_ready_to_trace(module) -> Iterator[None]:
    """While ``module`` is traced: every ``nn.Linear`` holds its weight transposed ([in, out]) and multiplies by it
    (the graph torch.onnx.export writes for a Linear anyway), and every other weight is a copy in
    the process's own memory.

    torch.onnx.export otherwise transposes each Linear weight by constant folding: a second copy of nearly all of a
    transformer's weights, held beside the model until the graph is written (2.57 GiB of anonymous memory on top of
    2.4 GiB of mapped checkpoint for Qwen3-Embedding-0.6B's 2.22 GiB of weights). transformers maps the checkpoint
    into memory, and the pages the trace reads stay resident while any weight refers to the map; once every weight
    is a copy, the map is closed, so the weights are resident once. Weights are transposed one at a time; a weight
    tied to another module (an MLM head's decoder) keeps its layout. On exit the Linears are transposed back: the
    values are those the model was loaded with, bit for bit, for the reference outputs computed from it."""
    import torch

    owners: dict[int, int] = {}
    for sub in module.modules():
        for p in list(sub._parameters.values()) + list(sub._buffers.values()):
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    linears = [
        m
        for m in module.modules()
        if type(m) is torch.nn.Linear
        and owners.get(id(m.weight), 0) == 1
        and not torch.nn.utils.parametrize.is_parametrized(m)
        and "forward" not in m.__dict__
    ]
    done: set[int] = set()
    patched: list = []
    with torch.no_grad():
        try:
            for m in linears:
                m.weight.data = m.weight.data.t().contiguous()
                m.forward = _transposed_linear_forward.__get__(m)
                patched.append(m)
                done.add(id(m.weight))
            for sub in module.modules():
                for p in list(sub._parameters.values()) + list(sub._buffers.values()):
                    if p is not None and id(p) not in done:
                        p.data = p.data.clone()
                        done.add(id(p))
            release_memory()
            yield
        finally:
            for m in patched:
                del m.forward
                m.weight.data = m.weight.data.t().contiguous()


def _transposed_linear_forward(self, x):
    """What torch.onnx.export writes for a Linear (Gemm for a 2-D input with a bias, else MatMul then Add(bias,
    product)), reading the transposed weight directly: the same graph, without the folded transpose."""
    import torch

    if x.dim() == 2 and self.bias is not None:
        return torch.addmm(self.bias, x, self.weight)
    y = torch.matmul(x, self.weight)
    return y if self.bias is None else self.bias + y
