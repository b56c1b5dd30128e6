"""Attention kernels on the CPU for long inputs: the plain fp32 graph (onnxruntime fuses it at load), the exported
`opt` graph (onnxruntime.transformers' fused Attention), and the same optimizer's MultiHeadAttention fusion
(`use_multi_head_attention`, the op with onnxruntime's CPU flash-attention path), timed alternating on the same
texts, with each graph's cosine to the fp32 graph.

    python -m benchmarks.cpu_attention exported_models/all-MiniLM-L6-v2 [--rounds 5] [--json FILE]

onnxruntime's packed (padding-free) attention ops (PackedAttention, PackedMultiHeadAttention) have CUDA kernels
only, so they are not candidates here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def build_mha(folder: Path, dst_folder: Path, heads: int, hidden: int) -> Path:
    """A copy of the export whose opt graph is the MultiHeadAttention fusion of the fp32 graph."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from exporters.variants import fused_operator_counts

    manifest = json.loads((folder / "manifest.json").read_text())
    shutil.copytree(folder, dst_folder)
    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    src = folder / manifest["towers"]["text"]["variants"]["fp32"]["file"]
    model = onnx.load(str(src))
    opt = optimize_model(
        str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0, optimization_options=options
    )
    out = dst_folder / "model_opt.onnx"
    opt.save_model_to_file(str(out))
    counts = fused_operator_counts(opt.model)
    del model
    entry = manifest["towers"]["text"]["variants"].get("opt")
    if entry is None:
        raise SystemExit("the export has no opt variant to stand in for")
    from st_runtime.manifest import file_record

    manifest["files"][out.name] = file_record(out)
    entry["file"] = out.name
    (dst_folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"MultiHeadAttention graph: {counts}")
    return dst_folder


def main(argv=None) -> int:
    from benchmarks.common import docs_corpus, machine
    from exporters.validate import cosines
    from st_runtime import SentenceEncoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passages", type=int, default=64)
    p.add_argument("--heads", type=int, default=12, help="attention heads (all-MiniLM-L6-v2: 12)")
    p.add_argument("--hidden", type=int, default=384, help="hidden size (all-MiniLM-L6-v2: 384)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    corpus = docs_corpus(n_queries=512, n_passages=args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        mha_folder = build_mha(args.folder, Path(tmp) / "mha", args.heads, args.hidden)
        systems = {
            "fp32 (onnxruntime's own fusions at load)": SentenceEncoder(args.folder, variant="fp32"),
            "opt (fused Attention)": SentenceEncoder(args.folder, variant="opt"),
            "MultiHeadAttention": SentenceEncoder(mha_folder, variant="opt"),
        }
        results: dict = {}
        for workload, texts in corpus.items():
            ref = systems["fp32 (onnxruntime's own fusions at load)"].encode(texts)
            times: dict[str, list[float]] = {n: [] for n in systems}
            cos = {n: float(cosines(ref, e.encode(texts)).min()) for n, e in systems.items()}
            names = list(systems)
            for r in range(args.rounds):
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    t = time.perf_counter()
                    systems[n].encode(texts)
                    times[n].append(time.perf_counter() - t)
            base = statistics.median(times[names[0]])
            results[workload] = {
                n: {
                    "items_per_s": len(texts) / statistics.median(ts),
                    "ratio_to_fp32": base / statistics.median(ts),
                    "min_cosine_to_fp32": cos[n],
                    "all_s": ts,
                }
                for n, ts in times.items()
            }
            for n, r in results[workload].items():
                rate, ratio, cos_min = r["items_per_s"], r["ratio_to_fp32"], r["min_cosine_to_fp32"]
                print(f"{workload:9} {n:42} {rate:8.1f}/s {ratio:5.2f}x cos {cos_min:.7f}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "model": str(args.folder), "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
