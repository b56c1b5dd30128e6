"""Reranking throughput: st_runtime.CrossEncoder against sentence_transformers.CrossEncoder.predict, in one run, on
the same (query, passage) pairs and threads. benchmarks/throughput.py runs this for a cross-encoder export:

    python -m benchmarks.throughput exported_models/minilm-l6-reranker [--rounds 5] [--json FILE]

Two workloads from the seeded generated corpus: one query with 100 passages (a search request), and 64 queries
with 100 passages each (a batch of them). Scores are compared with sentence-transformers' (largest difference after
the model's activation, and whether each query's top 10 is the same up to ties at 0.01).

No cross-encoder weights can be downloaded on the project's machine, so ``make_minilm_reranker`` builds one at
cross-encoder/ms-marco-MiniLM-L6-v2's shape (BERT, 6 layers, 384 hidden, 12 heads): the encoder weights of the
bundled all-MiniLM-L6-v2 and a seeded random classification head. Speed does not depend on the head's weights;
with a real ms-marco model the same command measures it.

    python -m benchmarks.rerank make-minilm-reranker [--output exported_models/minilm-l6-reranker]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REFERENCE, ROOT, export_source


def workloads(corpus: dict[str, list[str]], queries: int = 64, passages: int = 100) -> dict[str, list[tuple]]:
    qs, ps = corpus["queries"], corpus["passages"][:passages]
    return {
        f"rerank 1x{len(ps)}": [(qs[0], p) for p in ps],
        f"rerank {queries}x{len(ps)}": [(q, p) for q in qs[:queries] for p in ps],
    }


def _agreement(ref: np.ndarray, got: np.ndarray, per_query: int) -> dict:
    diff = np.abs(ref - got)
    same = True
    for start in range(0, len(ref), per_query):
        r, g = ref[start : start + per_query], got[start : start + per_query]
        want, have = np.argsort(-r, kind="stable")[:10], np.argsort(-g, kind="stable")[:10]
        same &= all(a == b or abs(r[a] - r[b]) <= 0.01 for a, b in zip(want, have))
    return {"max_score_diff": float(diff.max()), "mean_score_diff": float(diff.mean()), "top10_identical": bool(same)}


def bench_reranker(
    folder: Path, manifest: dict, source: str, threads: int, rounds: int, corpus: dict, variants: list[str] | None
) -> dict:
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from st_runtime import CrossEncoder

    torch.set_num_threads(threads)
    ref_model = STCrossEncoder(source, device="cpu")
    systems = {REFERENCE: lambda pairs: ref_model.predict(pairs, batch_size=32)}
    available = manifest["towers"]["text"]["variants"]
    default = CrossEncoder(folder).variant
    for v in variants or sorted(available, key=lambda k: -available[k]["rank"]):
        if v in available:
            enc = CrossEncoder(folder, threads=threads, variant=v)
            systems[f"st_runtime {v}" + (" (default)" if v == default else "")] = (lambda e: e.predict)(enc)
    results = {}
    for workload, pairs in workloads(corpus).items():
        per_query = len({p for _q, p in pairs})
        n_rounds = rounds if len(pairs) <= 1000 else max(1, rounds // 2)  # the 6,400-pair workload: fewer rounds
        outputs, times = {}, {name: [] for name in systems}
        for fn in systems.values():  # warm-up on a slice
            fn(pairs[:64])
        for r in range(n_rounds):
            for name in list(systems)[r % len(systems) :] + list(systems)[: r % len(systems)]:
                t = time.perf_counter()
                out = systems[name](pairs)
                times[name].append(time.perf_counter() - t)
                outputs.setdefault(name, np.asarray(out, dtype=np.float64).reshape(-1))
        base = statistics.median(times[REFERENCE])
        results[workload] = {
            name: {
                "items_per_s": len(pairs) / statistics.median(ts),
                "median_s": statistics.median(ts),
                "all_s": ts,
                "ratio_to_sentence_transformers": base / statistics.median(ts),
                **_agreement(outputs[REFERENCE], outputs[name], per_query),
            }
            for name, ts in times.items()
        }
        print(f"  {workload}: " + ", ".join(f"{n} {r['items_per_s']:.0f}/s" for n, r in results[workload].items()))
    return {
        "model": folder.name,
        "task": "cross-encoder",
        "source": source,
        "published_queries_per_s": {"gpu": None, "cpu": None},
        "workloads": {k: len(v) for k, v in workloads(corpus).items()},
        "results": results,
    }


def make_minilm_reranker(output: Path) -> Path:
    """A cross-encoder at ms-marco-MiniLM-L6-v2's shape (see the module docstring), exported to ``output``."""
    import tempfile

    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from exporters import export_model

    src = export_source("all-MiniLM-L6-v2")
    ce_dir = output.parent / f"{output.name}-src"  # kept: the benchmark loads sentence-transformers from it
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = tr.AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
        model.save_pretrained(tmp)
        tr.AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
        STCrossEncoder(tmp, device="cpu", max_length=512).save(str(ce_dir))
    return export_model(str(ce_dir), output=output)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-minilm-reranker", help="build and export the MiniLM-L6 reranker-shaped model")
    mk.add_argument("--output", type=Path, default=ROOT / "exported_models" / "minilm-l6-reranker")
    args = p.parse_args(argv)
    print(f"wrote {make_minilm_reranker(args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
