"""The benchmark's peer-worker client: failures are reported with the worker's stderr, never hang."""

import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.peer_client import PeerError, PeerWorker

HELLO = 'import json, sys\nprint(json.dumps({"hello": 1, "versions": {}}), flush=True)\n'


def fake(tmp_path, body: str) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_worker_that_dies_at_start_reports_its_stderr(tmp_path):
    script = fake(tmp_path, "import sys\nprint('cannot import fastembed', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(PeerError, match=r"(?s)exited \(code 3\) during start-up.*cannot import fastembed") as e:
        PeerWorker(sys.executable, tmp_path / "log", script=script)
    assert not e.value.alive


def test_hanging_worker_is_killed_after_the_timeout(tmp_path):
    script = fake(
        tmp_path,
        HELLO + "import time\nsys.stdin.readline()\nprint('working', file=sys.stderr, flush=True)\ntime.sleep(600)\n",
    )
    w = PeerWorker(sys.executable, tmp_path / "log", script=script)
    with pytest.raises(PeerError, match=r"(?s)did not answer encode x within 1 s; killed it.*working"):
        w.request({"cmd": "encode"}, timeout=1, what="encode x")
    assert not w.alive()
    with pytest.raises(PeerError, match="is gone"):
        w.request({"cmd": "encode"}, timeout=1)
    w.close()


def test_worker_dying_mid_request_and_garbage(tmp_path):
    script = fake(
        tmp_path, HELLO + "sys.stdin.readline()\nprint('Segfault-ish', file=sys.stderr)\nsys.exit(-9 % 256)\n"
    )
    with (
        PeerWorker(sys.executable, tmp_path / "log", script=script) as w,
        pytest.raises(PeerError, match=r"(?s)exited \(code 247\) during load.*Segfault-ish"),
    ):
        w.request({"cmd": "load"}, timeout=30)
    script = fake(tmp_path, HELLO + "sys.stdin.readline()\nprint('not json', flush=True)\nsys.stdin.readline()\n")
    with (
        PeerWorker(sys.executable, tmp_path / "log2", script=script) as w,
        pytest.raises(PeerError, match="not JSON: 'not json"),
    ):
        w.request({"cmd": "load"}, timeout=30)


def test_real_worker_protocol_without_peer_packages(tmp_path):
    # The worker's module level is stdlib only, so any python can greet and answer errors.
    with PeerWorker(sys.executable, tmp_path / "log") as w:
        assert w.hello["hello"] == 1 and "fastembed" in w.hello["systems"]
        with pytest.raises(PeerError, match="unknown command 'nope'") as e:
            w.request({"cmd": "nope"}, timeout=30)
        assert e.value.alive
        corpus = tmp_path / "corpus.json"
        corpus.write_text('{"queries": ["a", "b"]}')
        assert w.request({"cmd": "corpus", "path": str(corpus)}, timeout=30)["workloads"] == {"queries": 2}
        with pytest.raises(PeerError, match="not loaded"):
            w.request({"cmd": "encode", "system": "onnx", "workload": "queries"}, timeout=30)
    assert not w.alive()
