"""st-embed and st_runtime.ray started from a model name (a repository st-export pushed, in an offline Hugging Face
cache): locally, on a local Ray, and an actor resolving the name into its own node's export cache."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, offline_hub, place_in_hf_cache
from test_st_embed import embeddings, st_embed

from st_runtime import SentenceEncoder
from st_runtime.hub import cache

pytest.importorskip("huggingface_hub", reason="needs the hub extra: pip install 'st-runtime[hub]'")
REPO = "test-org/tiny-bert-st-runtime"
COMMIT = "00112233445566778899aabbccddeeff00112233"


@pytest.fixture
def hub(monkeypatch, tmp_path, fixtures_dir):
    hf, _ = offline_hub(monkeypatch, tmp_path)
    place_in_hf_cache(fixtures_dir / "bert" / "export", hf, REPO, COMMIT)
    return fixtures_dir / "bert" / "export"


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(t for t in TEXTS if t and "\n" not in t) + "\n")
    return path, [t for t in TEXTS if t and "\n" not in t]


def test_st_embed_a_name_locally_and_on_ray(hub, texts_file, tmp_path):
    path, texts = texts_file
    want = SentenceEncoder(hub).encode(texts)
    st_embed("hf://" + REPO, path, "-o", tmp_path / "local", "-q")
    np.testing.assert_allclose(embeddings(tmp_path / "local")[1], want, atol=1e-6)
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'st-runtime[ray]'")
    st_embed(REPO, path, "-o", tmp_path / "ray", "-q", "--ray", "--num-workers", "1", "--revision", "main")
    np.testing.assert_array_equal(embeddings(tmp_path / "ray")[1], embeddings(tmp_path / "local")[1])


def test_an_actor_resolves_the_name_into_its_own_nodes_cache(hub, monkeypatch, tmp_path):
    """What a Ray actor on another node does: the name and commit in, this node's (empty) cache filled."""
    pytest.importorskip("pyarrow")
    from st_runtime.ray import EmbedBatch

    monkeypatch.setenv("ST_RUNTIME_CACHE", str(tmp_path / "other-node"))
    actor = EmbedBatch(REPO, revision=COMMIT, threads=1)
    assert actor.model.path == tmp_path / "other-node" / "models--test-org--tiny-bert-st-runtime" / COMMIT / "hub-all"
    assert cache.complete(actor.model.path)
    np.testing.assert_allclose(actor.embed(TEXTS[:3]), SentenceEncoder(hub).encode(TEXTS[:3]), atol=1e-6)
