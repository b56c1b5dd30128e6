"""Serving benchmark: st-serve against the peers, closed-loop clients, one run, same machine and model.

    python -m benchmarks.serve [--model all-MiniLM-L6-v2] [--threads 2] [--seconds 8] [--systems ...]
    python -m benchmarks.serve --systems st-serve --base-checkout ../base --concurrency 1,64   (an A/B run)

Systems, each a server on 127.0.0.1 started and stopped by this script, all asked the same OpenAI-shaped
requests (``{"input": [...], "model": ..., "encoding_format": "float"}``) for the same texts:

* ``st-serve``: this project's server on the exported folder (default variant, ``--threads``);
* ``st-serve (base)``, with ``--base-checkout PATH``: the same server from another checkout of this repository
  (``git worktree add PATH COMMIT``), run with ``PYTHONPATH=PATH``: an A/B of the server in one run. Its cells
  are interleaved with st-serve's (both servers are up; each cell runs on one, then on the other, the order
  alternating), so that a slow minute of a shared machine falls on both;
* ``infinity-torch`` and ``infinity-optimum``: infinity-emb's torch and ONNX (optimum) engines, from the
  venv made by ``scripts/setup-serve-peers.sh`` (skipped, with the reason, where that venv is missing);
* ``plain-fastapi``: ``benchmarks/serve_peers/plain_fastapi.py``, a FastAPI app calling
  ``SentenceTransformer.encode`` once per request, which is what users write by hand.

Cells: concurrency 1, 16 and 64 closed-loop clients (each sends its next request when the last is answered,
over its own keep-alive connection), with requests of 1 and of 32 short queries. Per cell: requests/s,
texts/s, p50 and p99 latency, after a warm-up; the server's own CPU (utime + stime of its process, from
``/proc/PID/stat``, over the measured seconds) per request, with its event-loop thread's share and the
context switches (thread wake-ups) per request; and the load generator's own CPU. Also measured in the same
run, without a server: in-process ``encode`` of the same queries (throughput and CPU per query, all at once;
latency and CPU of single-query calls), the baselines of the targets: each cell gives its throughput and its
CPU per text as ratios to them. For st-serve's cells of many clients, also in-process ``encode`` of random draws
of as many queries as the server's batches held in that cell (read from its /metrics): the server's own cost apart
from the shape of its batches (random lengths from many clients pad more, and a batch of 32 short queries runs at
a lower rate than 2,048 sorted ones). The load generator is a small asyncio HTTP/1.1 client in this process
(cheaper per request than httpx), so on a 2-core machine the clients share the CPU with the server, for
every system alike.

Writes ``benchmarks/results/serve-<host>.json`` and a PNG beside it. Bounded: every cell stops after
``--seconds`` and at most ``--max-requests`` requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
BASE = "st-serve (base)"  # st-serve from --base-checkout
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def model_folder(args) -> Path:
    return args.model_dir or ROOT / "exported_models" / args.model


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
    if system in ("st-serve", BASE):
        folder = model_folder(args)
        if not (folder / "manifest.json").exists():
            return f"no export at {folder}: run `st-export {args.model}` first"
        checkout = ROOT if system == "st-serve" else args.base_checkout
        if checkout is None or not (Path(checkout) / "st_runtime" / "serve" / "cli.py").exists():
            return f"no st_runtime checkout at {checkout} (--base-checkout)"
        argv = [sys.executable, "-m", "st_runtime.serve.cli", str(folder), "--port", str(port), "--threads", threads]
        argv += ["--served-model-name", args.model, "--no-access-log", "--log-level", "warning"]
        return argv, "/v1/embeddings", {**env, "PYTHONPATH": str(checkout), "_cwd": str(checkout)}
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


# ------------------------------------------------------------------------------------------------ CPU
def _stat_fields(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def proc_cpu(pid: int) -> dict:
    """CPU seconds (utime + stime) of process ``pid`` (exited threads included), of its main thread (the
    event loop of an asyncio server) and of each live thread; and the voluntary context switches of its live threads."""
    f = _stat_fields(f"/proc/{pid}/stat")
    out = {"cpu_s": (int(f[11]) + int(f[12])) / TICK, "threads": {}, "switches": 0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            tf = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                status = fh.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out["threads"][int(tid)] = (int(tf[11]) + int(tf[12])) / TICK
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):  # the thread blocked: a wake-up later
                out["switches"] += int(line.split()[1])
    out["main_s"] = out["threads"].get(pid, 0.0)
    return out


def cpu_delta(pid: int | None, a: dict, b: dict) -> dict:
    """The server's CPU between two ``snapshot``s: seconds, of the event loop, threads that ran, switches."""
    if pid is None:
        return {}
    sa, sb = a["server"], b["server"]
    ran = [t for t, v in sb["threads"].items() if v - sa["threads"].get(t, 0.0) > 0]
    return {
        "cpu_s": sb["cpu_s"] - sa["cpu_s"],
        "main_s": sb["main_s"] - sa["main_s"],
        "threads_ran": len(ran),
        "switches": sb["switches"] - sa["switches"],
    }


def snapshot(pid: int | None, done: int) -> dict:
    return {
        "t": time.perf_counter(),
        "client_s": time.process_time(),
        "done": done,
        "server": proc_cpu(pid) if pid is not None else None,
    }


def batch_counts(port: int) -> tuple[float, float] | None:
    """(items, batches) st-serve has run so far, from its /metrics (st_batch_size's sum and count, all models);
    None where the server has no such metrics (the peers)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    sums = {"st_batch_size_sum": 0.0, "st_batch_size_count": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums["st_batch_size_sum"], sums["st_batch_size_count"]


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


async def closed_loop(
    port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float, max_requests: int, pid=None
):
    """``concurrency`` clients, each posting its next body as soon as the last is answered, for ``seconds``
    (after a warm-up of a fifth of that) or ``max_requests`` requests in all. Returns latencies, errors, the
    measured wall time, and two snapshots (``snapshot``: time, CPU of this process and of server ``pid``,
    responses so far) at the start and the end of the measured seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    done = [0]
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
                done[0] += 1
                if status != 200:
                    errors.append(f"{status}: {data[:200]!r}")
                elif t0 >= warm_until:
                    if measured_start[0] is None:
                        measured_start[0] = t0
                    latencies.append(t1 - t0)
        finally:
            conn.close()

    t_begin = time.perf_counter()
    clients = asyncio.ensure_future(asyncio.gather(*(client(k) for k in range(concurrency))))
    await asyncio.wait([clients], timeout=max(0.0, warm_until - time.perf_counter()))
    first = snapshot(pid, done[0])
    await asyncio.wait([clients], timeout=max(0.0, stop_at - time.perf_counter()))
    last = snapshot(pid, done[0])  # steady state: every client still busy (or all finished early)
    await clients
    wall = time.perf_counter() - (measured_start[0] or t_begin)
    return latencies, errors, wall, (first, last)


def run_cell(port: int, path: str, bodies: list[bytes], concurrency: int, per_request: int, args, pid=None) -> dict:
    latencies, errors, wall, (first, last) = asyncio.run(
        closed_loop(port, path, bodies, concurrency, args.seconds, args.max_requests, pid)
    )
    if errors and not latencies:
        raise RuntimeError(f"every request failed, e.g. {errors[0]}")
    lat = sorted(latencies)
    span = last["t"] - first["t"]
    answered = max(1, last["done"] - first["done"])
    server = cpu_delta(pid, first, last)
    cpu = {}
    if server and span > 0:
        cpu = {
            # the server's own CPU over the measured seconds (all its threads), per request answered meanwhile
            "server_cpu_cores": round(server["cpu_s"] / span, 3),
            "server_cpu_ms_per_request": round(1000 * server["cpu_s"] / answered, 3),
            "server_cpu_ms_per_text": round(1000 * server["cpu_s"] / (answered * per_request), 3),
            "server_event_loop_cpu_ms_per_request": round(1000 * server["main_s"] / answered, 3),
            "server_threads_ran": server["threads_ran"],
            "server_context_switches_per_request": round(server["switches"] / answered, 2),
        }
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
        **cpu,
        # cores the load generator itself used over the measured seconds (it shares this machine with the server)
        "client_cpu_cores": round((last["client_s"] - first["client_s"]) / span, 3) if span > 0 else None,
    }


def bodies_for(queries: list[str], per_request: int, model: str) -> list[bytes]:
    rng = random.Random(per_request)
    out = []
    for _ in range(max(64, len(queries) // per_request)):
        texts = rng.sample(queries, per_request)
        out.append(orjson.dumps({"input": texts, "model": model, "encoding_format": "float"}))
    return out


# ------------------------------------------------------------------------------------------------ in-process
_IN_PROCESS = """
import json, random, statistics, sys, time
from st_runtime import SentenceEncoder
enc = SentenceEncoder(sys.argv[1], threads=int(sys.argv[2]))
with open(sys.argv[3]) as f:
    q = json.load(f)[: int(sys.argv[4])]
enc.encode(q[:256])
print(json.dumps({"variant": enc.variant}), flush=True)
for line in sys.stdin:
    if line.strip() == "batch":  # every query in one call
        t, c = time.perf_counter(), time.process_time()
        enc.encode(q)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        out = {"texts_per_s": len(q) / wall, "cpu_ms_per_text": 1000 * cpu / len(q)}
    elif line.startswith("chunks"):  # random draws of N queries, one call each: a server's batches of N requests
        n = int(line.split()[1])
        rng = random.Random(n)
        calls = [rng.sample(q, n) for _ in range(max(1, len(q) // n))]
        t, c = time.perf_counter(), time.process_time()
        for x in calls:
            enc.encode(x)
        wall, cpu, done = time.perf_counter() - t, time.process_time() - c, n * len(calls)
        out = {"items": n, "texts_per_s": done / wall, "cpu_ms_per_text": 1000 * cpu / done}
    else:  # one call per query
        lat = []
        c = time.process_time()
        for text in q[:400]:
            t = time.perf_counter(); enc.encode([text]); lat.append(time.perf_counter() - t)
        cpu = 1000 * (time.process_time() - c) / 400
        out = {"single_query_p50_ms": 1000 * statistics.median(lat), "single_query_cpu_ms": cpu}
    print(json.dumps(out), flush=True)
"""


class InProcess:
    """st_runtime's in-process encode of the same queries (this checkout's, its default session options), in a
    process of its own kept up through the run, so that it is measured again beside each round of cells (a
    ratio to a figure from the same minute of a shared machine): ``batch()`` encodes the first
    ``--in-process-queries`` queries in one call (texts/s, CPU ms per text), ``single()`` one query per call
    (p50 latency, CPU ms per call), ``chunks(n)`` random draws of n queries per call."""

    def __init__(self, args, queries: list[str]):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(queries, f)
        path = self.queries_file = Path(f.name)
        argv = [sys.executable, "-c", _IN_PROCESS, str(model_folder(args)), str(args.threads), str(path)]
        argv.append(str(args.in_process_queries))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.variant = self._read()["variant"]
        self.settle = args.settle
        self.batches: list[dict] = []
        self.singles: list[dict] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process encoder exited with {self.proc.wait()}")
        return json.loads(line)

    def _ask(self, what: str) -> dict:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self._read()

    def batch(self) -> dict:
        self.batches.append(self._ask("batch"))
        time.sleep(self.settle)  # the next cell starts on a machine at rest
        return self.batches[-1]

    def single(self) -> dict:
        self.singles.append(self._ask("single"))
        return self.singles[-1]

    def chunks(self, n: int) -> dict:
        """Random draws of ``n`` of the queries, one ``encode`` call each: in-process encode of batches the size
        of a server's (its batches of requests from many clients hold random lengths, which pad more and run
        more graph batches than the whole corpus sorted at once)."""
        out = self._ask(f"chunks {n}")
        time.sleep(self.settle)
        return out

    def summary(self) -> dict:
        """Medians over every measurement of the run, and the measurements."""
        return {
            "variant": self.variant,
            "texts_per_s": statistics.median(b["texts_per_s"] for b in self.batches),
            "cpu_ms_per_text": statistics.median(b["cpu_ms_per_text"] for b in self.batches),
            "single_query_p50_ms": statistics.median(b["single_query_p50_ms"] for b in self.singles),
            "single_query_cpu_ms": statistics.median(b["single_query_cpu_ms"] for b in self.singles),
            "batch_runs": self.batches,
            "single_runs": self.singles,
        }

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.queries_file.unlink(missing_ok=True)


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
        f"\nin-process encode ({ip['variant']}): {ip['texts_per_s']:.0f} texts/s all at once, "
        f"{ip['cpu_ms_per_text']:.2f} CPU ms per text; single query p50 {ip['single_query_p50_ms']:.2f} ms, "
        f"{ip['single_query_cpu_ms']:.2f} CPU ms"
    )
    head = f"{'system':18} {'conc':>4} {'texts/req':>9} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(head + f" {'x in-proc':>9} {'srv CPU ms/req':>14} {'x in-proc CPU':>13} {'client cores':>12}")
    for s, v in result["systems"].items():
        if "cells" not in v:
            print(f"{s:18} skipped: {v['skipped']}")
            continue
        for c in v["cells"]:
            print(
                f"{s:18} {c['concurrency']:>4} {c['texts_per_request']:>9} {c['requests_per_s']:>8.0f} "
                f"{c['texts_per_s']:>8.0f} {c['p50_ms']:>8.2f} {c['p99_ms']:>8.2f} "
                f"{c.get('vs_in_process_throughput', 0):>9.3f} {c.get('server_cpu_ms_per_request', 0):>14.2f} "
                f"{c.get('cpu_vs_in_process_batch', 0):>13.2f} {c.get('client_cpu_cores') or 0:>12.2f}"
            )
    for k, v in result.get("targets", {}).items():
        print(f"target {k}: {v}")


def with_ratios(cell: dict, ip: dict) -> dict:
    """The cell with its throughput and its server CPU as ratios to in-process encode of the same queries, as
    measured just before the cell's round (``ip``: the latest batch and single-query measurements)."""
    cell["in_process_texts_per_s_now"] = round(ip["texts_per_s"], 1)
    cell["vs_in_process_throughput"] = round(cell["texts_per_s"] / ip["texts_per_s"], 3)
    if "server_cpu_ms_per_text" in cell:
        # against in-process CPU per query at batch (the cost of a query where there is no server)
        cell["cpu_vs_in_process_batch"] = round(cell["server_cpu_ms_per_text"] / ip["cpu_ms_per_text"], 2)
        if cell["texts_per_request"] == 1:
            cell["cpu_vs_in_process_single"] = round(cell["server_cpu_ms_per_request"] / ip["single_query_cpu_ms"], 2)
    return cell


def median_cell(runs: list[dict]) -> dict:
    """One cell from its repeats: each number the median over the runs (the runs kept under "runs")."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("concurrency", "texts_per_request"):
            out[k] = round(statistics.median(r[k] for r in runs if r.get(k) is not None), 4)
    out["runs"] = [{k: r.get(k) for k in ("requests_per_s", "p50_ms", "server_cpu_ms_per_request")} for r in runs]
    return out


def targets(result: dict) -> dict:
    """issue #30's targets, for st-serve (and st-serve (base)): 64 clients of single queries at 0.85x of
    in-process encode's throughput or more; at one client, server CPU per request at most 2x in-process CPU per
    query (at batch); and the one-client p50 (which must not get worse)."""
    ip = result["in_process"]
    out: dict = {}
    for system in ("st-serve", BASE, "plain-fastapi"):
        cells = {
            (c["concurrency"], c["texts_per_request"]): c for c in result["systems"].get(system, {}).get("cells", [])
        }
        t: dict = {}
        if (64, 1) in cells:
            t["c64_1q_vs_in_process"] = cells[(64, 1)]["vs_in_process_throughput"]
            if "vs_in_process_same_batches" in cells[(64, 1)]:
                t["c64_1q_vs_in_process_same_batches"] = cells[(64, 1)]["vs_in_process_same_batches"]
                t["c64_1q_server_batch_items_mean"] = cells[(64, 1)]["server_batch_items_mean"]
        if (1, 1) in cells:
            c1 = cells[(1, 1)]
            t["c1_1q_cpu_ms_per_request"] = c1.get("server_cpu_ms_per_request")
            t["c1_1q_cpu_vs_in_process_batch"] = c1.get("cpu_vs_in_process_batch")
            t["c1_1q_cpu_vs_in_process_single"] = c1.get("cpu_vs_in_process_single")
            t["c1_1q_p50_ms"] = round(c1["p50_ms"], 3)
            t["c1_p50_minus_in_process_single_ms"] = round(c1["p50_ms"] - ip["single_query_p50_ms"], 3)
        if t:
            out[system] = t
    new, base = out.get("st-serve", {}), out.get(BASE, {})
    ab = {}
    rates = {
        system: {c["concurrency"]: c["texts_per_s"] for c in v.get("cells", []) if c["texts_per_request"] == 1}
        for system, v in result["systems"].items()
    }
    if 64 in rates.get("st-serve", {}) and 64 in rates.get(BASE, {}):
        ab["c64_1q_throughput_vs_base"] = round(rates["st-serve"][64] / rates[BASE][64], 3)
    if new.get("c1_1q_cpu_ms_per_request") and base.get("c1_1q_cpu_ms_per_request"):
        ab["c1_1q_cpu_vs_base"] = round(new["c1_1q_cpu_ms_per_request"] / base["c1_1q_cpu_ms_per_request"], 3)
    if "c1_1q_p50_ms" in new and "c1_1q_p50_ms" in base:
        ab["c1_1q_p50_minus_base_ms"] = round(new["c1_1q_p50_ms"] - base["c1_1q_p50_ms"], 3)
    if ab:
        out["st-serve vs base"] = ab
    return out


def _start(group: list[str], args, out: Path, host: str, result: dict) -> dict:
    """Start the group's servers together and wait until each answers; those that cannot run are skipped."""
    servers = {}
    for system in group:
        port = free_port()
        cmd = server_command(system, args, port)
        if isinstance(cmd, str):
            result["systems"][system] = {"skipped": cmd}
            print(f"{system}: skipped ({cmd})")
            continue
        argv_, path, env = cmd
        log = out.with_name(f"serve-{host}-{re.sub(r'[^A-Za-z0-9_.]+', '-', system).strip('-')}.log")
        servers[system] = (Running(system, argv_, env, port, log), path, argv_)
    for system, (server, path, argv_) in list(servers.items()):
        try:
            startup = server.wait_ready(path, args.model, timeout=300)
            result["systems"][system] = {"command": " ".join(argv_), "startup_s": startup, "cells": []}
        except Exception as exc:  # a peer that fails is reported, the others still run
            result["systems"][system] = {"skipped": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{system}: failed: {exc}")
            server.stop()
            del servers[system]
    return servers


def run_group(group: list[str], args, queries: list[str], out: Path, host: str, result: dict, ip: InProcess) -> None:
    """Every cell on each server of ``group`` (started together), cell by cell, the order of the servers
    alternating from one run to the next; ``--repeats`` runs per cell, the median kept. In-process encode is
    measured again before each round of a cell (the servers idle meanwhile)."""
    servers = _start(group, args, out, host, result)
    try:
        flip = False
        for n in [int(x) for x in args.per_request.split(",")]:
            bodies = bodies_for(queries, n, args.model)
            for c in [int(x) for x in args.concurrency.split(",")]:
                if args.max_in_flight is not None and c * n > args.max_in_flight:
                    continue
                runs: dict[str, list[dict]] = {s: [] for s in servers}
                for _ in range(args.repeats):
                    now = {**ip.batch(), **ip.singles[-1]}
                    for system in reversed(list(servers)) if flip else list(servers):
                        server, path, _argv = servers[system]
                        before = batch_counts(server.port) if system in ("st-serve", BASE) else None
                        try:
                            cell = run_cell(server.port, path, bodies, c, n, args, server.proc.pid)
                        except Exception as exc:
                            print(f"{system}: cell c={c} {n}/req failed: {exc}")
                            continue
                        after = batch_counts(server.port) if before is not None else None
                        if before is not None and after is not None and after[1] > before[1]:
                            # the server's own cost apart from its batches' shape: in-process encode of random
                            # draws of as many queries as its batches held (warm-up included), measured now
                            mean = (after[0] - before[0]) / (after[1] - before[1])
                            cell["server_batch_items_mean"] = round(mean, 2)
                            if c > 1 and n == 1:
                                same = ip.chunks(max(1, round(mean)))
                                cell["in_process_same_batches_texts_per_s"] = round(same["texts_per_s"], 1)
                                cell["vs_in_process_same_batches"] = round(cell["texts_per_s"] / same["texts_per_s"], 3)
                        runs[system].append(with_ratios(cell, now))
                        print(
                            f"{system:18} c={c:<3} {n:>2}/req {cell['texts_per_s']:8.0f} texts/s "
                            f"p50 {cell['p50_ms']:.2f} ms, server {cell.get('server_cpu_ms_per_request', 0):.2f} "
                            f"CPU ms/req"
                        )
                    flip = not flip
                for system, found in runs.items():
                    if found:
                        result["systems"][system]["cells"].append(median_cell(found))
    finally:
        for server, _path, _argv in servers.values():
            server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="all-MiniLM-L6-v2", help="exported_models/NAME for st-serve; its hub id for peers"
    )
    p.add_argument(
        "--model-dir", type=Path, default=None, help="the export st-serve serves (default exported_models/MODEL)"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (plus a fifth to warm up)")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--per-request", default="1,32")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument(
        "--base-checkout",
        type=Path,
        default=None,
        help="another checkout of this repository (git worktree add PATH COMMIT): its st-serve runs beside this "
        "one, cell by cell, as 'st-serve (base)'",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of each cell per system (the median is kept)")
    p.add_argument(
        "--in-process-queries",
        type=int,
        default=4096,
        help="queries in-process encode runs at once before each round of cells (default all 4096)",
    )
    p.add_argument("--settle", type=float, default=2.0, help="seconds of rest after each in-process measurement")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="skip cells with more texts in flight (concurrency x texts per request): their requests take "
        "seconds each, and a cell of a few seconds measures a handful",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    queries = make_corpus(n_queries=4096)["queries"]
    host = socket.gethostname().split(".")[0]
    out = args.out or ROOT / "benchmarks" / "results" / f"serve-{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": args.model,
        "threads": args.threads,
        "seconds_per_cell": args.seconds,
        "repeats": args.repeats,
        "in_process_queries": args.in_process_queries,
        "machine": machine(),
        "corpus": "benchmarks.throughput.make_corpus queries (5-11 words)",
        "base_checkout": str(args.base_checkout) if args.base_checkout else None,
        "systems": {},
    }
    ip = InProcess(args, queries)
    ip.batch(), ip.single()
    print(json.dumps({"in_process": ip.batches[-1] | ip.singles[-1]}))
    systems = args.systems.split(",")
    # st-serve and its base run interleaved, cell by cell; each peer on its own
    ours = [s for s in systems if s == "st-serve"] + ([BASE] if args.base_checkout else [])
    groups = ([ours] if ours else []) + [[s] for s in systems if s != "st-serve"]
    try:
        for group in groups:
            run_group(group, args, queries, out, host, result, ip)
        ip.single()
    finally:
        ip.close()
    result["in_process"] = ip.summary()
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
