"""Every ```python block of README.md and docs/ runs, as a reader would run it, against tiny exported models.

The blocks run in one working folder laid out as the examples assume: ``exported_models/`` holds tiny exports under
the names the examples use (the committed BERT and CLIP fixtures as all-MiniLM-L6-v2 and clip-ViT-B-32, a tiny
cross-encoder as ms-marco-MiniLM-L6-v2, a tiny SPLADE model as splade-v3), ``corpus.parquet`` has ``id`` and
``text`` columns, ``embedded/`` is what ``st-embed`` made of it, and blocks that call ``http://127.0.0.1:8080`` get a
real st-serve (on a free port, the address rewritten). A block preceded by ``<!-- example: skip REASON -->`` is
reported as skipped with that reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HAVE_EXPORT

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts)]
BLOCK = re.compile(r"(?:<!-- example: skip (?P<skip>[^>]*?) -->\s*\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)
SERVER_URL = "http://127.0.0.1:8080"


def _blocks() -> list:
    params = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code")) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            marks = [pytest.mark.skip(reason=match.group("skip"))] if match.group("skip") else []
            params.append(pytest.param(name, match.group("code"), id=name, marks=marks))
    return params


EXAMPLES = _blocks()


def test_the_pages_have_examples():
    """The collector finds blocks (a change in the fence syntax would otherwise silently run nothing)."""
    pages = {name.split(":")[0] for name, *_ in (p.values for p in EXAMPLES)}
    assert "README.md" in pages and "docs/getting-started.md" in pages, pages
    assert len(EXAMPLES) >= 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """st-serve on the BERT fixture, named all-MiniLM-L6-v2, started on first use."""

    def __init__(self, folder: Path, log: Path):
        self.folder, self.log, self.proc, self.url = folder, log, None, ""

    def start(self) -> str:
        if self.proc is None:
            import httpx

            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            args = [str(self.folder), "--served-model-name", "all-MiniLM-L6-v2", "--port", str(port), "--threads", "1"]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "st_runtime.serve.cli", *args],
                stdout=self.log.open("w"),
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return self.url
                time.sleep(0.1)
            raise AssertionError(f"st-serve was not ready in 90 s:\n{self.log.read_text()}")
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _export(src: Path, out: Path) -> None:
    from exporters import export_model

    export_model(str(src), output=out, variants=[], log=lambda _m: None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    if not HAVE_EXPORT:
        pytest.skip("needs the export extra: the examples use a tiny cross-encoder and SPLADE model exported here")
    pytest.importorskip("pyarrow", reason="needs the bulk extra")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tiny_models import build_tiny_cross_encoder, build_tiny_sparse_encoder

    from st_runtime.bulk.cli import main as st_embed

    root = tmp_path_factory.mktemp("examples")
    models = root / "exported_models"
    models.mkdir()
    (models / "all-MiniLM-L6-v2").symlink_to(FIXTURES / "bert" / "export")
    (models / "clip-ViT-B-32").symlink_to(FIXTURES / "clip" / "export")
    scratch = tmp_path_factory.mktemp("example-sources")
    _export(build_tiny_cross_encoder(scratch / "ce", "bert"), models / "ms-marco-MiniLM-L6-v2")
    _export(build_tiny_sparse_encoder(scratch / "splade", "bert"), models / "splade-v3")
    texts = [f"passage {i}: London has {i} inhabitants" for i in range(40)]
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), root / "corpus.parquet")
    args = [str(models / "all-MiniLM-L6-v2"), str(root / "corpus.parquet"), "-o", str(root / "embedded")]
    assert st_embed([*args, "--id-column", "id", "--chunk-rows", "16"]) == 0
    server = _Server(models / "all-MiniLM-L6-v2", root / "serve.log")
    yield root, server
    server.stop()


@pytest.mark.parametrize(("name", "code"), EXAMPLES)
def test_example_runs(name, code, workdir, monkeypatch, capsys):
    root, server = workdir
    if SERVER_URL in code:
        code = code.replace(SERVER_URL, server.start())
    monkeypatch.chdir(root)
    monkeypatch.setenv("OPENAI_API_KEY", os.environ.get("OPENAI_API_KEY", "unused"))
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and getattr(ray, "is_initialized", lambda: False)():
            ray.shutdown()  # the Ray example starts a local Ray; later tests start their own
    capsys.readouterr()  # what the example printed is for its reader; that it ran is what is tested
