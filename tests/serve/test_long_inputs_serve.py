"""st-serve's long inputs: --long-inputs sets the default, a request's long_inputs (or truncate) overrides it; a
chunked text gives the in-process result, its windows' tokens count in usage, "error" is a 413 naming the count."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from helpers import assert_parity

from exporters.battery import long_text
from st_runtime import SentenceEncoder
from st_runtime.chunking import DEFAULT_CHUNK_OVERLAP


def post(server, path: str, payload) -> httpx.Response:
    return httpx.post(server.url + path, json=payload, timeout=60)


def test_long_inputs_default_and_per_request(start_server, fixtures_dir):
    folder = fixtures_dir / "bert" / "export"
    server = start_server(folder, "--long-inputs", "chunk")
    enc = SentenceEncoder(folder, threads=1)
    texts = ["How big is London", long_text(150), "a", long_text(60)]
    # the server's default: chunk
    r = post(server, "/embed", {"inputs": texts})
    assert r.status_code == 200, r.text
    chunked = enc.encode(texts, long_inputs="chunk")
    assert_parity(chunked, np.asarray(r.json(), dtype=np.float32))
    unlimited = post(server, "/embed", {"inputs": texts, "truncate": False}).json()  # not truncated: chunked here
    assert_parity(chunked, np.asarray(unlimited, dtype=np.float32))
    # usage counts every window's tokens
    name = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    o = post(server, "/v1/embeddings", {"input": texts, "model": name}).json()
    _items, chunks = enc.kind.long_call(enc, texts, None, "chunk", DEFAULT_CHUNK_OVERLAP)
    short = [len(enc.tokenizer.encode(t).ids) for t in texts]
    want = sum(short[i] if n < 0 else n for i, n in zip(chunks.groups, chunks.tokens))
    assert o["usage"]["prompt_tokens"] == want > 150
    assert_parity(chunked, np.asarray([d["embedding"] for d in o["data"]], dtype=np.float32))
    # per request: truncate, error, and a contradiction
    truncated = post(server, "/embed", {"inputs": texts, "truncate": True}).json()
    assert_parity(enc.encode(texts), np.asarray(truncated, dtype=np.float32))
    assert post(server, "/embed", {"inputs": texts, "long_inputs": "truncate"}).json() == truncated
    err = post(server, "/embed", {"inputs": texts, "long_inputs": "error"})
    n = len(enc.text_tower.tokenize([texts[1]], truncate=False)[0])
    assert err.status_code == 413 and f"input 1 has {n} tokens, over the limit of 48 tokens" in err.json()["error"]
    bad = post(server, "/embed", {"inputs": texts, "truncate": True, "long_inputs": "chunk"})
    assert bad.status_code == 422 and "contradicts" in bad.json()["error"]
    bad = post(server, "/embed", {"inputs": texts, "long_inputs": "split"})
    assert bad.status_code == 422
    overlap = post(server, "/embed", {"inputs": texts[1:2], "chunk_overlap": 8})
    want = enc.encode(texts[1:2], long_inputs="chunk", chunk_overlap=8)
    assert_parity(want, np.asarray(overlap.json(), dtype=np.float32))


def test_rerank_and_embed_sparse_chunk(start_server, tmp_path):
    """The other kinds through the server: MaxP scores and max-pooled SPLADE weights as in process."""
    from helpers import needs_export

    if needs_export.args[0]:
        pytest.skip(needs_export.kwargs["reason"])
    from tiny_models import build_tiny_cross_encoder, build_tiny_sparse_encoder

    from exporters import export_model
    from st_runtime import CrossEncoder, SparseEncoder

    ce = export_model(str(build_tiny_cross_encoder(tmp_path / "ce", "bert")), output=tmp_path / "ce-out",
                      variants=[], log=lambda _m: None)  # fmt: skip
    sp = export_model(str(build_tiny_sparse_encoder(tmp_path / "sp", "bert")), output=tmp_path / "sp-out",
                      variants=[], log=lambda _m: None)  # fmt: skip
    server = start_server(ce, sp, "--served-model-name", "ce", "--served-model-name", "sp")
    docs = ["London is big", long_text(120), long_text(60)]
    r = post(server, "/rerank", {"query": "How big is London", "texts": docs, "model": "ce", "long_inputs": "chunk",
                                 "raw_scores": True})  # fmt: skip
    assert r.status_code == 200, r.text
    want = CrossEncoder(ce, threads=1).logits([("How big is London", d) for d in docs], long_inputs="chunk")[:, 0]
    got = {x["index"]: x["score"] for x in r.json()}
    np.testing.assert_allclose([got[i] for i in range(len(docs))], want, atol=1e-5)
    r = post(server, "/embed_sparse", {"inputs": docs, "model": "sp", "truncate": False, "long_inputs": "chunk"})
    assert r.status_code == 200, r.text
    for row, emb in zip(r.json(), SparseEncoder(sp, threads=1).encode(docs, long_inputs="chunk")):
        assert [x["index"] for x in row] == emb.indices.tolist()
        np.testing.assert_allclose([x["value"] for x in row], emb.values, atol=1e-5)
    assert post(server, "/rerank", {"query": "q", "texts": docs, "model": "ce", "truncate": False}).status_code == 413
