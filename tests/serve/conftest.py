"""st-serve as users run it: a subprocess on 127.0.0.1, a free port, real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'st-runtime[serve]'")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "st_runtime.serve.cli", *args, "--port", str(self.port), "--threads", "1"],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"st-serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"st-serve was not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"st-serve did not exit within {timeout} s of SIGTERM") from None
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    """start_server(*args) -> a ready Server; every server is stopped at the end of the test."""
    servers: list[Server] = []

    def start(*args: str, ready: bool = True) -> Server:
        server = Server([str(a) for a in args], tmp_path / f"serve-{len(servers)}.log")
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory, fixtures_dir):
    """One server for the module: the committed BERT fixture as "bert" and the CLIP fixture as "clip"."""
    root = tmp_path_factory.mktemp("served")
    bert, clip = fixtures_dir / "bert" / "export", fixtures_dir / "clip" / "export"
    server = Server(
        [str(bert), str(clip), "--served-model-name", "bert", "--served-model-name", "clip"], root / "serve.log"
    ).wait_ready()
    server.folders = {"bert": bert, "clip": clip}
    yield server
    assert server.stop() == 0, server.output()
