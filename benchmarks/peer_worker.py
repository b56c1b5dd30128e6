"""Peer systems for benchmarks/throughput.py, run in their own virtual environment.

    .venv-peers/bin/python benchmarks/peer_worker.py      (started by throughput.py, one process per model)

The peers are sentence-transformers' own ONNX backend (sentence-transformers 5.x with optimum-onnx:
the plain export, its O3-optimized graph and its dynamic-quantized avx2 / avx512_vnni graphs) and
fastembed. They need package versions that conflict with st-runtime's environment, so they live in
the venv made by `scripts/setup-peers.sh`; this file imports nothing from the repository.

Protocol: JSON lines. The worker first writes {"hello": ..., "versions": ...}; then every request on
stdin gets exactly one reply on stdout, {"ok": true, ...} or {"ok": false, "error": ..., "traceback": ...}.

    {"cmd": "load", "model": NAME, "source": HUB_ID_OR_DIR, "hub_id": ID, "revision": REV,
     "cache_dir": DIR, "threads": N, "batch_size": B, "systems": [KEY, ...]}
        -> {"systems": {KEY: {"label": ..., ...}}, "skipped": {KEY: {"label": ..., "reason": ...}}}
    {"cmd": "corpus", "path": FILE}                 (a JSON object: workload name -> list of texts)
    {"cmd": "encode", "system": KEY, "workload": NAME, "save": FILE_OR_NULL}
        -> {"seconds": S, "n": N, "dim": D}          (time.perf_counter around the encode call only)
    {"cmd": "quit"}

Everything the libraries print goes to stderr: the protocol has stdout to itself.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

PROTOCOL = 1

# key -> (row label, graph file in the sentence-transformers folder, how it is made)
ST_SYSTEMS = {
    "onnx": ("ST onnx (backend=onnx)", "onnx/model.onnx", None),
    "O3": ("ST onnx O3", "onnx/model_O3.onnx", ("optimize", "O3")),
    "quint8": ("ST onnx quint8 (avx2)", None, ("quantize", "avx2")),
    "qint8": ("ST onnx qint8 (avx512_vnni)", None, ("quantize", "avx512_vnni")),
}
FASTEMBED = ("fastembed", "fastembed")
ALL_SYSTEMS = [*ST_SYSTEMS, FASTEMBED[1]]
LABELS = {**{k: v[0] for k, v in ST_SYSTEMS.items()}, FASTEMBED[1]: FASTEMBED[0]}
STAMP = "peer_export.json"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for d in (
        "sentence-transformers",
        "optimum",
        "optimum-onnx",
        "onnxruntime",
        "fastembed",
        "torch",
        "transformers",
        "tokenizers",
        "numpy",
        "onnx",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[d] = md.version(d)
    return out


def log(*args) -> None:
    print("[peer_worker]", *args, file=sys.stderr, flush=True)


def local_source(source: str, revision: str | None) -> str:
    """A local folder for SOURCE: itself, or its snapshot in the Hugging Face cache."""
    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, revision=revision, local_files_only=True)
    except Exception:  # not cached: a normal download (fails clearly under HF_HUB_OFFLINE=1)
        return snapshot_download(source, revision=revision)


def quantized_file(folder: Path, config: str) -> str:
    hits = sorted(p.name for p in (folder / "onnx").glob(f"model_*_{config}.onnx"))
    if len(hits) != 1:
        raise FileNotFoundError(f"expected one onnx/model_*_{config}.onnx in {folder}, found {hits}")
    return f"onnx/{hits[0]}"


def _remove_stale_partials(cache: Path) -> None:
    for p in cache.parent.glob(f".{cache.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            continue  # another export is running
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        shutil.rmtree(p, ignore_errors=True)


def ensure_exports(source: str, revision: str | None, cache: Path, provider_kwargs: dict) -> dict:
    """The plain ONNX export of sentence-transformers' backend and its O3/quantized graphs in CACHE.

    Made once (in a temporary folder renamed into place when complete) and reused while the source,
    revision and library versions match what peer_export.json records.
    """
    want = {
        "source": source,
        "revision": revision,
        **{
            k: v
            for k, v in versions().items()
            if k in ("sentence-transformers", "optimum", "optimum-onnx", "onnxruntime", "transformers", "torch")
        },
    }
    stamp = cache / STAMP
    if stamp.is_file():
        try:
            have = json.loads(stamp.read_text())
            complete = all((cache / f).is_file() for f in have["files"].values()) and set(have["files"]) == set(
                ST_SYSTEMS
            )
        except (ValueError, KeyError, AttributeError, TypeError):
            have, complete = {}, False
        if complete and {k: have.get(k) for k in want} == want:
            log(f"reusing exports in {cache}")
            return have
        log(
            f"exports in {cache} are stale or incomplete (made for { ({k: have.get(k) for k in want}) }): "
            "exporting again"
        )
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

    cache.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(cache)
    tmp = cache.parent / f".{cache.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    path = local_source(source, revision)
    log(f"exporting {path} with sentence-transformers' ONNX backend into {cache}")
    model = SentenceTransformer(path, backend="onnx", model_kwargs={**provider_kwargs, "export": True})
    model.save_pretrained(str(tmp))
    files = {"onnx": ST_SYSTEMS["onnx"][1]}
    times = {"onnx": round(time.perf_counter() - t0, 1)}
    for key, (_, file, how) in ST_SYSTEMS.items():
        if how is None:
            continue
        t = time.perf_counter()
        if how[0] == "optimize":
            export_optimized_onnx_model(model, how[1], str(tmp))
            files[key] = file
        else:
            export_dynamic_quantized_onnx_model(model, how[1], str(tmp))
            files[key] = quantized_file(tmp, how[1])
        times[key] = round(time.perf_counter() - t, 1)
    for f in files.values():
        if not (tmp / f).is_file():
            raise FileNotFoundError(
                f"sentence-transformers did not write {f} (onnx/ has "
                f"{sorted(p.name for p in (tmp / 'onnx').iterdir())})"
            )
    info = {
        **want,
        "files": files,
        "export_seconds": times,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (tmp / STAMP).write_text(json.dumps(info, indent=2))
    if cache.exists():
        shutil.rmtree(cache)
    os.rename(tmp, cache)
    return info


def fastembed_folder(cache: Path, max_seq_length: int) -> Path:
    """fastembed's model folder: the plain export (hard link), tokenizer files, and a tokenizer_config
    whose context is the model's max_seq_length.

    fastembed truncates at min(model_max_length, max_length) of tokenizer_config.json;
    sentence-transformers saves max_length=128 there for all-MiniLM-L6-v2 (a leftover of the hub's
    tokenizer.json), which would cut passages at 128 tokens. fastembed documents 256 tokens for that
    model, which is sentence-transformers' max_seq_length, so that is what it gets here.
    """
    folder = cache / "fastembed"
    folder.mkdir(exist_ok=True)
    target = folder / "model.onnx"
    if not target.exists():
        try:
            os.link(cache / "onnx" / "model.onnx", target)
        except OSError:
            shutil.copyfile(cache / "onnx" / "model.onnx", target)
    for f in ("tokenizer.json", "config.json", "special_tokens_map.json"):
        if (cache / f).is_file():
            shutil.copyfile(cache / f, folder / f)
    cfg = json.loads((cache / "tokenizer_config.json").read_text())
    cfg.pop("max_length", None)
    cfg["model_max_length"] = int(max_seq_length)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def st_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalized) of the sentence-transformers model in FOLDER."""
    modules = json.loads((folder / "modules.json").read_text())
    pooling, normalized = None, False
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            legacy = {
                "pooling_mode_cls_token": "cls",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean",
                "pooling_mode_lasttoken": "lasttoken",
            }
            modes = [mode for k, mode in legacy.items() if cfg.get(k) is True]
            pooling = cfg.get("pooling_mode") or "+".join(modes) or None
            if isinstance(pooling, list):
                pooling = "+".join(pooling)
        elif kind == "Normalize":
            normalized = True
        elif kind not in ("Transformer",):
            return f"unsupported module {kind}", normalized
    return pooling or "none", normalized


class Worker:
    def __init__(self):
        self.systems: dict = {}
        self.corpus: dict[str, list[str]] = {}
        self.batch_size: int | None = None  # None: each library's own default

    def load(self, req: dict) -> dict:
        import onnxruntime as ort
        import torch

        threads = int(req["threads"])
        self.batch_size = None if req.get("batch_size") is None else int(req["batch_size"])
        torch.set_num_threads(threads)  # sentence-transformers pools in torch, also with backend="onnx"
        cache = Path(req["cache_dir"])
        wanted = req.get("systems") or ALL_SYSTEMS
        unknown = [k for k in wanted if k not in ALL_SYSTEMS]
        if unknown:
            raise ValueError(f"unknown peer systems {unknown}; known: {ALL_SYSTEMS}")

        def session_options():
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = threads
            return so

        provider = {"provider": "CPUExecutionProvider"}
        info = ensure_exports(req["source"], req.get("revision"), cache, provider)
        loaded, skipped = {}, {}
        from sentence_transformers import SentenceTransformer

        max_seq_length = None
        for key in wanted:
            if key not in ST_SYSTEMS:
                continue
            label, file = ST_SYSTEMS[key][0], info["files"][key]
            try:
                model = SentenceTransformer(
                    str(cache),
                    backend="onnx",
                    device="cpu",
                    model_kwargs={**provider, "file_name": file, "session_options": session_options()},
                )
                max_seq_length = model.max_seq_length
                bs = {} if self.batch_size is None else {"batch_size": self.batch_size}
                self.systems[key] = (lambda m, kw: lambda texts: m.encode(texts, **kw))(model, bs)
                loaded[key] = {
                    "label": label,
                    "file": str(cache / file),
                    "max_seq_length": model.max_seq_length,
                    "export_seconds": info["export_seconds"].get(key),
                }
            except Exception as e:  # reported as skipped, with the reason
                log(traceback.format_exc())
                skipped[key] = {"label": label, "reason": f"{type(e).__name__}: {e}"}
        if "fastembed" in wanted:
            try:
                loaded["fastembed"] = self._load_fastembed(req, cache, threads, max_seq_length)
            except Exception as e:
                log(traceback.format_exc())
                skipped["fastembed"] = {"label": FASTEMBED[0], "reason": f"{type(e).__name__}: {e}"}
        return {"systems": loaded, "skipped": skipped, "export": info}

    def _load_fastembed(self, req: dict, cache: Path, threads: int, max_seq_length: int | None) -> dict:
        import numpy as np
        from fastembed import TextEmbedding

        if max_seq_length is None:
            from sentence_transformers import SentenceTransformer

            max_seq_length = SentenceTransformer(
                str(cache),
                backend="onnx",
                device="cpu",
                model_kwargs={"provider": "CPUExecutionProvider", "file_name": "onnx/model.onnx"},
            ).max_seq_length
        folder = fastembed_folder(cache, max_seq_length)
        hub_id = req.get("hub_id") or req["model"]
        known = {m["model"].lower(): m for m in TextEmbedding.list_supported_models()}
        if hub_id.lower() in known:
            name, config = known[hub_id.lower()]["model"], "fastembed's own registration of this model"
        else:
            # Not in fastembed's list: registered as a custom model with the pooling and
            # normalization of the sentence-transformers model.
            from fastembed.common.model_description import ModelSource, PoolingType

            pooling, normalized = st_pooling(cache)
            kinds = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "lasttoken": PoolingType.LAST_TOKEN}
            if pooling not in kinds:
                raise ValueError(f"fastembed has no pooling for this model's {pooling!r}")
            name = f"st-runtime-peer/{req['model']}"
            if name.lower() not in known:
                dim = json.loads((cache / "config.json").read_text())["hidden_size"]
                TextEmbedding.add_custom_model(
                    name,
                    pooling=kinds[pooling],
                    normalization=normalized,
                    sources=ModelSource(hf=hub_id),
                    dim=dim,
                    model_file="model.onnx",
                )
            config = f"custom model: {pooling} pooling, normalized={normalized}"
        model = TextEmbedding(
            name,
            cache_dir=str(cache / "fastembed-cache"),
            threads=threads,
            providers=["CPUExecutionProvider"],
            specific_model_path=str(folder),
            local_files_only=True,
        )
        bs = {} if self.batch_size is None else {"batch_size": self.batch_size}
        self.systems["fastembed"] = lambda texts: np.stack(list(model.embed(texts, **bs)))
        return {
            "label": FASTEMBED[0],
            "model_name": name,
            "config": config,
            "file": str(folder / "model.onnx"),
            "max_seq_length": max_seq_length,
            "class": type(model.model).__name__,
        }

    def encode(self, req: dict) -> dict:
        import numpy as np

        fn = self.systems.get(req["system"])
        if fn is None:
            raise KeyError(f"system {req['system']!r} is not loaded (loaded: {sorted(self.systems)})")
        texts = self.corpus[req["workload"]]
        t = time.perf_counter()
        emb = fn(texts)
        seconds = time.perf_counter() - t
        emb = np.asarray(emb, dtype=np.float32)
        if req.get("save"):
            np.save(req["save"], emb)
        return {"seconds": seconds, "n": int(emb.shape[0]), "dim": int(emb.shape[-1])}

    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "load":
            return self.load(req)
        if cmd == "corpus":
            self.corpus = json.loads(Path(req["path"]).read_text())
            return {"workloads": {k: len(v) for k, v in self.corpus.items()}}
        if cmd == "encode":
            return self.encode(req)
        raise ValueError(f"unknown command {cmd!r}")


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by the libraries goes to stderr
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    reply({"hello": PROTOCOL, "pid": os.getpid(), "versions": versions(), "systems": LABELS})
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("cmd") == "quit":
                reply({"ok": True})
                break
            reply({"ok": True, **worker.handle(req)})
        except Exception as e:
            log(traceback.format_exc())
            reply({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
