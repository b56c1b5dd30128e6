"""st-embed's memory and speed at growing input sizes: resident memory must stay flat.

    python -m benchmarks.bulk [--model-dir exported_models/all-MiniLM-L6-v2] [--rows 100000,1000000]
                              [--variant V] [--chunk-rows 8192]

For each size, writes a Parquet file of that many short texts (5-11 words, ids included), runs ``st-embed``
on it as a subprocess, samples the process's resident memory (VmRSS) every 0.2 s, and reports the peak, the
rows/s and the output's size. Writes ``benchmarks/results/bulk-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .throughput import ROOT, WORDS, machine


def write_corpus(path: Path, rows: int, seed: int = 5) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = list(WORDS)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            texts = [" ".join(rng.choices(words, k=rng.randint(5, 11))) for _ in range(n)]
            writer.write_table(pa.table({"id": list(range(start, start + n)), "text": texts}))


def rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(model_dir: Path, rows: int, args, tmp: Path) -> dict:
    src = tmp / f"corpus-{rows}.parquet"
    write_corpus(src, rows)
    out = tmp / f"out-{rows}"
    cmd = [sys.executable, "-m", "st_runtime.bulk.cli", str(model_dir), str(src), "-o", str(out), "--id-column", "id"]
    cmd += ["--chunk-rows", str(args.chunk_rows), "-q"] + (["--variant", args.variant] if args.variant else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    samples = []
    while proc.poll() is None:
        mb = rss_mb(proc.pid)
        if mb is not None:
            samples.append((round(time.perf_counter() - t0, 1), round(mb, 1)))
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"st-embed failed with {proc.returncode}")
    record = json.loads((out / "_run.json").read_text())
    size = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    return {
        "rows": rows,
        "variant": record["variant"],
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": max(mb for _, mb in samples),
        "rss_mb_at_quarters": [samples[int(len(samples) * q)][1] for q in (0.25, 0.5, 0.75)] if samples else [],
        "output_mb": round(size / 2**20, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "exported_models" / "all-MiniLM-L6-v2")
    p.add_argument("--rows", default="100000,1000000")
    p.add_argument("--variant", default=None)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    host = socket.gethostname().split(".")[0]
    out = args.out or ROOT / "benchmarks" / "results" / f"bulk-{host}.json"
    results = {"model_dir": str(args.model_dir), "machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (int(x) for x in args.rows.split(",")):
            r = run(args.model_dir, rows, args, Path(tmp))
            results["runs"].append(r)
            print(json.dumps(r))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
