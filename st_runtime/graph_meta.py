"""Read the opset imports of an ONNX file without the onnx package.

An ONNX file is a protobuf ``ModelProto``; its field 8 (``opset_import``) is a repeated
``OperatorSetIdProto`` message with ``domain`` (field 1, string) and ``version`` (field 2, int64).
Only the top level is walked, and every other field (the graph, up to 2 GB) is skipped with a seek,
so reading costs a few small reads whatever the file size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

from .errors import GraphLoadError, OpsetTooNewError

_OPSET_IMPORT = 8


class _Truncated(ValueError):
    pass


def _varint(f: BinaryIO) -> int | None:
    """Next varint, or None at a clean end of file."""
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise _Truncated("file ends inside a varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint_bytes(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise _Truncated("message ends inside a varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _opset_entry(buf: bytes) -> tuple[str, int]:
    domain, version, pos = "", 0, 0
    while pos < len(buf):
        key, pos = _varint_bytes(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint_bytes(buf, pos)
            if field == 2:
                version = value
        elif wire == 2:
            length, pos = _varint_bytes(buf, pos)
            if field == 1:
                domain = buf[pos : pos + length].decode("utf-8", "replace")
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return domain, version


def read_opset_imports(path: str | os.PathLike) -> dict[str, int]:
    """``{domain: version}`` of an ONNX model file (the default domain "" is reported as "ai.onnx").

    Raises ``ValueError`` if the file is not a well-formed protobuf at its top level.
    """
    opsets: dict[str, int] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while True:
            key = _varint(f)
            if key is None:
                return opsets
            field, wire = key >> 3, key & 7
            if field == 0:
                raise ValueError("field number 0")
            if wire == 0:
                if _varint(f) is None:
                    raise _Truncated("file ends inside a field")
            elif wire == 1 or wire == 5:
                f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _varint(f)
                if length is None or f.tell() + length > size:
                    raise _Truncated("length-delimited field runs past the end of the file")
                if field == _OPSET_IMPORT:
                    domain, version = _opset_entry(f.read(length))
                    opsets[domain or "ai.onnx"] = version
                else:
                    f.seek(length, os.SEEK_CUR)
            else:
                raise ValueError(f"unsupported wire type {wire}")


_ORT_SUPPORT = re.compile(r"support for domain (\S+) is till opset (\d+)")


def graph_load_error(path: Path, exc: BaseException, ort_version: str) -> GraphLoadError:
    """The typed error for an onnxruntime load failure: OpsetTooNewError when the graph's opset is newer
    than what onnxruntime says it supports, otherwise GraphLoadError. Never hides the original message."""
    detail = str(exc).strip()
    m = _ORT_SUPPORT.search(detail)
    if m:
        domain, supported = m.group(1), int(m.group(2))
        try:
            used = read_opset_imports(path).get(domain)
        except (OSError, ValueError):
            used = None
        if used is not None and used > supported:
            return OpsetTooNewError(
                f"{path.name} uses opset {used} of domain {domain}, but the installed onnxruntime {ort_version} "
                f"supports {domain} only up to opset {supported}. Upgrade onnxruntime "
                f"(`pip install -U onnxruntime`, or onnxruntime-gpu), or re-export the model with an older "
                f"opset (`st-export MODEL --opset 17`). onnxruntime said: {detail[:300]}"
            )
    return GraphLoadError(
        f"onnxruntime {ort_version} could not load {path}: {detail[:500]}. If the graph uses an opset newer "
        "than this onnxruntime supports, upgrade onnxruntime; if the file is damaged, re-export the model "
        "with `st-export`."
    )
