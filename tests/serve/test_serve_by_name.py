"""st-serve started from a model name: resolved through the export cache before the server starts (here a
repository st-export pushed, placed in an offline Hugging Face cache), and a name that resolves nowhere refused
before it starts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, offline_hub, place_in_hf_cache

from st_runtime import SentenceEncoder
from st_runtime.hub import cache

httpx = pytest.importorskip("httpx")
pytest.importorskip("huggingface_hub", reason="needs the hub extra: pip install 'st-runtime[hub]'")
REPO = "test-org/tiny-bert-st-runtime"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_serve_a_name(start_server, monkeypatch, tmp_path, fixtures_dir):
    folder = fixtures_dir / "bert" / "export"
    hf, _ = offline_hub(monkeypatch, tmp_path)
    place_in_hf_cache(folder, hf, REPO, COMMIT)
    server = start_server(REPO, "--revision", "main", "--served-model-name", "tiny")
    r = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "model": "tiny", "truncate": True}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json(), np.float32), SentenceEncoder(folder).encode(TEXTS), atol=1e-6)
    assert cache.complete(cache.entry_path(REPO, COMMIT, "hub-all"))


def test_a_name_that_resolves_nowhere_is_refused_before_start(start_server, monkeypatch, tmp_path):
    offline_hub(monkeypatch, tmp_path)
    server = start_server("test-org/never-downloaded", ready=False)
    assert server.proc.wait(60) == 2
    assert "not in the export cache" in server.output() and "HF_HUB_OFFLINE=1" in server.output()
