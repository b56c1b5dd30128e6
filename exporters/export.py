"""st-export's pipeline: resolve, load, trace one graph, write tokenizer + manifest, validate, place."""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import importlib.metadata as _md
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from st_runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, dump_manifest, file_record

from .errors import ExportError, ValidationFailedError
from .resolve import ResolvedModel, resolve
from .st_model import describe, inspect_folder
from .validate import validate
from .variants import PLANS, build_fp16, build_int8, build_opt

DEFAULT_OPSET = 17
# Graphs at or above this size are written with ONNX external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def default_variants() -> list[str]:
    """Every variant this machine can validate: fp16 needs CUDA (onnxruntime's CPU provider
    computes fp16 graphs in fp32, so a CPU check would not exercise fp16 arithmetic)."""
    import onnxruntime as ort

    names = ["fp32", "opt", "int8"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        names.append("fp16")
    return names


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


def _externalize(path: Path, model=None) -> Path:
    """Re-save a graph with its weights in ``<file>.data`` next to it (ONNX external data)."""
    import onnx

    model = model if model is not None else onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return data


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


def _variant_entry(name: str, file: str, info: dict[str, Any]) -> dict[str, Any]:
    plan = PLANS[name]
    info = dict(info)
    return {"file": file, "precision": plan.precision, "status": "pending", "providers": list(plan.providers),
            "rank": plan.rank, "exact": plan.exact, "external_data": bool(info.pop("external_data", False)),
            "build": info}


def _validate_variant(manifest: dict[str, Any], folder: Path, tower: str, name: str, reference, source: str,
                      log: Callable[[str], None], required: bool = True) -> bool:
    """Validate one variant of one tower through st_runtime itself and record the result in the manifest."""
    from st_runtime import SentenceEncoder

    from .towers import validation_items

    plan = PLANS[name]
    providers = "cuda" if "CPUExecutionProvider" not in plan.providers else "cpu"
    encoder = SentenceEncoder(folder, providers=providers, variant=name)
    entry = manifest["towers"][tower]
    report = validate(reference, encoder, plan.min_cosine, validation_items(entry), mean_gate=plan.mean_cosine)
    report["provider"] = providers
    variant = entry["variants"][name]
    variant["status"] = "passed" if report["passed"] else "failed"
    variant["validation"] = report
    log(f"{tower} {name}: {report['summary']} -> {variant['status']}")
    if report["passed"] or not required:
        return report["passed"]
    lines = "\n".join(
        f"  [{f['run']}] #{f.get('index')} ({f.get('tag')}) cosine {f.get('cosine', float('nan')):.7f}: "
        f"{f.get('text', f.get('error'))!r}" for f in report["failures"][:50])
    raise ValidationFailedError(
        f"The exported {name} graph of the {tower} tower of {source} does not reproduce sentence-transformers: "
        f"{len(report['failures'])} item(s) below cosine {plan.min_cosine}:\n{lines}\nNothing was written. "
        "Please report this with the model name and the versions in the manifest.", report)


def _time_variants_on_cpu(manifest: dict[str, Any], folder: Path, log: Callable[[str], None],
                          rounds: int = 5) -> None:
    """Time every passed CPU variant of the text tower on the same mixed workload, so the runtime can pick
    the fastest one measured rather than guessed (on this CPU, fused graphs are not always faster: onnxruntime
    applies its own CPU fusions to the plain graph at load). Variants alternate within each round, so a burst
    of load from elsewhere hits them alike; the median round counts."""
    import time

    from st_runtime import SentenceEncoder
    from st_runtime.providers import physical_cores

    from .battery import PASSAGES, SHORT_QUERIES

    tower = manifest["towers"].get("text")
    if tower is None:
        return
    texts = SHORT_QUERIES * 16 + PASSAGES * 4
    encoders = {name: SentenceEncoder(folder, providers="cpu", variant=name)
                for name, v in tower["variants"].items()
                if v["status"] == "passed" and "CPUExecutionProvider" in v["providers"]}
    if not encoders:
        return
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for enc in encoders.values():
        enc.encode(texts[:16])
    names = list(encoders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # a different variant goes first each round
            enc = encoders[name]
            t = time.perf_counter()
            enc.encode(texts)
            times[name].append(time.perf_counter() - t)
    timed = {}
    for name, ts in times.items():
        timed[name] = sorted(ts)[len(ts) // 2]
        tower["variants"][name]["cpu_timing"] = {"items": len(texts), "median_s": timed[name],
                                                 "threads": physical_cores(), "rounds": rounds}
    if timed:
        log("CPU timing (items/s): " + ", ".join(f"{n} {len(texts) / t:.0f}" for n, t in timed.items()))


def _calibration_feeds(folder: Path, input_names: list[str]) -> list[dict[str, Any]]:
    """Calibration inputs exactly as the runtime builds them: every text alone, and the whole set through
    the runtime's own length-sorted batching (int8 activation ranges are per batch, so batch company
    matters as much as the text)."""
    from st_runtime import SentenceEncoder

    from .battery import CALIBRATION

    text = SentenceEncoder(folder, variant="fp32").text_tower
    encodings = text.tokenizer.encode_batch(CALIBRATION)
    lengths = np.array([len(e) for e in encodings], dtype=np.int64)
    feeds = [text.feeds(encodings, lengths, np.array([i]), int(n)) for i, n in enumerate(lengths)]
    order = np.argsort(-lengths, kind="stable")
    for start, end, width in text.plan(lengths[order], text.policy.auto_batch_size, text.max_seq_length):
        if end - start > 1:
            feeds.append(text.feeds(encodings, lengths, order[start:end], width))
    return [{k: f[k] for k in input_names} for f in feeds]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _cleanup_stale(parent: Path, name: str) -> None:
    """Remove what exports of ``name`` killed mid-way left behind: ``.NAME.partial-PID`` folders of dead
    processes, and ``.NAME.old-PID`` folders (a previous export moved aside by the two-rename fallback of
    :func:`_place`), which are moved back into place when the output is missing and removed otherwise."""
    for kind in ("old", "partial"):
        for d in sorted(parent.glob(f".{name}.{kind}-*")):
            pid = d.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue  # another export of the same model is running
            if kind == "old" and not (parent / name).exists():
                os.rename(d, parent / name)
            else:
                shutil.rmtree(d)


def _exchange(a: Path, b: Path) -> bool:
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


def _place(tmp: Path, output: Path) -> None:
    """Move the finished export into place; the previous export stays intact until then.

    On Linux the previous export and the new one are swapped in one atomic step, so a kill at any moment
    leaves ``output`` holding either the complete previous export or the complete new one (the swapped-out
    folder, now named like the temporary one, is removed here or by the next export). Elsewhere two
    renames are used; a kill between them leaves the previous export in ``.NAME.old-PID``, which the next
    export of the same output moves back first."""
    if output.exists():
        if _exchange(tmp, output):
            shutil.rmtree(tmp)
            return
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old)
    else:
        os.rename(tmp, output)


def export_model(name_or_path: str, output: str | os.PathLike | None = None, revision: str | None = None,
                 trust_remote_code: bool = False, opset: int = DEFAULT_OPSET, external_data: bool | None = None,
                 variants: list[str] | None = None, log: Callable[[str], None] = print) -> Path:
    """Export a sentence-transformers model to ``output`` (default ``exported_models/<name>``).

    ``variants``: graph variants to build besides the fp32 graph (which is always built and must pass):
    any of "opt", "int8", "fp16"; default :func:`default_variants`.
    """
    wanted = list(dict.fromkeys(["fp32"] + list(variants if variants is not None else default_variants())))
    unknown = [v for v in wanted if v not in PLANS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; choose from {sorted(PLANS)}.")
    if "fp16" in wanted:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError("the fp16 variant can only be validated on CUDA, and this onnxruntime offers "
                              f"{ort.get_available_providers()}. Export on a machine with onnxruntime-gpu and a GPU, "
                              "or leave fp16 out.")
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

        rejected: dict[str, Any] = {}
        for tname, tower in manifest["towers"].items():
            _validate_variant(manifest, tmp, tname, "fp32", reference, resolved.source, log)
        for tname, tower in manifest["towers"].items():
            if tower["modality"] != "text":
                continue
            fp32_path = tmp / tower["variants"]["fp32"]["file"]
            used_external = tower["variants"]["fp32"]["external_data"]
            for name in [v for v in wanted[1:] if v in spec.variants]:
                plan = PLANS[name]
                path = tmp / f"{fp32_path.stem}_{name}.onnx"
                opt_path = tmp / f"{fp32_path.stem}_opt.onnx"
                log(f"Building {name} variant of the {tname} tower")
                try:
                    if name == "opt":
                        hf_config = st_export[0].auto_model.config
                        info = build_opt(fp32_path, path, spec.ort_optimizer_type, hf_config.num_attention_heads,
                                         hf_config.hidden_size, spec.attention_fusion)
                        fused = info["fused_operators"]
                        if not fused["Attention"] + fused["MultiHeadAttention"]:
                            import onnxruntime as ort

                            log(f"warning: onnxruntime {ort.__version__}'s optimizer fused no attention in "
                                f"the {tname} tower's opt graph ({fused}); the graph is exact but its attention "
                                "runs unfused. A newer onnxruntime may fuse it (1.30 fused none in BERT exports "
                                "of transformers 5.17, 1.31 does): `pip install -U onnxruntime`, export again.")
                    elif name == "int8":
                        info = build_int8(fp32_path, path,
                                          _calibration_feeds(tmp, tower["inputs"]), "sentence_embedding",
                                          target_min=plan.min_cosine + 0.003,
                                          target_mean=plan.mean_cosine + 0.002, workdir=tmp, log=log)
                    else:
                        info = build_fp16(opt_path if "opt" in tower["variants"] else fp32_path, path)
                except Exception as exc:  # an optional variant that cannot be built is reported, not fatal
                    error = f"{type(exc).__name__}: {exc}"
                    log(f"{tname} {name}: could not be built ({error[:300]}); it is left out.")
                    rejected[name] = {"status": "failed", "error": error,
                                      "validation": {"summary": f"build failed: {error[:300]}"}}
                    for f in (path, path.with_name(path.name + ".data")):
                        if f.exists():
                            f.unlink()
                    continue
                written = [path]
                if used_external:
                    written.append(_externalize(path))
                    info["external_data"] = True
                for f in written:
                    manifest["files"][f.name] = file_record(f)
                tower["variants"][name] = _variant_entry(name, path.name, info)
                dump_manifest(manifest, tmp)
                if not _validate_variant(manifest, tmp, tname, name, reference, resolved.source, log,
                                         required=False):
                    rejected[name] = tower["variants"].pop(name)
                    for f in written:
                        del manifest["files"][f.name]
                        f.unlink()
        manifest["export"]["rejected_variants"] = rejected
        _time_variants_on_cpu(manifest, tmp, log)
        dump_manifest(manifest, tmp)
        _place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"Wrote {output}")
    return output
