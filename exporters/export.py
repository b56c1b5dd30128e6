"""st-export's pipeline: resolve, load, trace one graph, write tokenizer + manifest, validate, place."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

from st_runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, dump_manifest, file_record

from .errors import ExportError, ValidationFailedError
from .resolve import ResolvedModel, resolve
from .st_model import ModelDescription, describe, inspect_folder
from .validate import validate

DEFAULT_OPSET = 17
FP32_GATE = 0.99999
# Graphs at or above this size are written with ONNX external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
ALL_PROVIDERS = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            out[dist] = "not installed"
    from st_runtime import __version__

    out["st-runtime"] = __version__
    return out


def _load_st(path: Path, trust_remote_code: bool, attn_implementation: str | None):
    from sentence_transformers import SentenceTransformer

    kwargs: dict[str, Any] = {"device": "cpu", "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["model_kwargs"] = {"attn_implementation": attn_implementation}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = SentenceTransformer(str(path), **kwargs)
    return model.eval()


def _write_tokenizer(st_model, path: Path) -> dict[str, Any]:
    from tokenizers import Tokenizer

    hf_tok = st_model[0].tokenizer
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
        "pad_token_id": hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0,
        "model_input_names": list(hf_tok.model_input_names),
    }


def _cleanup_stale(parent: Path, name: str) -> None:
    for d in parent.glob(f".{name}.partial-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # another export of the same model is running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(d, ignore_errors=True)


def _place(tmp: Path, output: Path) -> None:
    """Move the finished export into place; the previous export stays intact until then."""
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old)
    else:
        os.rename(tmp, output)


def export_model(name_or_path: str, output: str | os.PathLike | None = None, revision: str | None = None,
                 trust_remote_code: bool = False, opset: int = DEFAULT_OPSET, external_data: bool | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Export a sentence-transformers model to ``output`` (default ``exported_models/<name>``)."""
    resolved: ResolvedModel = resolve(name_or_path, revision=revision, log=log)
    output = Path(output) if output is not None else Path("exported_models") / resolved.name
    output = output.resolve()
    if output.exists() and (not output.is_dir() or (any(output.iterdir())
                                                    and not (output / MANIFEST_NAME).is_file())):
        raise ExportError(f"{output} exists and is not an st-export folder; refusing to replace it. "
                          "Choose another -o/--output.")
    model_type, modules_json = inspect_folder(resolved.local_path, trust_remote_code)
    from .specs import spec_for

    spec = spec_for(model_type)
    log(f"Loading {resolved.source} ({model_type}, origin: {resolved.origin})")
    st_export = _load_st(resolved.local_path, trust_remote_code, spec.attn_implementation)
    desc = describe(st_export, model_type, modules_json)
    reference = _load_st(resolved.local_path, trust_remote_code, None)

    output.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale(output.parent, output.name)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        from .towers import build_towers

        towers = build_towers(st_export, desc, tmp, opset, external_data, log)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": resolved.name,
            "source": {"model": resolved.source, "revision": resolved.revision, "origin": resolved.origin,
                       "modules": modules_json},
            "architecture": {"model_type": model_type, "family": spec.family},
            "towers": towers,
            "embedding": {
                "dimension": int(st_export.get_embedding_dimension()),
                "pooling": desc.pooling,
                "dense": desc.dense,
                "normalized": desc.normalized,
                "similarity_fn_name": st_export.similarity_fn_name or "cosine",
            },
            "prompts": dict(st_export.prompts or {}),
            "default_prompt_name": st_export.default_prompt_name,
            "files": {f: file_record(tmp / f) for f in files},
            "export": {
                "exporter": "torch.onnx.export",
                "dynamo": False,
                "opset": opset,
                "attn_implementation": spec.attn_implementation,
                "versions": _versions(),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            },
        }
        dump_manifest(manifest, tmp)

        from st_runtime import SentenceEncoder

        encoder = SentenceEncoder(tmp, providers="cpu", variant="fp32")
        from .towers import validation_items

        for tname, tower in manifest["towers"].items():
            report = validate(reference, encoder, FP32_GATE, validation_items(tower))
            variant = tower["variants"]["fp32"]
            variant["status"] = "passed" if report["passed"] else "failed"
            variant["validation"] = report
            log(f"{tname} fp32: {report['summary']} -> {variant['status']}")
            if not report["passed"]:
                lines = "\n".join(
                    f"  [{f['run']}] #{f.get('index')} ({f.get('tag')}) cosine {f.get('cosine', float('nan')):.7f}: "
                    f"{f.get('text', f.get('error'))!r}" for f in report["failures"][:50])
                raise ValidationFailedError(
                    f"The exported {tname} tower of {resolved.source} does not reproduce sentence-transformers: "
                    f"{len(report['failures'])} item(s) below cosine {FP32_GATE}:\n{lines}\nNothing was written to "
                    f"{output}. Please report this with the model name and the versions above.", report)
        dump_manifest(manifest, tmp)
        _place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"Wrote {output}")
    return output
