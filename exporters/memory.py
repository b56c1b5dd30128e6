"""Keeping the exporter's resident memory near one copy of the model's weights."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def release_memory() -> None:
    """Collect what was dropped and hand the freed heap back to the system: glibc keeps freed memory
    otherwise, so one step's peak would stay resident through the next."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class ChildFailedError(RuntimeError):
    """A step run in a child process failed; the message ends with the child's own error."""


def run_in_child(function: str, kwargs: dict[str, Any], workdir: Path) -> Any:
    """``module:function(**kwargs)`` in a fresh Python process, its working directory a scratch folder made
    (and removed) under ``workdir``, and its JSON-able result. The exporter's process holds the torch stack,
    the references and the tokenizers; a graph rewrite that needs several transient copies of the weights
    (onnxruntime's optimizer) then adds only its own peak, and all of it is returned to the
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


COPY_BYTES = 64 << 20


def copy_bytes(source: Path, offset: int, length: int, out) -> None:
    """Append ``length`` bytes of ``source`` from ``offset`` to the open file ``out``, in pieces: one tensor can be
    most of a model (an embedding table)."""
    copied = 0
    with open(source, "rb") as f:
        f.seek(offset)
        while copied < length:
            piece = f.read(min(COPY_BYTES, length - copied))
            if not piece:
                raise ValueError(f"{source} ends {length - copied} bytes short of the tensor stored at offset {offset}")
            out.write(piece)
            copied += len(piece)


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
