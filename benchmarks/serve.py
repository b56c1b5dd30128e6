"""Serving benchmark: st-serve against the peers, closed-loop clients, one run, same machine and model.

    python -m benchmarks.serve [--model all-MiniLM-L6-v2] [--threads 2] [--seconds 8] [--systems ...]

Systems, each a server on 127.0.0.1 started and stopped by this script, all asked the same OpenAI-shaped
requests (``{"input": [...], "model": ..., "encoding_format": "float"}``) for the same texts:

* ``st-serve``: this project's server on the exported folder (default variant, ``--threads``);
* ``infinity-torch`` and ``infinity-optimum``: infinity-emb's torch and ONNX (optimum) engines, from the
  venv made by ``scripts/setup-serve-peers.sh`` (skipped, with the reason, where that venv is missing);
* ``plain-fastapi``: ``benchmarks/serve_peers/plain_fastapi.py``, a FastAPI app calling
  ``SentenceTransformer.encode`` once per request, which is what users write by hand.

Cells: concurrency 1, 16 and 64 closed-loop clients (each sends its next request when the last is answered,
over its own keep-alive connection), with requests of 1 and of 32 short queries. Per cell: requests/s,
texts/s, p50 and p99 latency, after a warm-up. Also measured in the same run, without a server: in-process
``encode`` of the same queries (throughput, all at once, and single-query latency), the baselines of the
targets. The load generator is a small asyncio HTTP/1.1 client in this process (cheaper per request than
httpx), so on a 2-core machine the clients share the CPU with the server, for every system alike.

Writes ``benchmarks/results/serve-<host>.json`` and a PNG beside it. Bounded: every cell stops after
``--seconds`` and at most ``--max-requests`` requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from .common import ROOT, machine, make_corpus

PEER_PYTHON = ROOT / ".venv-serve-peers" / "bin" / "python"
HUB_IDS = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}
SYSTEMS = ("st-serve", "infinity-torch", "infinity-optimum", "plain-fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ servers
def server_command(system: str, args, port: int) -> tuple[list[str], str, dict[str, str]] | str:
    """(argv, embeddings path, extra env) to start ``system``, or the reason it cannot run here."""
    hub_id = HUB_IDS.get(args.model, args.model)
    threads = str(args.threads)
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if system == "st-serve":
        folder = ROOT / "exported_models" / args.model
        if not (folder / "manifest.json").exists():
            return f"no export at {folder}: run `st-export {args.model}` first"
        argv = [sys.executable, "-m", "st_runtime.serve.cli", str(folder), "--port", str(port), "--threads", threads]
        argv += ["--served-model-name", args.model, "--no-access-log", "--log-level", "warning"]
        return argv, "/v1/embeddings", env
    if not PEER_PYTHON.exists():
        return f"{PEER_PYTHON} is missing: run `bash scripts/setup-serve-peers.sh`"
    if system == "plain-fastapi":
        argv = [str(PEER_PYTHON), "-m", "benchmarks.serve_peers.plain_fastapi", "--model", hub_id]
        return [*argv, "--port", str(port), "--threads", threads], "/v1/embeddings", env
    if system.startswith("infinity-"):
        infinity = PEER_PYTHON.parent / "infinity_emb"
        if not infinity.exists():
            return "infinity_emb is not installed in the serve peers' venv"
        argv = [str(infinity), "v2", "--engine", system.split("-", 1)[1], "--device", "cpu", "--batch-size", "32"]
        argv += ["--port", str(port), "--host", "127.0.0.1", "--url-prefix", "/v1", "--served-model-name", args.model]
        argv += ["--no-bettertransformer", "--log-level", "warning"]
        env["DO_NOT_TRACK"] = "1"
        if system == "infinity-torch":
            return [*argv, "--model-id", hub_id], "/v1/embeddings", env
        # the optimum engine loads offline only from the ONNX folder scripts/setup-serve-peers.sh writes, as
        # `--model-id .` from inside it, with mean pooling set (its default is CLS for this engine)
        folder = PEER_PYTHON.parent.parent / "models" / f"{args.model}-onnx"
        if not folder.is_dir():
            return f"no ONNX folder {folder}: scripts/setup-serve-peers.sh could not build the optimum engine's model"
        argv += ["--model-id", ".", "--pooling-method", "mean", "--onnx-disable-optimize"]
        return argv, "/v1/embeddings", {**env, "_cwd": str(folder)}
    return f"unknown system {system!r}"


class Running:
    def __init__(self, system: str, argv: list[str], env: dict[str, str], port: int, log: Path):
        self.system, self.port, self.log = system, port, log
        self.t0 = time.perf_counter()
        cwd = env.pop("_cwd", ROOT)
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    def wait_ready(self, path: str, model: str, timeout: float) -> float:
        body = orjson.dumps({"input": ["warm up"], "model": model, "encoding_format": "float"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.system} exited with {self.proc.returncode}: {self.tail()}")
            try:
                status, _ = asyncio.run(_one_request(self.port, path, body))
                if status == 200:
                    return time.perf_counter() - self.t0
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.system} was not ready within {timeout} s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------------ client
class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the status and the body."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            data = await self.reader.read()
        if headers.get("connection") == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one_request(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = Connection(port)
    try:
        return await conn.post(path, body)
    finally:
        conn.close()


async def closed_loop(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float, max_requests: int):
    """``concurrency`` clients, each posting its next body as soon as the last is answered, for ``seconds``
    (after a warm-up of a fifth of that) or ``max_requests`` requests in all. Returns latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(10**9))
    warm_until = time.perf_counter() + seconds / 5
    stop_at = warm_until + seconds
    measured_start = [None]

    async def client(k: int):
        conn = Connection(port)
        try:
            while True:
                i = next(counter)
                now = time.perf_counter()
                if now >= stop_at or len(latencies) >= max_requests:
                    return
                t0 = time.perf_counter()
                status, data = await conn.post(path, bodies[(i * 7919 + k) % len(bodies)])
                t1 = time.perf_counter()
                if status != 200:
                    errors.append(f"{status}: {data[:200]!r}")
                elif t0 >= warm_until:
                    if measured_start[0] is None:
                        measured_start[0] = t0
                    latencies.append(t1 - t0)
        finally:
            conn.close()

    t_begin = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - t_begin)
    wall = time.perf_counter() - (measured_start[0] or t_begin)
    return latencies, errors, wall, client_cpu


def run_cell(port: int, path: str, bodies: list[bytes], concurrency: int, per_request: int, args) -> dict:
    latencies, errors, wall, client_cpu = asyncio.run(
        closed_loop(port, path, bodies, concurrency, args.seconds, args.max_requests)
    )
    if errors and not latencies:
        raise RuntimeError(f"every request failed, e.g. {errors[0]}")
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "texts_per_request": per_request,
        "requests": len(lat),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_s": len(lat) / wall,
        "texts_per_s": len(lat) * per_request / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        # cores the load generator itself used (it shares this machine with the server)
        "client_cpu_cores": round(client_cpu, 3),
    }


def bodies_for(queries: list[str], per_request: int, model: str) -> list[bytes]:
    rng = random.Random(per_request)
    out = []
    for _ in range(max(64, len(queries) // per_request)):
        texts = rng.sample(queries, per_request)
        out.append(orjson.dumps({"input": texts, "model": model, "encoding_format": "float"}))
    return out


# ------------------------------------------------------------------------------------------------ in-process
def in_process(args, queries: list[str]) -> dict:
    """st_runtime's in-process encode of the same queries: all at once, and one at a time."""
    code = f"""
import json, statistics, sys, time
from st_runtime import SentenceEncoder
enc = SentenceEncoder({str(ROOT / "exported_models" / args.model)!r}, threads={args.threads})
q = json.loads(sys.stdin.read())
enc.encode(q[:256])
rates = []
for _ in range(3):
    t = time.perf_counter(); enc.encode(q); rates.append(len(q) / (time.perf_counter() - t))
lat = []
for text in q[:400]:
    t = time.perf_counter(); enc.encode([text]); lat.append(time.perf_counter() - t)
print(json.dumps({{"variant": enc.variant, "texts_per_s": statistics.median(rates), "rates": rates,
                  "single_query_p50_ms": 1000 * statistics.median(lat)}}))
"""
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(queries), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report
def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written (pip install matplotlib)")
        return False
    systems = [s for s, v in result["systems"].items() if "cells" in v]
    cells = [(c["concurrency"], c["texts_per_request"]) for c in result["systems"][systems[0]]["cells"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(systems)
    for j, s in enumerate(systems):
        by = {(c["concurrency"], c["texts_per_request"]): c for c in result["systems"][s]["cells"]}
        xs = [i + j * width for i in range(len(cells))]
        axes[0].bar(xs, [by[k]["texts_per_s"] if k in by else 0 for k in cells], width, label=s)
        axes[1].bar(xs, [by[k]["p50_ms"] if k in by else 0 for k in cells], width, label=s)
    labels = [f"c={c}\n{n}/req" for c, n in cells]
    for ax, ylabel in zip(axes, ("texts/s", "p50 latency (ms)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))], labels)
        ax.set_ylabel(ylabel)
    axes[0].axhline(result["in_process"]["texts_per_s"], color="black", lw=0.8, ls="--", label="in-process encode")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']} on {result['machine']['cpu']} ({result['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def print_table(result: dict) -> None:
    ip = result["in_process"]
    print(
        f"\nin-process encode ({ip['variant']}): {ip['texts_per_s']:.0f} texts/s all at once; "
        f"single query p50 {ip['single_query_p50_ms']:.2f} ms"
    )
    print(f"{'system':18} {'conc':>4} {'texts/req':>9} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for s, v in result["systems"].items():
        if "cells" not in v:
            print(f"{s:18} skipped: {v['skipped']}")
            continue
        for c in v["cells"]:
            print(
                f"{s:18} {c['concurrency']:>4} {c['texts_per_request']:>9} {c['requests_per_s']:>8.0f} "
                f"{c['texts_per_s']:>8.0f} {c['p50_ms']:>8.2f} {c['p99_ms']:>8.2f}"
            )
    for k, v in result.get("targets", {}).items():
        print(f"target {k}: {v}")


def targets(result: dict) -> dict:
    st = {(c["concurrency"], c["texts_per_request"]): c for c in result["systems"].get("st-serve", {}).get("cells", [])}
    ip = result["in_process"]
    out = {}
    if (64, 1) in st:
        out["c64_1q_vs_in_process"] = round(st[(64, 1)]["texts_per_s"] / ip["texts_per_s"], 3)
        plain = {
            (c["concurrency"], c["texts_per_request"]): c
            for c in result["systems"].get("plain-fastapi", {}).get("cells", [])
        }
        if (64, 1) in plain:
            out["c64_1q_vs_plain_fastapi"] = round(st[(64, 1)]["texts_per_s"] / plain[(64, 1)]["texts_per_s"], 2)
    if (1, 1) in st:
        out["c1_p50_minus_in_process_single_ms"] = round(st[(1, 1)]["p50_ms"] - ip["single_query_p50_ms"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="all-MiniLM-L6-v2", help="exported_models/NAME for st-serve; its hub id for peers"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (plus a fifth to warm up)")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--per-request", default="1,32")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    queries = make_corpus(n_queries=4096)["queries"]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    sizes = [int(x) for x in args.per_request.split(",")]
    host = socket.gethostname().split(".")[0]
    out = args.out or ROOT / "benchmarks" / "results" / f"serve-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "threads": args.threads,
        "seconds_per_cell": args.seconds,
        "machine": machine(),
        "corpus": "benchmarks.throughput.make_corpus queries (5-11 words)",
        "in_process": in_process(args, queries),
        "systems": {},
    }
    print(json.dumps(result["in_process"]))
    for system in args.systems.split(","):
        port = free_port()
        cmd = server_command(system, args, port)
        if isinstance(cmd, str):
            result["systems"][system] = {"skipped": cmd}
            print(f"{system}: skipped ({cmd})")
            continue
        argv_, path, env = cmd
        server = Running(system, argv_, env, port, out.with_name(f"serve-{host}-{system}.log"))
        try:
            startup = server.wait_ready(path, args.model, timeout=300)
            entry = {"command": " ".join(argv_), "startup_s": startup, "cells": []}
            for n in sizes:
                bodies = bodies_for(queries, n, args.model)
                for c in concurrencies:
                    cell = run_cell(port, path, bodies, c, n, args)
                    entry["cells"].append(cell)
                    print(
                        f"{system:18} c={c:<3} {n:>2}/req {cell['texts_per_s']:8.0f} texts/s "
                        f"p50 {cell['p50_ms']:.2f} ms"
                    )
            result["systems"][system] = entry
        except Exception as exc:  # a peer that fails is reported, the others still run
            result["systems"][system] = {"skipped": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{system}: failed: {exc}")
        finally:
            server.stop()
    result["targets"] = targets(result)
    print_table(result)
    out.write_text(json.dumps(result, indent=1))
    png = out.with_suffix(".png")
    if plot(result, png):
        print(f"wrote {out} and {png}")
    else:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(main())
