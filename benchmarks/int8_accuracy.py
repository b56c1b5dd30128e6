"""int8 on real text: accuracy against sentence-transformers fp32, batch-company independence and speed, for each
variant of an export (and for a second export, such as one whose int8 quantizes activations per tensor), in one
run on the same texts and threads.

    python -m benchmarks.int8_accuracy EXPORT_DIR [--other LABEL=EXPORT_DIR ...] [--threads 2] [--corpora]
        [--out FILE.json]

Texts (kept apart from st-export's calibration and validation battery, exporters/battery.py): the Python standard
library's docstrings. Queries are the first lines of 4-16 words, passages the docstrings of 40-200 words, and the
(query, passage) pairs are a docstring's first line with the rest of it. Measures:

* min and mean cosine against sentence-transformers fp32 (the source model the manifest names), queries and
  passages separately;
* top-10 retrieval overlap: for each pair's query, the 10 passages nearest by sentence-transformers fp32 against
  those by the variant (mean over queries of |intersection| / 10);
* batch company: each query alone against the same query in one call with 64 passages (max |difference|);
* texts/s of queries and of passages (median of ``--rounds``), sentence-transformers fp32 in the same run;
* with ``--corpora``: min and mean cosine on benchmarks/throughput.py's corpora (generated and docs, 2048 queries and
  256 passages each), and each int8's calibration record from its manifest (what st-export's calibration reached on
  its own texts, and its target), with ``worst_error_vs_calibration_mean``: the worst text's 1 - cosine over the
  calibration's mean 1 - cosine (how far the tail of thousands of texts lies beyond what calibration sees).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine


def stdlib_texts(max_pairs: int = 700) -> dict[str, list]:
    """Queries, passages and (query, rest) pairs from the docstrings of the standard library's public functions
    and classes (deterministic: modules and names sorted)."""
    import importlib
    import pkgutil
    import sys
    import warnings

    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    queries: list[str] = []
    passages: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for mod_name in names:
        if mod_name.startswith("_") or mod_name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(mod_name)
        except Exception:  # a module this platform cannot import is left out of the corpus
            continue
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            doc = re.sub(r"\s+", " ", doc).strip()
            if not doc or doc in seen:
                continue
            seen.add(doc)
            first, _, rest = doc.partition(". ")
            n_first, n_doc = len(first.split()), len(doc.split())
            if 4 <= n_first <= 16:
                queries.append(first)
            if 40 <= n_doc <= 200:
                passages.append(doc)
            if 4 <= n_first <= 16 and 20 <= len(rest.split()) <= 200 and len(pairs) < max_pairs:
                pairs.append((first, rest))
    return {"queries": queries, "passages": passages, "pairs": pairs}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def top10_overlap(ref_q, ref_p, got_q, got_p) -> float:
    want = np.argsort(-(_unit(ref_q) @ _unit(ref_p).T), axis=1)[:, :10]
    have = np.argsort(-(_unit(got_q) @ _unit(got_p).T), axis=1)[:, :10]
    return float(np.mean([len(set(w) & set(h)) / 10 for w, h in zip(want, have)]))


def _speed(fn, texts, rounds: int) -> float:
    fn(texts[:8])
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(texts)
        times.append(time.perf_counter() - t0)
    return len(texts) / statistics.median(times)


def measure(enc, texts: dict, ref: dict, rounds: int) -> dict:
    q, p = texts["queries"][:256], texts["passages"][:128]
    pq = [a for a, _ in texts["pairs"]]
    pp = [b for _, b in texts["pairs"]]
    got = {"q": enc.encode(q), "p": enc.encode(p), "pq": enc.encode(pq), "pp": enc.encode(pp)}
    alone = np.stack([enc.encode([t])[0] for t in q[:32]])
    company = enc.encode(q[:32] + p[:64])[:32]
    cq, cp = _cos(ref["q"], got["q"]), _cos(ref["p"], got["p"])
    return {
        "queries": {"n": len(q), "min_cosine": float(cq.min()), "mean_cosine": float(cq.mean())},
        "passages": {"n": len(p), "min_cosine": float(cp.min()), "mean_cosine": float(cp.mean())},
        "pairs": {
            "n": len(pq),
            "min_cosine_queries": float(_cos(ref["pq"], got["pq"]).min()),
            "min_cosine_passages": float(_cos(ref["pp"], got["pp"]).min()),
            "top10_overlap": top10_overlap(ref["pq"], ref["pp"], got["pq"], got["pp"]),
        },
        "batch_company_max_abs_diff": float(np.abs(alone.astype(np.float64) - company).max()),
        "queries_per_s": _speed(enc.encode, texts["queries"][:512], rounds),
        "passages_per_s": _speed(enc.encode, texts["passages"][:96], rounds),
    }


def corpora_texts() -> dict[str, list[str]]:
    from benchmarks.common import docs_corpus, make_corpus

    gen, docs = make_corpus(), docs_corpus()
    return {
        "generated queries": gen["queries"],
        "generated passages": gen["passages"],
        "docs queries": docs["queries"],
        "docs passages": docs["passages"],
    }


def on_corpora(enc, corpora: dict, ref: dict, build: dict | None) -> dict:
    """Min and mean cosine per workload against ``ref``; with the int8 ``build`` record, the calibration's figures
    and the worst error over the calibration's mean error."""
    out: dict = {}
    for name, texts in corpora.items():
        cos = _cos(ref[name], enc.encode(texts))
        out[name] = {"n": len(texts), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    if build and "calibration" in build:
        cal = build["calibration"]
        worst = 1 - min(v["min_cosine"] for v in out.values())
        out["calibration"] = {**cal, "fp32_matmuls": len(build["fp32_matmuls"]), "int8_matmuls": build["int8_matmuls"]}
        if "mean_cosine_vs_fp32" in cal:
            out["worst_error_vs_calibration_mean"] = worst / max(1 - cal["mean_cosine_vs_fp32"], 1e-12)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", type=Path)
    p.add_argument("--other", action="append", default=[], help="LABEL=EXPORT_DIR: more exports' int8 to compare")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", help="comma-separated variants of EXPORT_DIR to measure (default: all)")
    p.add_argument("--corpora", action="store_true", help="also measure on benchmarks/throughput.py's corpora")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from sentence_transformers import SentenceTransformer

    from st_runtime import SentenceEncoder

    torch.set_num_threads(args.threads)
    manifest = json.loads((args.export / "manifest.json").read_text())
    st = SentenceTransformer(manifest["source"]["model"], device="cpu")
    texts = stdlib_texts()
    sets = {"q": texts["queries"][:256], "p": texts["passages"][:128]}
    sets |= {"pq": [a for a, _ in texts["pairs"]], "pp": [b for _, b in texts["pairs"]]}
    ref = {k: st.encode(v, batch_size=32) for k, v in sets.items()}
    corpora = corpora_texts() if args.corpora else {}
    corpora_ref = {k: st.encode(v, batch_size=32) for k, v in corpora.items()}
    results: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "texts": {k: len(v) for k, v in texts.items()},
        "sentence-transformers fp32": {
            "queries_per_s": _speed(lambda t: st.encode(t, batch_size=32), texts["queries"][:512], args.rounds),
            "passages_per_s": _speed(lambda t: st.encode(t, batch_size=32), texts["passages"][:96], args.rounds),
        },
    }
    wanted = args.variants.split(",") if args.variants else list(manifest["towers"]["text"]["variants"])
    systems = {v: (args.export, v) for v in wanted}
    for spec in args.other:
        label, _, folder = spec.partition("=")
        systems[label] = (Path(folder), "int8")
    for label, (folder, variant) in systems.items():
        enc = SentenceEncoder(folder, variant=variant, threads=args.threads)
        results[label] = measure(enc, texts, ref, args.rounds)
        if corpora:
            variants = json.loads((folder / "manifest.json").read_text())["towers"]["text"]["variants"]
            build = variants[variant].get("build")  # only int8 builds carry a calibration record
            results[label]["corpora"] = on_corpora(enc, corpora, corpora_ref, build)
        print(label, json.dumps(results[label]), flush=True)
    st_speed = results["sentence-transformers fp32"]
    for label in systems:
        for k in ("queries_per_s", "passages_per_s"):
            results[label][k.replace("_per_s", "_vs_st")] = results[label][k] / st_speed[k]
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
