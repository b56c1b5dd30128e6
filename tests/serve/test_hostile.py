"""Clients that misbehave on purpose, with raw sockets against a real st-serve on 127.0.0.1 (short limits set
on the command line): stalled bodies, slow and oversized heads, idle and abandoned connections, clients that
leave mid-body or read no response, huge texts. None of them may lock others out or end in a 500."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import Server, free_port

LIMITS = [
    "--body-timeout", "1", "--header-timeout", "1", "--keep-alive-timeout", "1", "--write-timeout", "1.5",
    "--max-header-bytes", "4096", "--max-concurrent-requests", "4", "--payload-limit", "6000000",
    "--max-input-chars", "6000000",
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("hostile")
    server = Server([str(fixtures_dir / "bert" / "export"), *LIMITS], root / "serve.log").wait_ready()
    yield server
    assert server.stop() == 0, server.output()
    log = server.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def connect(server: Server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """(what arrived, whether the server closed the connection) within ``timeout`` seconds."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else -1


def head(path: str = "/embed", length: int | None = None, extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def embed(server: Server, texts, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/embed", json={"inputs": texts, **kwargs}, timeout=60)


# ---------------------------------------------------------------------------------------------- bodies
def test_stalled_uploads_hold_no_slot_and_get_408(hostile):
    """Twice --max-concurrent-requests clients send a head and 14 bytes of a 1,000-byte body, then wait: other
    clients are still served (a slot is taken once the body has arrived), and each staller gets 408."""
    stalled = []
    for _ in range(8):
        s = connect(hostile)
        s.sendall(head(length=1000) + b'{"inputs": "ab')
        stalled.append(s)
    time.sleep(0.2)
    codes = [embed(hostile, ["still served"]).status_code for _ in range(6)]
    assert codes == [200] * 6
    for s in stalled:
        data, closed = read_until_closed(s, 5)
        assert status_of(data) == 408 and closed, data[:300]
        assert b"--body-timeout" in data and b"connection: close" in data.lower()
        s.close()
    assert metric(hostile, 'st_request_count_total{route="/embed",status="408"}') >= 8


def test_a_trickled_body_times_out_as_a_whole(hostile):
    s = connect(hostile)
    s.sendall(head(length=200) + b'{"inputs": ')
    t0 = time.monotonic()
    for _ in range(8):  # a byte every 0.25 s: never idle, never done
        time.sleep(0.25)
        try:
            s.sendall(b" ")
        except OSError:
            break
    data, closed = read_until_closed(s, 3)
    assert status_of(data) == 408 and closed and time.monotonic() - t0 < 4
    s.close()


def test_a_client_that_leaves_mid_body_is_a_499(hostile):
    before_500 = metric(hostile, 'st_request_count_total{route="/embed",status="500"}')
    for _ in range(5):
        s = connect(hostile)
        s.sendall(head(length=5000) + b'{"inputs": ["leaving')
        s.close()
    deadline = time.monotonic() + 5
    while metric(hostile, 'st_request_count_total{route="/embed",status="499"}') < 5:
        assert time.monotonic() < deadline, "the abandoned requests were not counted as 499"
        time.sleep(0.1)
    assert metric(hostile, 'st_request_count_total{route="/embed",status="500"}') == before_500
    assert "left after sending" in hostile.output()  # one INFO line, no traceback (checked at the end)


def test_unsupported_content_type_is_415(hostile):
    r = httpx.post(hostile.url + "/embed", content=b'{"inputs": "a"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    form = httpx.post(hostile.url + "/v1/embeddings", data={"input": "a"})
    assert form.status_code == 415 and form.json()["error"]["code"] == 415
    bare = httpx.post(hostile.url + "/embed", content=b'{"inputs": "a"}', headers={"content-type": ""})
    assert bare.status_code == 200


def test_a_body_left_unread_closes_the_connection(hostile):
    s = connect(hostile)
    s.sendall(head(length=7_000_000))  # over --payload-limit: refused from the declared length
    data, closed = read_until_closed(s, 3)
    assert status_of(data) == 413 and closed
    s.close()


# ---------------------------------------------------------------------------------------------- heads
def test_slow_headers_are_cut_off(hostile):
    s = connect(hostile)
    s.sendall(b"POST /embed HTTP/1.1\r\n")
    t0 = time.monotonic()
    closed = False
    for _ in range(20):  # slowloris: one byte of a header every 0.25 s
        try:
            s.sendall(b"X")
        except OSError:
            closed = True
            break
        time.sleep(0.25)
    data, closed_now = read_until_closed(s, 3)
    assert closed or closed_now
    assert status_of(data) == 408 and time.monotonic() - t0 < 4, data[:200]
    s.close()


def test_idle_connections_are_closed(hostile):
    silent = connect(hostile)  # opens, sends nothing
    data, closed = read_until_closed(silent, 3)
    assert closed and data == b""
    silent.close()
    kept = connect(hostile)  # a request, then idle on keep-alive
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data, closed = read_until_closed(kept, 3)
    assert status_of(data) == 200 and closed
    kept.close()


def test_pipelined_requests_still_work(hostile):
    s = connect(hostile)
    body = b'{"inputs": "a"}'
    one = head(length=len(body)) + body
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + one + one)
    data, _ = read_until_closed(s, 3)
    assert data.count(b"HTTP/1.1 200 OK") == 3, data[:500]
    s.close()


@pytest.mark.parametrize("trickled", [False, True], ids=["at_once", "in_pieces"])
def test_oversized_heads_are_refused_with_431(hostile, trickled):
    big = head(extra="X-Big: " + "a" * 20_000 + "\r\n")
    s = connect(hostile)
    if trickled:  # never completes: refused once over the limit, and the rest dropped, never buffered
        s.sendall(big[:60])
        try:
            for _ in range(1000):
                s.sendall(b"a" * 1000)
        except OSError:
            pass
    else:
        s.sendall(big)
    data, closed = read_until_closed(s, 3)
    assert status_of(data) == 431 and closed, data[:200]
    s.close()
    small = httpx.get(hostile.url + "/health", headers={"X-Fine": "a" * 3000})
    assert small.status_code == 200


# ---------------------------------------------------------------------------------------------- responses
def test_a_client_that_reads_no_response_is_dropped(hostile):
    """A response of megabytes to a client that reads none of it: dropped after --write-timeout."""
    before = metric(hostile, 'st_connections_closed_total{reason="write_timeout"}')
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", hostile.port))
    body = json.dumps({"inputs": ["a " * 150_000]}).encode()
    s.sendall(head("/tokenize", len(body)) + body)
    deadline = time.monotonic() + 10
    while metric(hostile, 'st_connections_closed_total{reason="write_timeout"}') <= before:
        assert time.monotonic() < deadline, "the connection of a client that reads nothing was kept"
        time.sleep(0.2)
    s.close()
    assert embed(hostile, ["after"]).status_code == 200


# ---------------------------------------------------------------------------------------------- texts
def _server_peak_mb(server: Server) -> float:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_a_huge_text_is_cheap(hostile, fixtures_dir):
    """5,000,000 characters: before the exact shortcuts, 1.6-3 s and +277 MB (spaceless) and 2.4-4 s and +506 MB
    (spaced, truncate=false) for one request."""
    from st_runtime import SentenceEncoder

    embed(hostile, ["warm " * 2000])
    Path(f"/proc/{hostile.proc.pid}/clear_refs").write_text("5")
    base = _server_peak_mb(hostile)
    t0 = time.monotonic()
    spaceless = embed(hostile, ["a" * 5_000_000, "short"], normalize=False)
    strict = embed(hostile, [("word " * 1_000_000)[:5_000_000]], truncate=False)
    elapsed = time.monotonic() - t0
    grown = _server_peak_mb(hostile) - base
    assert spaceless.status_code == 200 and strict.status_code == 413, strict.text
    assert "more than 48 tokens" in strict.json()["error"]
    local = SentenceEncoder(fixtures_dir / "bert" / "export", threads=1)
    import numpy as np

    # a word over WordPiece's 100 characters is one [UNK], however long
    # (normalize=false: the embedding before the model's Normalize, as TEI gives it)
    want = local.encode(["a" * 101, "short"], output_value="sentence_embedding_unnormalized")
    np.testing.assert_allclose(np.array(spaceless.json()), want, atol=1e-5)
    print(f"two 5,000,000-character requests: {elapsed:.2f} s, server peak +{grown:.0f} MB")
    assert elapsed < 4 and grown < 120, (elapsed, grown)  # the request body itself is 5 MB, its JSON string 5 MB


def test_texts_over_max_input_chars_are_413(start_server, fixtures_dir):
    server = start_server(fixtures_dir / "bert" / "export", "--max-input-chars", "1000")
    r = embed(server, ["fine", "x" * 1001])
    assert r.status_code == 413 and "'inputs[1]' has 1001 characters" in r.json()["error"]
    assert httpx.post(server.url + "/tokenize", json={"inputs": "y" * 1001}).status_code == 413


# ---------------------------------------------------------------------------------------------- connections
def test_hundreds_of_idle_connections_leave_health_answering(tmp_path, fixtures_dir):
    """300 idle connections against a server allowed 256 open files: past --max-connections the longest idle
    one is closed, so the server never runs out of descriptors and /health keeps answering."""
    port = free_port()
    log = tmp_path / "serve.log"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "st_runtime.serve.cli", str(fixtures_dir / "bert" / "export"), "--port", str(port),
         "--threads", "1", "--max-connections", "100", "--header-timeout", "30"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for _ in range(5):
            assert httpx.get(url + "/health", timeout=3).status_code == 200
        r = httpx.post(url + "/embed", json={"inputs": ["still answering"]}, timeout=10)
        assert r.status_code == 200
        closed = 0
        for s in idle:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        assert closed >= 190, closed  # at most --max-connections stay open
        text = httpx.get(url + "/metrics", timeout=5).text
        open_now = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("st_open_connections")))
        assert open_now <= 101
        assert "Too many open files" not in log.read_text()
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(30)


def test_a_burst_of_abandoned_connections_leaves_no_trace(hostile):
    """Many clients each leave at a different moment of a request; afterwards the server is as before."""
    body = json.dumps({"inputs": ["abandoned " * 20] * 4}).encode()
    request = head(length=len(body)) + body

    def leave_at(cut: int) -> None:
        s = connect(hostile)
        s.sendall(request[:cut])
        s.close()

    threads = [threading.Thread(target=leave_at, args=(cut,)) for cut in range(0, len(request), len(request) // 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)
    assert embed(hostile, ["after the burst"]).status_code == 200
    assert metric(hostile, 'st_request_count_total{route="/embed",status="500"}') == 0
