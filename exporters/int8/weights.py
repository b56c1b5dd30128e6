"""The weights of a graph the int8 build rewrites, one tensor at a time. The graph is loaded without its external
data (the structure only), every weight is read from where it is when a rewrite needs it, and every weight a
rewrite makes goes straight to a data file of its own: the build never holds more than one weight (and the
structure) of a model over 2 GB. Graphs with their weights inline work the same way."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, TensorProto


class Weights:
    """The initializers of ``model``, whose external data locations are relative to ``folder``. New initializers
    go to ``folder / data_file`` as external data (appended), or inline when ``data_file`` is None."""

    def __init__(self, model: ModelProto, folder: Path, data_file: str | None = None):
        self.model = model
        self.folder = Path(folder)
        self.data_file = data_file
        if data_file is not None:
            (self.folder / data_file).write_bytes(b"")

    def _find(self, name: str) -> TensorProto | None:
        for t in self.model.graph.initializer:
            if t.name == name:
                return t
        return None

    def __contains__(self, name: str) -> bool:
        return self._find(name) is not None

    def shape(self, name: str) -> tuple[int, ...]:
        tensor = self._find(name)
        if tensor is None:
            raise KeyError(name)
        return tuple(tensor.dims)

    def read(self, name: str) -> np.ndarray:
        tensor = self._find(name)
        if tensor is None:
            raise KeyError(name)
        return read_tensor(tensor, self.folder)

    def read_proto(self, tensor: TensorProto) -> np.ndarray:
        return read_tensor(tensor, self.folder)

    def add(self, array: np.ndarray, name: str) -> None:
        """A new initializer ``name`` holding ``array``."""
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array)
        if self.data_file is None or array.nbytes < 1024:
            self.model.graph.initializer.append(numpy_helper.from_array(array, name))
            return
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        path = self.folder / self.data_file
        with open(path, "ab") as f:
            offset = f.tell()
            f.write(array.tobytes())
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_file), ("offset", offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.model.graph.initializer.append(tensor)


def read_tensor(tensor: TensorProto, folder: Path) -> np.ndarray:
    """A tensor's values, inline or from its external data file (relative to ``folder``), without loading the data
    into the tensor (onnx.numpy_helper.to_array would keep it there)."""
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = external_data_helper.ExternalDataInfo(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    with open(Path(folder) / info.location, "rb") as f:
        f.seek(int(info.offset or 0))
        data = np.fromfile(f, dtype=dtype, count=count)
    if data.size != count:
        raise ValueError(f"tensor {tensor.name!r}: {info.location} holds {data.size} of its {count} values")
    return data.reshape(tuple(tensor.dims))


def save_self_contained(model: ModelProto, folder: Path, path: Path, external: bool) -> list[Path]:
    """Write ``model`` (its external data relative to ``folder``) to ``path`` on its own: with ``external``, every
    weight of 1 KB or more goes to ``<path>.data``, copied one tensor at a time; otherwise all inline (the graph
    must then be under 2 GB). Returns the files written."""
    import onnx
    from onnx import TensorProto, external_data_helper, helper

    from ..memory import copy_bytes, graph_tensors

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the structure (external weights are references)
    if not external:
        for tensor in graph_tensors(copy.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                array = read_tensor(tensor, folder)
                tensor.ClearField("external_data")
                tensor.ClearField("data_location")
                tensor.raw_data = array.tobytes()
        onnx.save_model(copy, str(path))
        return [path]
    data_name = path.name + ".data"
    with open(path.with_name(data_name), "wb") as out:
        for tensor in graph_tensors(copy.graph):
            offset = out.tell()
            if tensor.data_location == TensorProto.EXTERNAL:
                info = external_data_helper.ExternalDataInfo(tensor)
                size = int(np.prod(tensor.dims)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
                copy_bytes(Path(folder) / info.location, int(info.offset or 0), size, out)
                tensor.ClearField("external_data")
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            else:
                continue
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", out.tell() - offset)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
    onnx.save_model(copy, str(path))
    return [path, path.with_name(data_name)]
