"""Throughput of st_runtime against sentence-transformers, in one run, on the same inputs and threads.

    python -m benchmarks.throughput all-MiniLM-L6-v2 [all-mpnet-base-v2 ...] [--provider cpu|cuda]
        [--threads N] [--rounds 5] [--json FILE] [--png FILE] [--peer-python PY | --no-peers]

MODEL is a folder written by st-export, or a name whose export lives in exported_models/NAME (it is
exported first when missing). The reference is sentence-transformers loaded from the source the
manifest records (hub id, resolved through the local HF cache, or local folder).

Workloads come from two corpora: a fixed, seeded generated one (make_corpus) and real English text, the README
text installed Python packages ship (docs_corpus). Each gives short queries (about 8-20 tokens, like the model
table's "queries"), passages (about 100-200 tokens) and a mix (80% queries, 20% passages in one call). Every
system runs every workload once per round, systems alternating, after a warm-up; figures are medians over rounds.

Peers (CPU only): sentence-transformers' own ONNX backend (plain, O3, dynamic-quantized avx2 and
avx512_vnni graphs) and fastembed need packages that conflict with this environment, so they run in a
second venv (`bash scripts/setup-peers.sh` makes .venv-peers, used when it exists) as a worker process
(benchmarks/peer_worker.py, one per model) that this script drives: the same texts, threads, batch size
and rounds, alternating with the other systems; the worker times each encode call itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REFERENCE, ROOT, bundled_path, docs_corpus, ensure_export, machine, make_corpus
from benchmarks.peer_client import PeerError, PeerWorker
from benchmarks.peer_worker import LABELS as PEER_LABELS  # stdlib-only at module level

HALF = "sentence-transformers fp16"  # CUDA only
DEFAULT_PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"

# queries/s published in the sentence-transformers model table (V100 GPU / CPU), for context only:
# different hardware, so only our same-run ratios are comparable.
PUBLISHED = {
    "all-MiniLM-L6-v2": (14200, 750),
    "multi-qa-MiniLM-L6-cos-v1": (18000, 750),
    "all-mpnet-base-v2": (2800, 170),
    "multi-qa-mpnet-base-dot-v1": (4000, 170),
    "all-MiniLM-L12-v2": (7500, 400),
    "all-distilroberta-v1": (4000, 350),
}


def with_mix(corpus: dict[str, list[str]], seed: int = 3) -> dict[str, list[str]]:
    """The corpus plus "mix": 80% queries and 20% passages, shuffled into one call (all passages, 4x as many
    queries)."""
    rng = random.Random(seed)
    mix = corpus["queries"][: 4 * len(corpus["passages"])] + corpus["passages"]
    rng.shuffle(mix)
    return {**corpus, "mix": mix}


CORPORA = {"generated": make_corpus, "docs": docs_corpus}


def _local(fn):
    """A system of this process: (embeddings when asked, seconds of the encode call)."""

    def run(texts: list[str], workload: str, want: bool):
        t = time.perf_counter()
        out = fn(texts)
        seconds = time.perf_counter() - t
        return (np.asarray(out) if want else None), seconds

    return run


def _peer(worker: PeerWorker, key: str, tmp: Path, timeout: float):
    """A system of the peer worker, which times its encode call itself."""

    def run(texts: list[str], workload: str, want: bool):
        save = tmp / f"{key}-{workload}.npy" if want else None
        r = worker.request(
            {"cmd": "encode", "system": key, "workload": workload, "save": str(save) if save else None},
            timeout,
            f"encode {key} on {workload}",
        )
        if r["n"] != len(texts):
            raise PeerError(f"the peer worker encoded {r['n']} of {len(texts)} {workload}", alive=True)
        return (np.load(save) if save else None), float(r["seconds"])

    return run


def start_peers(
    peers: dict,
    folder: Path,
    manifest: dict,
    source: str,
    threads: int,
    batch_size: int | None,
    corpus_file: Path,
    tmp: Path,
) -> tuple[PeerWorker | None, dict, dict]:
    """Start the peer worker for the model exported in FOLDER and load its systems: (worker, systems, report)."""
    name = folder.resolve().name
    cache = ROOT / "exported_models" / "peers" / name
    report = {"cache": str(cache), "systems": {}, "skipped": {}, "failed": {}}
    print(
        f"peers: loading {', '.join(peers['systems'])} with {peers['python']} (exports in {cache}, made on "
        f"first use; worker log {cache.parent / (name + '.worker.log')})",
        flush=True,
    )
    worker = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        worker = PeerWorker(peers["python"], cache.parent / f"{name}.worker.log")  # kept after the run
        peers.setdefault("versions", worker.hello.get("versions"))
        loaded = worker.request(
            {
                "cmd": "load",
                "model": name,
                "source": source,
                "hub_id": manifest["source"]["model"],
                "revision": manifest["source"].get("revision"),
                "cache_dir": str(cache),
                "threads": threads,
                "batch_size": batch_size,
                "systems": peers["systems"],
            },
            peers["load_timeout"],
            "load",
        )
        worker.request({"cmd": "corpus", "path": str(corpus_file)}, peers["timeout"])
    except PeerError as e:
        if worker is not None:
            worker.close()
        for key in peers["systems"]:
            report["failed"][PEER_LABELS[key]] = {"error": str(e)}
        print(f"peers: FAILED to start for {name}: {e}", flush=True)
        return None, {}, report
    report["export"] = loaded.get("export")
    systems = {}
    for key, info in loaded["systems"].items():
        systems[info["label"]] = (key, _peer(worker, key, tmp, peers["timeout"]))
        report["systems"][info["label"]] = info
    for _key, info in loaded["skipped"].items():
        report["skipped"][info["label"]] = info["reason"]
        print(f"peers: {info['label']} skipped: {info['reason']}", flush=True)
    return worker, systems, report


def reference_source(manifest: dict) -> str:
    """Where sentence-transformers loads the exported model from: the bundled copy or the local folder the
    manifest records, else the hub id (resolved through the local HF cache)."""
    source = manifest["source"]["model"]
    if manifest["source"]["origin"].startswith("bundled:") or Path(source).is_dir():
        source = source if Path(source).is_dir() else bundled_path(manifest)
    return source


def _encoder_system(enc, bs: dict):
    return _local(lambda x: enc.encode(x, **bs))


def _optional_encoder(systems: dict, unavailable: dict, label: str, bs: dict, *args, **kwargs) -> None:
    """st_runtime's SentenceEncoder(*args, **kwargs) as system ``label``, or why it could not be made."""
    from st_runtime import SentenceEncoder

    try:
        enc = SentenceEncoder(*args, **kwargs)
    except Exception as e:  # recorded in the results, not hidden: CUDA graphs and TensorRT are optional
        unavailable[label] = f"{type(e).__name__}: {e}"
    else:
        systems[label] = _encoder_system(enc, bs)


def local_systems(
    folder: Path,
    manifest: dict,
    source: str,
    provider: str,
    threads: int,
    bs: dict,
    variants: list[str] | None,
    cuda_graphs: bool,
) -> tuple[dict, dict]:
    """The systems of this process, in the order they run: sentence-transformers (fp32, and fp16 on CUDA), each
    st_runtime variant (and with CUDA graphs), st_runtime on TensorRT; and {label: why} of those that could not be
    made."""
    import torch
    from sentence_transformers import SentenceTransformer

    from st_runtime import SentenceEncoder

    torch.set_num_threads(threads)
    device = "cuda" if provider == "cuda" else "cpu"
    st_model = SentenceTransformer(source, device=device)
    systems = {REFERENCE: _local(lambda x: st_model.encode(x, **bs))}
    if device == "cuda":
        st_half = SentenceTransformer(source, device=device).half()
        systems[HALF] = _local(lambda x: st_half.encode(x, **bs))
    available = manifest["towers"]["text"]["variants"]
    default = SentenceEncoder(folder, providers=provider).variant
    unavailable: dict[str, str] = {}
    for v in variants or sorted(available, key=lambda k: -available[k]["rank"]):
        if v not in available:
            continue
        enc = SentenceEncoder(folder, providers=provider, threads=threads, variant=v)
        systems[f"st_runtime {v}" + (" (default)" if v == default else "")] = _encoder_system(enc, bs)
        if device == "cuda" and cuda_graphs:
            label = f"st_runtime {v} + CUDA graphs"
            _optional_encoder(
                systems,
                unavailable,
                label,
                bs,
                folder,
                providers=provider,
                threads=threads,
                variant=v,
                cuda_graphs=True,
            )
    if device == "cuda":
        label = f"st_runtime {default} on TensorRT"
        _optional_encoder(
            systems, unavailable, label, bs, folder, providers="tensorrt", threads=threads, variant=default
        )
    return systems, unavailable


class ModelRun:
    """The systems measured on one model (the peers' among them, which may fail mid-run), and their results."""

    def __init__(self, systems: dict, unavailable: dict, header: dict):
        self.systems = systems
        self.unavailable = unavailable
        self.header = header
        self.peer_keys: dict[str, str] = {}
        self.peer_report: dict | None = None
        self.results: dict[str, dict] = {}

    def add_peers(self, peer_systems: dict, peer_report: dict) -> None:
        self.peer_report = peer_report
        for label, (key, fn) in peer_systems.items():
            self.systems[label] = fn
            self.peer_keys[label] = key

    def fail(self, label: str, err: PeerError) -> None:
        """A peer system that failed: out of the run, loudly, with the worker's error (all of them if it died)."""
        gone = [label] if err.alive else [n for n in self.peer_keys if n in self.systems]
        for name in gone:
            self.systems.pop(name, None)
            self.peer_report["failed"][name] = {"error": str(err)}
            self.peer_report["systems"].pop(name, None)
        print(f"peers: FAILED {', '.join(gone)}: {err}", flush=True)

    def call(self, name: str, texts: list[str], workload: str, want: bool):
        if name not in self.systems:  # a peer that failed earlier in this round
            return None
        try:
            return self.systems[name](texts, workload, want)
        except PeerError as e:
            if name not in self.peer_keys:
                raise
            self.fail(name, e)
            return None

    def measure(self, workload: str, texts: list[str], rounds: int) -> None:
        """Every system on one workload: a warm-up call that also gives its accuracy against sentence-transformers,
        then ``rounds`` timed calls, systems alternating."""
        from exporters.validate import cosines

        ref = self.systems[REFERENCE](texts, workload, True)[0]
        times: dict[str, list[float]] = {name: [] for name in self.systems}
        accuracy = {}
        for name in list(self.systems):
            got = self.call(name, texts, workload, True)
            if got is None:
                continue
            cos = cosines(ref, got[0])
            accuracy[name] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
        for _ in range(rounds):
            for name in list(self.systems):
                got = self.call(name, texts, workload, False)
                if got is not None:
                    times[name].append(got[1])
        self.results[workload] = self.figures(len(texts), times, accuracy)

    def figures(self, n: int, times: dict[str, list[float]], accuracy: dict) -> dict:
        base = statistics.median(times[REFERENCE])
        half = statistics.median(times[HALF]) if HALF in times else None
        return {
            name: {
                "items_per_s": n / statistics.median(ts),
                "median_s": statistics.median(ts),
                "all_s": ts,
                "ratio_to_sentence_transformers": base / statistics.median(ts),
                **({"ratio_to_sentence_transformers_fp16": half / statistics.median(ts)} if half else {}),
                **accuracy[name],
                **({"peer": True} if name in self.peer_keys else {}),
            }
            for name, ts in times.items()
            if name in self.systems
        }

    def summary(self) -> dict:
        out = {**self.header, "results": self.results}
        if self.peer_report is not None:
            out["peers"] = self.peer_report
        if self.unavailable:
            out["unavailable"] = self.unavailable
        return out


def bench_model(
    model: str,
    provider: str,
    threads: int,
    rounds: int,
    batch_size: int | None,
    corpus: dict,
    variants: list[str] | None,
    peers: dict | None = None,
    corpus_file: Path | None = None,
    tmp: Path | None = None,
    cuda_graphs: bool = True,
    progress=None,
) -> dict:
    folder = ensure_export(model)
    manifest = json.loads((folder / "manifest.json").read_text())
    source = reference_source(manifest)
    if manifest.get("task") == "cross-encoder":  # a reranker: (query, passage) workloads against CrossEncoder
        from benchmarks.rerank import bench_reranker

        return bench_reranker(folder, manifest, source, threads, rounds, corpus, variants)
    if manifest.get("task") == "multi-vector":  # ColBERT: encode_query / encode_document against MultiVectorEncoder
        from benchmarks.multi_vector import bench_multi_vector

        return bench_multi_vector(folder, manifest, source, threads, rounds, corpus, variants)
    bs = {} if batch_size is None else {"batch_size": batch_size}  # None: each system's own default
    systems, unavailable = local_systems(folder, manifest, source, provider, threads, bs, variants, cuda_graphs)
    name = Path(model).name
    header = {
        "model": name,
        **({"random_weights": True} if name.startswith("random-") else {}),
        "source": source,
        "published_queries_per_s": dict(zip(("gpu", "cpu"), PUBLISHED.get(name, (None, None)))),
        "workloads": {k: len(v) for k, v in corpus.items()},
    }
    run = ModelRun(systems, unavailable, header)
    worker = None
    if peers:
        worker, peer_systems, peer_report = start_peers(
            peers, folder, manifest, source, threads, batch_size, corpus_file, tmp
        )
        run.add_peers(peer_systems, peer_report)
    try:
        for workload, texts in corpus.items():
            run.measure(workload, texts, rounds)
            if progress is not None:  # each finished workload is saved: a run cut short keeps its figures
                progress(run.summary())
    finally:
        if worker is not None:
            worker.close()
    return run.summary()


def print_table(res: dict, provider: str) -> None:
    pub = res["published_queries_per_s"]["gpu" if provider == "cuda" else "cpu"]
    print(f"\n{res['model']}  (model table, {provider.upper()}: {pub or 'n/a'} queries/s on its hardware)")
    half = any("ratio_to_sentence_transformers_fp16" in r for rows in res["results"].values() for r in rows.values())
    print(
        f"{'workload':9} {'system':34} {'items/s':>9} {'vs ST':>6}"
        + (f" {'vs fp16':>7}" if half else "")
        + f" {'min cos':>9} {'mean cos':>9}"
    )
    for workload, rows in res["results"].items():
        for name, r in rows.items():
            accuracy = (
                f" {r['min_cosine']:9.6f} {r['mean_cosine']:9.6f}"
                if "min_cosine" in r
                else f" max score diff {r['max_score_diff']:.1e}, top 10 "
                + ("identical" if r["top10_identical"] else "DIFFERENT")
            )
            print(
                f"{workload:9} {name:34} {r['items_per_s']:9.1f} {r['ratio_to_sentence_transformers']:5.2f}x"
                + (f" {r['ratio_to_sentence_transformers_fp16']:6.2f}x" if half else "")
                + accuracy
            )
    for name, reason in res.get("unavailable", {}).items():
        print(f"{'':9} {name:34} not measured: {reason.splitlines()[0][:160]}")
    peers = res.get("peers") or {}
    for name, reason in peers.get("skipped", {}).items():
        print(f"{'':9} {name:34} skipped: {reason}")
    for name, failure in peers.get("failed", {}).items():
        print(f"{'':9} {name:34} FAILED: {failure['error'].splitlines()[0]}")


def plot(all_results: list[dict], path: Path, title: str = "") -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written (pip install matplotlib)")
        return False
    rows = [
        (f"{r['model']}\n{w}", name.replace(" (default)", ""), v["ratio_to_sentence_transformers"])
        for r in all_results
        for w, sysres in r["results"].items()
        for name, v in sysres.items()
    ]
    groups = list(dict.fromkeys(g for g, _, _ in rows))
    names = list(dict.fromkeys(n for _, n, _ in rows))
    fig, ax = plt.subplots(figsize=(2.2 * len(groups) + 3, 4.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [i + j * width for i, g in enumerate(groups) for gg, n, _ in rows if gg == g and n == name]
        ys = [v for g in groups for gg, n, v in rows if gg == g and n == name]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_ylabel("throughput / sentence-transformers (same run)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*")
    p.add_argument(
        "--random-weights",
        default="",
        help="comma-separated random-weight models at real shapes (benchmarks/random_shapes.py: modernbert-base, "
        "qwen3-0.6b, embeddinggemma-300m, bge-m3; benchmarks/multi_vector.py: answerai-colbert-small, "
        "gte-moderncolbert), built and exported on first use; their results say so",
    )
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: physical cores)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="texts per batch for every system (default: each system's own default: 32 for "
        "sentence-transformers, 256 for fastembed, a token budget for st_runtime)",
    )
    p.add_argument("--queries", type=int, default=None, help="short queries (default 2048; 32768 on cuda)")
    p.add_argument("--passages", type=int, default=None, help="passages (default 256; 4096 on cuda)")
    p.add_argument(
        "--no-cuda-graphs", action="store_true", help="on cuda, do not also measure each variant with cuda_graphs=True"
    )
    p.add_argument("--variants", default=None, help="comma-separated st_runtime variants (default: all)")
    p.add_argument(
        "--corpora",
        default="generated,docs",
        help="comma-separated corpora: generated (seeded sentences of common words), docs (the README text of the "
        "installed Python packages); default both",
    )
    p.add_argument(
        "--workloads", default="queries,passages,mix", help="comma-separated: queries, passages, mix (80/20)"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    _add_peer_arguments(p)
    return p


def _add_peer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peer-python",
        type=Path,
        default=None,
        help=f"python of the peer venv (default: {DEFAULT_PEER_PYTHON.relative_to(ROOT)} when it exists; "
        "made by scripts/setup-peers.sh)",
    )
    p.add_argument("--no-peers", action="store_true", help="measure no peers")
    p.add_argument(
        "--peer-systems",
        default=",".join(PEER_LABELS),
        help=f"comma-separated peers to measure (default: all of {','.join(PEER_LABELS)})",
    )
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=900.0,
        help="seconds the peer worker may take for one encode call before it is killed (default 900)",
    )
    p.add_argument(
        "--peer-load-timeout",
        type=float,
        default=3600.0,
        help="seconds the peer worker may take to export and load its systems (default 3600)",
    )


def _peer_systems(p: argparse.ArgumentParser, args) -> list[str]:
    peer_systems = [k for k in args.peer_systems.split(",") if k]
    unknown = [k for k in peer_systems if k not in PEER_LABELS]
    if unknown:
        p.error(f"unknown --peer-systems {unknown}; choose from {','.join(PEER_LABELS)}")
    if args.peer_python is not None and not args.no_peers and not args.peer_python.is_file():
        p.error(f"--peer-python {args.peer_python}: no such file (bash scripts/setup-peers.sh makes .venv-peers)")
    return peer_systems


def _workloads(p: argparse.ArgumentParser, args) -> dict[str, list[str]]:
    """workload name -> texts, for every --corpora and --workloads asked for."""
    gpu = args.provider == "cuda"
    corpus = {}
    for name in args.corpora.split(","):
        if name not in CORPORA:
            p.error(f"unknown corpus {name!r}; choose from {','.join(CORPORA)}")
        texts = with_mix(
            CORPORA[name](
                n_queries=args.queries or (32768 if gpu else 2048), n_passages=args.passages or (4096 if gpu else 256)
            )
        )
        for workload in args.workloads.split(","):
            if workload not in texts:
                p.error(f"unknown workload {workload!r}; choose from {','.join(texts)}")
            # the generated corpus keeps its old workload names, so earlier results compare
            corpus[workload if name == "generated" else f"{name} {workload}"] = texts[workload]
    return corpus


def _models(p: argparse.ArgumentParser, args) -> list[str]:
    models = list(args.models)
    if args.random_weights:
        from benchmarks import multi_vector
        from benchmarks.random_shapes import ensure_random

        for n in filter(None, args.random_weights.split(",")):
            models.append(str(multi_vector.ensure_random(n) if n in multi_vector.SHAPES else ensure_random(n)))
    if not models:
        p.error("name at least one model, or --random-weights")
    return models


def _run_header(args, threads: int, peers: dict) -> dict:
    return {
        "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "provider": args.provider,
        "threads": threads,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "batch_size_meaning": (
            "every system"
            if args.batch_size
            else "null: each system's own default (sentence-transformers and its ONNX backend 32, "
            "fastembed 256, st_runtime on the CPU the token budgets per batch its export measured for each "
            "variant (cpu_batching; 2048 tokens without them), 1024 texts and 131072 tokens per GPU batch)"
        ),
        "machine": machine(args.provider),
        "peers": peers,
        "models": [],
    }


def _bench_all(args, models: list[str], corpus: dict, threads: int, peers: dict, out: dict) -> None:
    """Every model in turn; the JSON is written after each workload of each, so a run cut short keeps its figures."""
    with tempfile.TemporaryDirectory(prefix="st-bench-") as tmp:
        corpus_file = Path(tmp) / "corpus.json"
        corpus_file.write_text(json.dumps(corpus))

        def save(partial: dict | None = None) -> None:
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                done = out["models"] + ([partial] if partial else [])
                args.json.write_text(json.dumps({**out, "models": done}, indent=2))

        for model in models:
            res = bench_model(
                model,
                args.provider,
                threads,
                args.rounds,
                args.batch_size,
                corpus,
                args.variants.split(",") if args.variants else None,
                peers if peers["enabled"] else None,
                corpus_file,
                Path(tmp),
                cuda_graphs=not args.no_cuda_graphs,
                progress=save,
            )
            print_table(res, args.provider)
            out["models"].append(res)
            save()


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    peer_systems = _peer_systems(p, args)
    from st_runtime.providers import physical_cores

    threads = args.threads or physical_cores()
    corpus = _workloads(p, args)
    models = _models(p, args)
    peers = resolve_peers(args, peer_systems)
    out = _run_header(args, threads, peers)
    _bench_all(args, models, corpus, threads, peers, out)
    failed = {r["model"]: list(r["peers"]["failed"]) for r in out["models"] if (r.get("peers") or {}).get("failed")}
    if args.json:
        print(f"\nwrote {args.json}")
    title = (
        f"{out['machine'].get('gpu') or out['machine']['cpu']}, {threads} threads, {args.provider}, "
        f"median of {args.rounds} rounds"
    )
    if args.png and plot(out["models"], args.png, title):
        print(f"wrote {args.png}")
    if failed:
        print("\npeers FAILED (see above): " + "; ".join(f"{m}: {', '.join(n)}" for m, n in failed.items()))
        return 1
    return 0


def resolve_peers(args, systems: list[str]) -> dict:
    """Which peer python to use, or why there are no peers (printed, and recorded in the JSON)."""

    def off(reason: str) -> dict:
        print(f"peers: not measured: {reason}")
        return {"enabled": False, "reason": reason}

    if args.no_peers:
        return off("--no-peers")
    if not systems:
        return off("--peer-systems is empty")
    if args.provider != "cpu":
        return off(f"--provider {args.provider}: the peers run on the CPU only (their venv has the CPU onnxruntime)")
    python = args.peer_python
    if python is None:
        if not DEFAULT_PEER_PYTHON.is_file():
            return off(
                f"no {DEFAULT_PEER_PYTHON.relative_to(ROOT)}; `bash scripts/setup-peers.sh` makes it "
                "(sentence-transformers' ONNX backend and fastembed), or pass --peer-python"
            )
        python = DEFAULT_PEER_PYTHON
    # not resolved: a venv's bin/python is a link to the base interpreter, which would leave the venv
    return {
        "enabled": True,
        "python": str(python.absolute()),
        "systems": systems,
        "timeout": args.peer_timeout,
        "load_timeout": args.peer_load_timeout,
    }


if __name__ == "__main__":
    sys.exit(main())
