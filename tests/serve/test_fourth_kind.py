"""A kind defined in one file (toy_kind.py) works through every door with no edit anywhere else: st_runtime.load,
in process, st-serve's routes it declares (and a 422 on those it does not), and st-embed."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import toy_kind

from st_runtime import SentenceEncoder, load

pytest.importorskip("uvicorn")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = ["a", "The quick brown fox jumps over the lazy dog.", "embeddings " * 80, "Москва"]


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory, fixtures_dir):
    """The BERT fixture's export, its manifest saying it holds the toy kind."""
    folder = tmp_path_factory.mktemp("toy") / "toy"
    shutil.copytree(fixtures_dir / "bert" / "export", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["task"] = toy_kind.TASK
    manifest["name"] = "toy"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    emb = SentenceEncoder(fixtures_dir / "bert" / "export", threads=1).encode(TEXTS)
    return np.hstack([emb, np.abs(emb).sum(axis=1, keepdims=True)])


def test_load_gives_the_kinds_class_in_process(toy_folder, expected):
    model = load(toy_folder, threads=1)
    assert isinstance(model, toy_kind.L1Encoder) and model.kind.task == toy_kind.TASK
    got = model.encode(TEXTS)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got[:, :-1], expected[:, :-1])
    np.testing.assert_allclose(got[:, -1], expected[:, -1], rtol=1e-6)
    np.testing.assert_array_equal(model.encode(TEXTS[1]), got[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def toy_server(toy_folder):
    """st-serve's app on a real uvicorn in this process (where the toy kind is registered), on 127.0.0.1."""
    import uvicorn

    from st_runtime.serve.app import ServeConfig, create_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ServeConfig([toy_folder], threads=1)), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the toy server did not become ready in 60 s")
    yield url
    server.should_exit = True
    thread.join(30)


def test_the_server_answers_the_routes_the_kind_declares(toy_server, expected):
    rows = np.array(httpx.post(toy_server + "/embed", json={"inputs": TEXTS}, timeout=30).json(), dtype=np.float32)
    # /embed normalizes unnormalized models by default; this fixture's graph ends in Normalize, so rows are as is
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-7)
    own = httpx.post(toy_server + "/embed_l1", json={"inputs": TEXTS}, timeout=30).json()
    np.testing.assert_allclose([o["l1"] for o in own], expected[:, -1], rtol=1e-6)
    np.testing.assert_allclose(np.array([o["embedding"] for o in own]), expected[:, :-1], atol=1e-7)
    info = httpx.get(toy_server + "/info", timeout=30).json()
    assert info["st_runtime"]["task"] == toy_kind.TASK and "/embed_l1" in info["st_runtime"]["routes"]


def test_the_server_refuses_routes_the_kind_does_not_declare(toy_server):
    r = httpx.post(toy_server + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=30)
    assert r.status_code == 422
    assert "l1-embedding" in r.json()["error"] and "/embed_l1" in r.json()["error"]


def test_st_embed_writes_the_kinds_rows(toy_folder, tmp_path, expected):
    from st_runtime.bulk.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    assert main([str(toy_folder), str(src), "-o", str(tmp_path / "out"), "--threads", "1", "--quiet"]) == 0
    table = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet"))[0])
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(got[:, :-1], expected[:, :-1])
    np.testing.assert_allclose(got[:, -1], expected[:, -1], rtol=1e-6)
