"""Soak: st-serve under a mix of good, bad, slow and abandoned clients for a long run (default 10 minutes).

    python -m benchmarks.soak [--model-dir exported_models/all-MiniLM-L6-v2] [--minutes 10] [--good 8]

One st-serve on 127.0.0.1 (started and stopped here), and, all at once, over raw asyncio sockets:

* ``good``: closed-loop clients on keep-alive connections, /embed with 1-16 short texts; their latency and
  status are what the soak is judged by (only 200 and 429 are allowed);
* ``bad``: malformed and 100,000-deep JSON, wrong types, ``text/plain``, a declared body over the payload
  limit, an oversized head, a request that is not HTTP;
* ``stalled``: a head and a few bytes of a body, then nothing (the server answers 408);
* ``slowloris``: a head sent a byte every half second (the server closes it);
* ``abandoned``: a request cut at a random byte, or sent whole, then the connection closed;
* ``idle``: more connections than ``--max-connections`` opened and left silent (closed by the server, or
  closed to make room);
* ``huge``: a 990,000-character text without spaces (200), and one with spaces and ``truncate: false`` (413);
* ``slow readers``: a response of megabytes that is never read (dropped after the write timeout, as the
  server's ``st_connections_closed_total{reason="write_timeout"}`` counts).

Every ``--sample-seconds`` the server's resident memory and open file descriptors are read from /proc.
Prints a summary and writes ``benchmarks/results/soak-<host>.json``: the good clients' p50/p99 latency,
requests, status counts and error rate; every other kind's outcomes; memory and descriptors over time;
whether the server log holds a traceback or an ERROR line. Exits 1 when a good client saw anything but 200
or 429, or the log holds a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from .throughput import ROOT, machine

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "are", "with", "as", "by", "London", "city"]
LIMITS = ["--max-connections", "256", "--body-timeout", "10", "--header-timeout", "5", "--write-timeout", "10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(path: str, body: bytes, content_type: str = "application/json", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n\r\n"
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split(b" ", 2)[1])
    length = None
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        return status, body
    return status, (await reader.readexactly(length) if length else b"")


class Soak:
    def __init__(self, port: int, deadline: float):
        self.port = port
        self.deadline = deadline
        self.latencies: list[float] = []
        self.good = Counter()
        self.outcomes: dict[str, Counter] = {}

    def note(self, kind: str, outcome: str | int) -> None:
        self.outcomes.setdefault(kind, Counter())[str(outcome)] += 1

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def connect(self):
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 10)

    # ------------------------------------------------------------------ kinds
    async def good_client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = None
        while self.running():
            texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(rng.randint(1, 16))]
            message = request("/embed", orjson.dumps({"inputs": texts}))
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await self.connect()
                conn[1].write(message)
                status, _ = await asyncio.wait_for(read_response(conn[0]), 60)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                # a keep-alive connection the server closed while idle is retried once on a new one
                if conn is not None:
                    conn[1].close()
                conn = None
                try:
                    conn = await self.connect()
                    conn[1].write(message)
                    status, _ = await asyncio.wait_for(read_response(conn[0]), 60)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as again:
                    self.good[f"error: {type(again).__name__} (first {type(exc).__name__})"] += 1
                    conn = None
                    continue
            self.latencies.append(time.perf_counter() - t0)
            self.good[str(status)] += 1
        if conn is not None:
            conn[1].close()

    async def one_shot(self, kind: str, payload: bytes, timeout: float = 30) -> None:
        try:
            reader, writer = await self.connect()
            writer.write(payload)
            status, _ = await asyncio.wait_for(read_response(reader), timeout)
            self.note(kind, status)
            writer.close()
        except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.note(kind, type(exc).__name__)

    async def bad_client(self, seed: int) -> None:
        rng = random.Random(seed)
        cases = [
            request("/embed", b"{not json"),
            request("/embed", b"[" * 100_000 + b"]" * 100_000),
            request("/embed", b'{"inputs": 5}'),
            request("/embed", b'{"inputs": "a"}', content_type="text/plain"),
            request("/embed", b"", length=50_000_000),
            b"POST /embed HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
            request("/v1/embeddings", b'{"input": "a", "model": "nope"}'),
        ]
        while self.running():
            await self.one_shot("bad", rng.choice(cases))
            await asyncio.sleep(rng.uniform(0, 0.2))

    async def stalled_client(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            await self.one_shot("stalled", request("/embed", b'{"inputs": ["st', length=1000), timeout=60)
            await asyncio.sleep(rng.uniform(0, 1))

    async def slowloris_client(self, seed: int) -> None:
        while self.running():
            try:
                reader, writer = await self.connect()
                writer.write(b"POST /embed HTTP/1.1\r\n")
                outcome = "still open at the end"
                while self.running():
                    writer.write(b"X")
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 0.5)
                    except TimeoutError:
                        continue
                    outcome = f"closed ({status_or_eof(data)})"
                    break
                self.note("slowloris", outcome)
                writer.close()
            except (OSError, ConnectionError) as exc:
                self.note("slowloris", type(exc).__name__)

    async def abandoning_client(self, seed: int) -> None:
        rng = random.Random(seed)
        body = orjson.dumps({"inputs": ["abandoned " * rng.randint(1, 40)] * rng.randint(1, 64)})
        message = request("/embed", body)
        while self.running():
            try:
                _, writer = await self.connect()
                writer.write(message[: rng.randint(0, len(message))])
                await asyncio.sleep(rng.uniform(0, 0.05))
                writer.close()
                self.note("abandoned", "left")
            except (OSError, ConnectionError) as exc:
                self.note("abandoned", type(exc).__name__)
            await asyncio.sleep(rng.uniform(0, 0.1))

    async def idle_flood(self, count: int) -> None:
        while self.running():
            conns = []
            for _ in range(count):
                try:
                    conns.append(await self.connect())
                except (OSError, TimeoutError) as exc:
                    self.note("idle", type(exc).__name__)
            await asyncio.sleep(8)
            closed = 0
            for reader, writer in conns:
                closed += reader.at_eof() or reader.exception() is not None
                writer.close()
            self.note("idle", f"{count} opened")
            self.note("idle", f"closed by the server after 8 s: {closed}")

    async def huge_client(self, seed: int) -> None:
        rng = random.Random(seed)
        spaceless = orjson.dumps({"inputs": ["a" * 990_000]})  # under --max-input-chars (1,000,000)
        spaced = orjson.dumps({"inputs": [("word " * 200_000)[:990_000]], "truncate": False})
        while self.running():
            which = rng.choice([("huge spaceless", spaceless), ("huge strict", spaced)])
            await self.one_shot(which[0], request("/embed", which[1]), timeout=60)
            await asyncio.sleep(rng.uniform(0.5, 2))

    async def slow_reader(self, seed: int) -> None:
        rng = random.Random(seed)
        body = orjson.dumps({"inputs": ["a " * 200_000]})
        while self.running():
            try:
                _reader, writer = await self.connect()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                writer.write(request("/tokenize", body))
                t0 = time.monotonic()
                while self.running() and time.monotonic() - t0 < 30:
                    await asyncio.sleep(1)  # never reads (so it cannot see the reset either: the server counts it)
                self.note("slow reader", "left its response unread for 30 s")
                writer.close()
            except (OSError, ConnectionError) as exc:
                self.note("slow reader", type(exc).__name__)
            await asyncio.sleep(rng.uniform(0, 2))


def status_or_eof(data: bytes) -> str:
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "no reply"


# ---------------------------------------------------------------------------------------------- the server
def sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": round(rss, 1), "fds": fds}


async def sampler(soak: Soak, pid: int, every: float, t0: float, out: list) -> None:
    while soak.running():
        out.append({"t": round(time.monotonic() - t0, 1), **sample(pid)})
        await asyncio.sleep(every)


async def soak_run(port: int, pid: int, args) -> tuple[Soak, list]:
    t0 = time.monotonic()
    soak = Soak(port, t0 + args.minutes * 60)
    samples: list = []
    tasks = [sampler(soak, pid, args.sample_seconds, t0, samples)]
    tasks += [soak.good_client(i) for i in range(args.good)]
    tasks += [soak.bad_client(100 + i) for i in range(2)]
    tasks += [soak.stalled_client(200 + i) for i in range(16)]
    tasks += [soak.slowloris_client(300 + i) for i in range(8)]
    tasks += [soak.abandoning_client(400 + i) for i in range(4)]
    tasks += [soak.huge_client(500), soak.slow_reader(600), soak.idle_flood(args.idle)]
    await asyncio.gather(*tasks)
    return soak, samples


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = ROOT / "exported_models" / "all-MiniLM-L6-v2"
    if not (default_model / "manifest.json").exists():
        default_model = ROOT / "tests" / "fixtures" / "bert" / "export"
    p.add_argument("--model-dir", type=Path, default=default_model)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--good", type=int, default=8, help="good closed-loop clients")
    p.add_argument("--idle", type=int, default=300, help="idle connections held at once (over --max-connections)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sample-seconds", type=float, default=5.0)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-{port}.log"
    argv_ = [sys.executable, "-m", "st_runtime.serve.cli", str(args.model_dir), "--port", str(port),
             "--no-access-log", *LIMITS]  # fmt: skip
    if args.threads:
        argv_ += ["--threads", str(args.threads)]
    proc = subprocess.Popen(argv_, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc)
        soak, samples = asyncio.run(soak_run(port, proc.pid, args))
        final = sample(proc.pid)
        counters = server_counters(port)
    finally:
        proc.terminate()
        proc.wait(60)
    log = log_path.read_text(errors="replace")
    good_total = sum(soak.good.values())
    errors = {k: v for k, v in soak.good.items() if k not in ("200", "429")}
    result = {
        "machine": machine(),
        "model": str(args.model_dir),
        "minutes": args.minutes,
        "server_limits": LIMITS,
        "good": {
            "clients": args.good,
            "requests": good_total,
            "status": dict(soak.good),
            "error_rate": (sum(errors.values()) / good_total) if good_total else None,
            "p50_ms": round(percentile(soak.latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(soak.latencies, 0.99) * 1000, 2),
            "max_ms": round(max(soak.latencies, default=float("nan")) * 1000, 2),
        },
        "others": {kind: dict(c) for kind, c in sorted(soak.outcomes.items())},
        "server_counters": counters,
        "server": {
            "rss_mb": {
                "first": samples[0]["rss_mb"],
                "max": max(x["rss_mb"] for x in samples),
                "last": final["rss_mb"],
            },
            "fds": {"first": samples[0]["fds"], "max": max(x["fds"] for x in samples), "last": final["fds"]},
            "samples": samples,
            "log_has_traceback": "Traceback" in log,
            "log_error_lines": sum(" ERROR " in line for line in log.splitlines()),
        },
    }
    out = args.output or ROOT / "benchmarks" / "results" / f"soak-{socket.gethostname().split('.')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    g, s = result["good"], result["server"]
    print(f"good clients: {g['requests']} requests, status {g['status']}, p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms")
    for kind, outcomes in result["others"].items():
        print(f"{kind}: {outcomes}")
    print(f"server counters: {counters}")
    print(f"server: RSS {s['rss_mb']} MB, fds {s['fds']}, traceback in log: {s['log_has_traceback']}")
    print(f"written to {out}")
    return 1 if errors or s["log_has_traceback"] else 0


def server_counters(port: int) -> dict[str, float]:
    """The server's own counts: requests by route and status, connections closed by a limit, by reason."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    wanted = ("st_request_count_total{", "st_connections_closed_total{")
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted)
    }


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"st-serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("st-serve was not ready in time")


if __name__ == "__main__":
    sys.exit(main())
