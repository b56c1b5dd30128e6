"""What an export writes and how it is put in place: ONNX external data, the tokenizer file, a variant's manifest
entry, the tool versions, and the atomic placement of the finished folder (with the clean-up of exports that
were killed mid-way)."""

from __future__ import annotations

import ctypes
import errno
import importlib.metadata as _md
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .errors import ExportError
from .variants import PLANS

# Graphs at or above this size are written with ONNX external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            out[dist] = "not installed"
    from st_runtime import __version__

    out["st-runtime"] = __version__
    return out


def externalize(path: Path, model=None) -> Path:
    """Re-save a graph with its weights in ``<file>.data`` next to it (ONNX external data)."""
    import onnx

    model = model if model is not None else onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return data


def gather_external_data(path: Path) -> Path:
    """Put every weight of the graph in ``path`` into ``<file>.data``, one tensor at a time: the weights the
    exporter already spilled to files of their own (torch writes each tensor of a graph over 2 GB to its own file
    next to it) are copied over and removed, and weights still inside the graph are moved out. Unlike
    :func:`externalize`, the weights are never all in memory at once, so this runs while the torch model is
    still loaded without holding the model's weights twice."""
    import onnx
    from onnx import TensorProto, external_data_helper

    from .int8.weights import save_self_contained
    from .memory import graph_tensors

    model = onnx.load(str(path), load_external_data=False)
    data = path.with_name(path.name + ".data")
    spilled: set[Path] = set()
    for tensor in graph_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            source = path.parent / external_data_helper.ExternalDataInfo(tensor).location
            if source.resolve() == data.resolve():
                raise ExportError(f"{path}: a weight already points into {data.name}; cannot gather it again.")
            spilled.add(source)
    save_self_contained(model, path.parent, path, external=True)
    for source in spilled:
        source.unlink()
    return data


def write_tokenizer(st_model, path: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer

    hf_tok = st_model[0].tokenizer
    if isinstance(hf_tok, Tokenizer):  # an input module holding a tokenizers.Tokenizer itself (StaticEmbedding)
        return _write_plain_tokenizer(hf_tok, path)
    if hf_tok is None or not hasattr(hf_tok, "backend_tokenizer"):
        raise ExportError("the model's tokenizer has no fast (Rust) version, which st_runtime needs.")
    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()  # the runtime sets truncation from the manifest
    tok.save(str(path))
    return {
        "file": path.name,
        "max_seq_length": st_model.max_seq_length,
        "do_lower_case": bool(getattr(st_model[0], "do_lower_case", False)),
        "truncation_side": hf_tok.truncation_side,
        "padding_side": hf_tok.padding_side,
        "pad_token_id": hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0,
        "model_input_names": list(hf_tok.model_input_names),
    }


def _write_plain_tokenizer(tok, path: Path) -> dict[str, Any]:
    """A tokenizers.Tokenizer used as the module uses it: without padding, truncated only where its own
    tokenizer.json says (sentence-transformers sets no other limit for such modules), which the manifest records
    as max_seq_length and truncation_side for the runtime to set again."""
    from tokenizers import Tokenizer

    truncation = tok.truncation
    copy = Tokenizer.from_str(tok.to_str())
    copy.no_padding()
    copy.no_truncation()  # the runtime sets truncation from the manifest
    copy.save(str(path))
    direction = str(truncation.get("direction", "right")).lower() if truncation else "right"
    if direction not in ("left", "right"):
        raise ExportError(f"the tokenizer truncates with direction {direction!r}; st_runtime knows left and right.")
    strategy = str(truncation.get("strategy", "longest_first")).lower().replace("_", "") if truncation else ""
    if truncation and strategy != "longestfirst":
        raise ExportError(
            f"the tokenizer truncates with strategy {truncation.get('strategy')!r}; st_runtime truncates longest "
            "first. Set the truncation strategy in its tokenizer.json to longest_first (or remove truncation)."
        )
    return {
        "file": path.name,
        "max_seq_length": int(truncation["max_length"]) if truncation else None,
        "do_lower_case": False,
        "truncation_side": direction,
        "pad_token_id": 0,  # padded positions are masked out of the graph's mean
        "model_input_names": ["input_ids", "attention_mask"],
    }


def variant_entry(name: str, file: str, info: dict[str, Any]) -> dict[str, Any]:
    plan = PLANS[name]
    info = dict(info)
    return {
        "file": file,
        "precision": plan.precision,
        "status": "pending",
        "providers": list(plan.providers),
        "rank": plan.rank,
        "exact": plan.exact,
        "external_data": bool(info.pop("external_data", False)),
        "build": info,
    }


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def cleanup_stale(parent: Path, name: str) -> None:
    """Remove what exports of ``name`` killed mid-way left behind: ``.NAME.partial-PID`` folders of dead
    processes, and ``.NAME.old-PID`` folders (a previous export moved aside by the two-rename fallback of
    :func:`place`), which are moved back into place when the output is missing and removed otherwise."""
    for kind in ("old", "partial"):
        for d in sorted(parent.glob(f".{name}.{kind}-*")):
            pid = d.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or pid_alive(int(pid)):
                continue  # another export of the same model is running
            if kind == "old" and not (parent / name).exists():
                os.rename(d, parent / name)
            else:
                shutil.rmtree(d)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where the platform or
    file system does not support it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def place(tmp: Path, output: Path) -> None:
    """Move the finished export into place; the previous export stays intact until then.

    On Linux the previous export and the new one are swapped in one atomic step, so a kill at any moment
    leaves ``output`` holding either the complete previous export or the complete new one (the swapped-out
    folder, now named like the temporary one, is removed here or by the next export). Elsewhere two
    renames are used; a kill between them leaves the previous export in ``.NAME.old-PID``, which the next
    export of the same output moves back first."""
    if output.exists():
        if exchange(tmp, output):
            shutil.rmtree(tmp)
            return
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old)
    else:
        os.rename(tmp, output)
