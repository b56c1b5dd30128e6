"""Resident memory of st_runtime over a long stream of texts (one process, chunk after chunk).

    python -m benchmarks.memory exported_models/all-MiniLM-L6-v2 [--texts 200000] [--chunk 10000]
        [--variant NAME] [--json FILE]

Texts come from the throughput benchmark's seeded generator (queries and passages mixed, 1 in 16 a
passage). Prints and records RSS after each chunk; the figure to read is the growth after the first
chunks (allocator arenas warm up first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("memory.py reads VmRSS from /proc/self/status (Linux only)")


def main(argv=None) -> int:
    from benchmarks.common import make_corpus
    from st_runtime import SentenceEncoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--texts", type=int, default=200_000)
    p.add_argument("--chunk", type=int, default=10_000)
    p.add_argument("--variant", default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    enc = SentenceEncoder(args.model, variant=args.variant)
    pool = make_corpus(seed=29, n_queries=15 * 1024, n_passages=1024)
    queries, passages = pool["queries"], pool["passages"]
    texts = [passages[i // 16] if i % 16 == 15 else queries[i % len(queries)] for i in range(16 * 1024)]
    rows, done, start = [], 0, time.perf_counter()
    print(f"{args.model} ({enc.variant}): RSS at load {rss_mb():.1f} MB")
    while done < args.texts:
        n = min(args.chunk, args.texts - done)
        chunk = [texts[(done + i) % len(texts)] + f" #{done + i}" for i in range(n)]
        enc.encode(chunk)
        done += n
        rows.append({"texts": done, "rss_mb": round(rss_mb(), 1), "seconds": round(time.perf_counter() - start, 1)})
        print(f"{done:>8} texts  RSS {rows[-1]['rss_mb']:8.1f} MB  {rows[-1]['seconds']:7.1f} s", flush=True)
    settled = rows[min(2, len(rows) - 1)]["rss_mb"]
    growth = rows[-1]["rss_mb"] - settled
    print(f"growth after the first {min(3, len(rows))} chunks: {growth:+.1f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "variant": enc.variant,
                    "chunk": args.chunk,
                    "rows": rows,
                    "growth_after_warmup_mb": growth,
                    "machine": machine(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
