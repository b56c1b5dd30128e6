"""st-embed's memory at growing input sizes, and its throughput against in-process encode, Ray and
sentence-transformers' multi-process encoding.

    python -m benchmarks.bulk memory [--rows 100000,1000000] [--variant V]
    python -m benchmarks.bulk throughput [--passages 50000] [--hub-id sentence-transformers/all-MiniLM-L6-v2]

memory: for each size, writes a Parquet file of that many short texts (5-11 words, ids included), runs
``st-embed`` on it as a subprocess, samples its resident memory (VmRSS) every 0.2 s, and reports the peak.

throughput: one corpus of generated passages (7-12 sentences), embedded by, in this order and one at a time:
in-process ``SentenceEncoder.encode``; ``st-embed`` locally; ``st-embed --ray`` with 2 actors x 1 CPU and with
1 actor x 2 CPUs; sentence-transformers' multi-process pool (one process per core, one torch thread each). Rows/s
count the embedding work (st-embed's own record, which leaves out loading the model and starting Ray, which are
also reported). Writes ``benchmarks/results/bulk-<host>.json`` (one key per mode).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, WORDS, machine


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
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
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


_IN_PROCESS = """
import json, sys, time
import pyarrow.parquet as pq
from st_runtime import SentenceEncoder
texts = pq.read_table(sys.argv[2], columns=["text"]).column(0).to_pylist()
enc = SentenceEncoder(sys.argv[1], variant=sys.argv[3] or None)
enc.encode(texts[:64])
t = time.perf_counter(); enc.encode(texts); s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rows_per_s": len(texts) / s, "variant": enc.variant}))
"""

_ST_POOL = """
import json, os, sys, time
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer
texts = pq.read_table(sys.argv[2], columns=["text"]).column(0).to_pylist()
torch.set_num_threads(1)
model = SentenceTransformer(sys.argv[1], device="cpu")
cores = os.cpu_count() or 2
pool = model.start_multi_process_pool(["cpu"] * cores)
model.encode(texts[:256], pool=pool)
t = time.perf_counter(); model.encode(texts, pool=pool, batch_size=32); s = time.perf_counter() - t
model.stop_multi_process_pool(pool)
print(json.dumps({"seconds": s, "rows_per_s": len(texts) / s, "processes": cores}))
"""


def _json_tail(cmd: list[str], env: dict | None = None) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{cmd[:4]} failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def throughput(args, tmp: Path) -> dict:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .common import make_corpus

    passages = make_corpus(n_queries=0, n_passages=args.passages)["passages"]
    src = tmp / "passages.parquet"
    pq.write_table(pa.table({"id": list(range(len(passages))), "text": passages}), src)
    variant = args.variant or ""
    out: dict = {"passages": len(passages), "systems": {}}
    print(f"{len(passages)} passages")
    res = _json_tail([sys.executable, "-c", _IN_PROCESS, str(args.model_dir), str(src), variant])
    out["systems"]["in-process encode"] = res
    print("in-process encode", res)
    runs = {
        "st-embed": [],
        "st-embed --ray (2 actors x 1 CPU)": ["--ray", "--num-workers", "2", "--cpus-per-worker", "1"],
        "st-embed --ray (1 actor x 2 CPUs)": ["--ray", "--num-workers", "1", "--cpus-per-worker", "2"],
    }
    for k, (name, extra) in enumerate(runs.items()):
        dst = tmp / f"embedded-{k}"
        cmd = [sys.executable, "-m", "st_runtime.bulk.cli", str(args.model_dir), str(src), "-o", str(dst), "-q"]
        cmd += extra + (["--variant", variant] if variant else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        record = json.loads((dst / "_run.json").read_text())
        res = {
            "seconds": record["seconds_this_run"],
            "rows_per_s": len(passages) / record["seconds_this_run"],
            "command_seconds": round(wall, 1),
            "threads": record.get("threads"),
        }
        out["systems"][name] = res
        print(name, res)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        res = _json_tail([sys.executable, "-c", _ST_POOL, args.hub_id, str(src)], env)
        out["systems"]["sentence-transformers multi-process pool"] = res
        print("sentence-transformers pool", res)
    except RuntimeError as exc:
        out["systems"]["sentence-transformers multi-process pool"] = {"skipped": str(exc)[:500]}
    base = out["systems"]["in-process encode"]["rows_per_s"]
    pool = out["systems"]["sentence-transformers multi-process pool"].get("rows_per_s")
    for res in out["systems"].values():
        if "rows_per_s" in res:
            res["vs_in_process"] = round(res["rows_per_s"] / base, 3)
            if pool:
                res["vs_st_pool"] = round(res["rows_per_s"] / pool, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["memory", "throughput"])
    p.add_argument("--model-dir", type=Path, default=ROOT / "exported_models" / "all-MiniLM-L6-v2")
    p.add_argument("--hub-id", default="sentence-transformers/all-MiniLM-L6-v2", help="the same model for ST")
    p.add_argument("--rows", default="100000,1000000", help="memory: input sizes")
    p.add_argument("--passages", type=int, default=50_000, help="throughput: corpus size")
    p.add_argument("--variant", default=None)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    host = socket.gethostname().split(".")[0]
    out = args.out or ROOT / "benchmarks" / "results" / f"bulk-{host}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"model_dir": str(args.model_dir), "machine": machine()})
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "memory":
            results["memory"] = {"variant": args.variant, "runs": []}
            for rows in (int(x) for x in args.rows.split(",")):
                r = run(args.model_dir, rows, args, Path(tmp))
                results["memory"]["runs"].append(r)
                print(json.dumps(r))
        else:
            results["throughput"] = throughput(args, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
