"""Multi-vector (late-interaction, ColBERT) models: tiny random MultiVectorEncoders in sentence-transformers' native
layout, PyLate v3's and Stanford-NLP ColBERT's, exported and run by st_runtime.MultiVectorEncoder, against
sentence-transformers' encode_query / encode_document (the same kept tokens, every vector at cosine >= 0.99999,
batch size 1 and one mixed batch) and its MaxSim scores (within 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import HAVE_EXPORT

import st_runtime

pytestmark = pytest.mark.skipif(not HAVE_EXPORT, reason="needs the export extra")

QUERIES = ["a", "what is the capital of France?", "How big is London", "vitamin d deficiency " * 12, "Москва"]
DOCUMENTS = [
    "Paris is the capital, and the largest city, of France!",
    "x",
    "London has 9,787,426 inhabitants at the 2011 census; it is big.",
    "Vitamin D deficiency (hypovitaminosis D) causes bone softening... " * 6,  # past document_length
    "!?.,;",  # punctuation only: every token but [CLS], [SEP] and the prefix is in the skiplist
    "東京は日本の首都です。",
]
# layout -> build_tiny_multi_vector options
LAYOUTS = {
    "native-fixed": {
        "layout": "native",
        "expansion": "fixed",
        "prompts": {"query": "query: ", "document": "passage: "},
    },
    "native-min-pooled": {"layout": "native", "expansion": "min", "pool_factor": 2.0},
    "native-no-expansion": {"layout": "native", "expansion": None, "skiplist": False},
    "pylate-v3": {"layout": "pylate-v3"},
    "pylate-v3-modernbert": {"layout": "pylate-v3", "arch": "modernbert"},  # GTE-ModernColBERT's layout
    "stanford": {"layout": "stanford"},
}

INT8_LAYOUT = "stanford"  # exported with its int8 variant too
OPT_LAYOUTS = ("native-fixed", "pylate-v3-modernbert")  # exported with their fused (opt) variant too


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """layout -> (sentence-transformers folder, st-export folder), built on first use."""
    from tiny_models import build_tiny_multi_vector

    from exporters import export_model

    root = tmp_path_factory.mktemp("multi-vector")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(layout: str) -> tuple[Path, Path]:
        if layout not in cache:
            src = build_tiny_multi_vector(root / layout, **LAYOUTS[layout])
            variants = ["int8"] if layout == INT8_LAYOUT else ["opt"] if layout in OPT_LAYOUTS else []
            out = export_model(str(src), output=root / f"onnx-{layout}", variants=variants, log=lambda _m: None)
            cache[layout] = (src, out)
        return cache[layout]

    return get


def _reference(src: Path):
    from sentence_transformers import MultiVectorEncoder

    return MultiVectorEncoder(str(src), device="cpu")


def _assert_same(got: list[np.ndarray], want: list, what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w, dtype=np.float32)
        assert g.dtype == np.float32 and g.shape == w.shape, (
            f"{what} {i}: kept {g.shape}, sentence-transformers {w.shape}"
        )
        cos = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
        assert cos.min() >= 0.99999, f"{what} {i}: min cosine {cos.min()}"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_queries_and_documents_match_sentence_transformers(built, layout):
    src, out = built(layout)
    ref = _reference(src)
    model = st_runtime.load(out, threads=1)
    assert isinstance(model, st_runtime.MultiVectorEncoder)
    want_q = ref.encode_query(QUERIES, convert_to_numpy=True)
    want_d = ref.encode_document(DOCUMENTS, convert_to_numpy=True)
    for batch_size in (1, None):  # one at a time, and the queries (documents) in one mixed batch
        _assert_same(model.encode_query(QUERIES, batch_size=batch_size), want_q, f"{layout} query")
        _assert_same(model.encode_document(DOCUMENTS, batch_size=batch_size), want_d, f"{layout} document")
    # encode without a task (masked as a document, no prompt, max_seq_length), and a single string
    _assert_same(model.encode(DOCUMENTS), ref.encode(DOCUMENTS, convert_to_numpy=True), f"{layout} encode")
    one = model.encode_query(QUERIES[1])
    assert isinstance(one, np.ndarray) and one.ndim == 2
    _assert_same([one], [want_q[1]], f"{layout} single query")
    # MaxSim as sentence-transformers scores it
    got = model.similarity(model.encode_query(QUERIES), model.encode_document(DOCUMENTS))
    want = ref.similarity(want_q, want_d).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    pairwise = model.similarity_pairwise(model.encode_query(QUERIES[:2]), model.encode_document(DOCUMENTS[:2]))
    np.testing.assert_allclose(pairwise, np.diag(want[:2, :2]), atol=1e-5, rtol=0)


def test_queries_and_documents_share_graph_batches(built):
    """The server's batcher runs queries and documents of several requests as one set of graph batches: each keeps
    the rows its task counts, whatever its company (the graph expands every row; documents drop the slots)."""
    _src, out = built("stanford")
    model = st_runtime.load(out, threads=1)
    kind, tower = model.kind, model.text_tower
    q = kind.prepare(model, QUERIES, task="query")
    d = kind.prepare(model, DOCUMENTS, task="document")
    encodings = tower.tokenize(q.texts, q.max_length) + tower.tokenize(d.texts, d.max_length)
    rows = kind.new_rows(model, len(encodings))
    tower.embed_encoded(encodings, rows, batch_size=len(encodings), max_length=tower.max_seq_length, pairs=False)
    got_q = kind.finish(model, kind.split(rows, 0, len(QUERIES)), task="query")
    got_d = kind.finish(model, kind.split(rows, len(QUERIES), len(encodings)), task="document")
    for got, want in ((got_q, model.encode_query(QUERIES)), (got_d, model.encode_document(DOCUMENTS))):
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_expansion_and_skiplist_keep_the_tokens_sentence_transformers_keeps(built):
    _src, out = built("stanford")
    model = st_runtime.load(out, threads=1)
    manifest = json.loads((out / "manifest.json").read_text())
    block = manifest["multi_vector"]
    assert block["expansion"]["length"] == 16 and block["skiplist_tasks"] == ["document"]
    # every query is exactly the expansion length ([MASK]-padded or truncated), as classic ColBERT
    assert {q.shape[0] for q in model.encode_query(QUERIES)} == {16}
    # punctuation is dropped from documents, not from queries
    punct = model.encode_document("!?.,;")
    assert punct.shape[0] == 3  # [CLS] [unused1] [SEP]
    assert model.encode_query("!?.,;").shape[0] == 16
    # a truncated document keeps document_length tokens minus its skiplisted ones
    assert model.encode_document(DOCUMENTS[3]).shape[0] <= 40


@pytest.mark.parametrize("layout", OPT_LAYOUTS)
def test_the_fused_variant_passes_its_gate_and_matches(built, layout):
    src, out = built(layout)
    variants = json.loads((out / "manifest.json").read_text())["towers"]["text"]["variants"]
    assert variants["opt"]["status"] == "passed", variants["opt"]["validation"]["summary"]
    assert variants["opt"]["validation"]["min_cosine"] >= 0.99999
    ref = _reference(src)
    model = st_runtime.load(out, variant="opt", threads=1)
    _assert_same(model.encode_query(QUERIES), ref.encode_query(QUERIES, convert_to_numpy=True), f"{layout} opt query")


def test_rank_orders_documents_by_maxsim(built):
    src, out = built("pylate-v3")
    ref = _reference(src)
    model = st_runtime.load(out, threads=1)
    ranked = model.rank(QUERIES[1], DOCUMENTS, return_documents=True, top_k=4)
    want = ref.similarity(ref.encode_query([QUERIES[1]]), ref.encode_document(DOCUMENTS)).numpy()[0]
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-want, kind="stable")[:4])
    assert [r["text"] for r in ranked] == [DOCUMENTS[r["corpus_id"]] for r in ranked]
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(want)[::-1][:4], atol=1e-5)


def test_truncate_dim_and_normalize_follow_sentence_transformers(built):
    src, out = built("native-no-expansion")
    ref = _reference(src)
    model = st_runtime.load(out, threads=1)
    got = model.encode_document(DOCUMENTS, truncate_dim=8)
    _assert_same(got, ref.encode_document(DOCUMENTS, truncate_dim=8, convert_to_numpy=True), "truncate_dim")
    assert all(np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5) for v in got)
    with pytest.raises(ValueError, match="truncate_dim"):
        model.encode_document(DOCUMENTS, truncate_dim=0)
    with pytest.raises(ValueError, match="task"):
        model.encode(DOCUMENTS, task="passage")
    with pytest.raises(ValueError, match="cuda_graphs"):
        st_runtime.MultiVectorEncoder(out, cuda_graphs=True)


def test_token_pooling_of_the_model_and_per_call(built):
    _src, out = built("native-min-pooled")
    model = st_runtime.load(out, threads=1)
    pooled = model.encode_document(DOCUMENTS)
    unpooled = model.encode_document(DOCUMENTS, token_pooling=False)
    assert all(p.shape[0] <= u.shape[0] for p, u in zip(pooled, unpooled))
    assert any(p.shape[0] < u.shape[0] for p, u in zip(pooled, unpooled))
    halved = model.encode_document(DOCUMENTS, token_pooling={"pool_factor": 4.0, "normalize_embeddings": True})
    assert sum(h.shape[0] for h in halved) < sum(p.shape[0] for p in pooled)
    # queries are not pooled (the pooling's tasks are documents)
    assert [q.shape for q in model.encode_query(QUERIES)] == [
        q.shape for q in model.encode_query(QUERIES, token_pooling=False)
    ]


def test_int8_keeps_the_maxsim_rankings(built):
    _src, out = built(INT8_LAYOUT)
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["towers"]["text"]["variants"].get("int8") or manifest["export"]["rejected_variants"]["int8"]
    report = int8["validation"]
    assert report["ranking_identical"] is True and report["min_cosine"] >= 0.99, report["summary"]
    model = st_runtime.load(out, variant="int8", threads=1)
    assert model.variant == "int8"


def test_legacy_folders_are_recognised_as_multi_vector(built, tmp_path):
    from tiny_models import build_tiny_multi_vector

    from exporters.errors import UnsupportedModelError
    from exporters.st_model import choose_task

    for layout in ("pylate-v3", "stanford"):
        src, _out = built(layout)
        assert choose_task(src) == "multi-vector"
    attend = build_tiny_multi_vector(tmp_path / "attend", attend=True)
    from exporters import export_model

    with pytest.raises(UnsupportedModelError, match="attend=True"):
        export_model(str(attend), output=tmp_path / "out", variants=[], log=lambda _m: None)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- st-serve
@pytest.fixture(scope="module")
def server(built):
    """st-serve's app on a real uvicorn in this process, serving the pylate-v3 export, on 127.0.0.1."""
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    import socket
    import threading
    import time

    import uvicorn

    from st_runtime.serve.app import ServeConfig, create_app

    _src, out = built("pylate-v3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(ServeConfig([out], threads=1)), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
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
        raise AssertionError("st-serve did not become ready in 60 s")
    yield url, st_runtime.load(out, threads=1)
    srv.should_exit = True
    thread.join(30)


def test_served_vectors_equal_in_process_ones(server):
    import base64

    import httpx

    url, model = server
    queries, documents = model.encode_query(QUERIES), model.encode_document(DOCUMENTS)
    r = httpx.post(url + "/v1/embeddings", json={"input": QUERIES, "task": "query"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    for item, want in zip(body["data"], queries):
        np.testing.assert_allclose(np.array(item["embedding"], np.float32), want, atol=1e-6)
    assert body["usage"]["prompt_tokens"] > 0
    r = httpx.post(url + "/embeddings", json={"input": DOCUMENTS, "encoding_format": "base64"}, timeout=60)
    for item, want in zip(r.json()["data"], documents):  # documents by default
        got = np.frombuffer(base64.b64decode(item["embedding"]), "<f4").reshape(-1, want.shape[1])
        np.testing.assert_allclose(got, want, atol=1e-6)
    for route in ("/embed", "/embed_all"):
        got = httpx.post(url + route, json={"inputs": DOCUMENTS, "task": "document"}, timeout=60).json()
        assert [np.array(g).shape for g in got] == [d.shape for d in documents]
        for g, want in zip(got, documents):
            np.testing.assert_allclose(np.array(g, np.float32), want, atol=1e-6)
    cut = httpx.post(url + "/embed", json={"inputs": QUERIES[1], "task": "query", "dimensions": 8}, timeout=60).json()
    np.testing.assert_allclose(np.array(cut[0], np.float32), model.encode_query(QUERIES[1], truncate_dim=8), atol=1e-6)


def test_served_rerank_scores_by_maxsim(server):
    import httpx

    url, model = server
    got = httpx.post(url + "/rerank", json={"query": QUERIES[1], "texts": DOCUMENTS, "return_text": True}, timeout=60)
    assert got.status_code == 200, got.text
    want = model.rank(QUERIES[1], DOCUMENTS, return_documents=True)
    assert [g["index"] for g in got.json()] == [w["corpus_id"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got.json()], [w["score"] for w in want], atol=1e-5)
    assert [g["text"] for g in got.json()] == [w["text"] for w in want]


def test_served_client_mistakes_are_422(server):
    import httpx

    url, _model = server
    for route, body in (
        ("/embed", {"inputs": ["a"], "task": "passage"}),
        ("/embed", {"inputs": ["a"], "dimensions": 999}),
        ("/v1/embeddings", {"input": [1, 2]}),
        ("/embed_sparse", {"inputs": ["a"]}),  # a route this kind does not answer
    ):
        r = httpx.post(url + route, json=body, timeout=30)
        assert r.status_code == 422, (route, r.status_code, r.text)
    info = httpx.get(url + "/info", timeout=30).json()
    assert info["st_runtime"]["task"] == "multi-vector" and "/embed_all" in info["st_runtime"]["routes"]


# ---------------------------------------------------------------------------------------------------- st-embed
def test_st_embed_writes_token_vector_lists_and_counts(built, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from st_runtime.bulk.cli import main

    _src, out = built("pylate-v3")
    model = st_runtime.load(out, threads=1)
    rows = [{"id": i, "text": t} for i, t in enumerate(DOCUMENTS)] + [{"id": 99, "text": None}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = [str(out), str(src), "-o", str(tmp_path / "out"), "--threads", "1", "--quiet", "--id-column", "id"]
    assert main([*args, "--skip-invalid"]) == 0
    table = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet"))[0])
    pa = pytest.importorskip("pyarrow")
    assert table.schema.field("embedding").type == pa.list_(pa.list_(pa.float32(), 24))
    want = model.encode_document(DOCUMENTS)
    got = table.column("embedding").to_pylist()
    assert table.column("tokens").to_pylist() == [len(w) for w in want] + [None]
    assert table.column("id").to_pylist() == [*range(len(DOCUMENTS)), 99]
    assert got[-1] is None
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g, np.float32), w, atol=1e-6)
    # a resumed run finds the job complete (the part is not written again); another precision is refused
    part = sorted((tmp_path / "out").glob("part-*.parquet"))[0]
    before = part.stat().st_mtime_ns
    assert main([*args, "--skip-invalid"]) == 0
    assert part.stat().st_mtime_ns == before
    assert main([*args, "--skip-invalid", "--precision", "int8", "-o", str(tmp_path / "out8")]) != 0


def test_ray_refuses_per_token_rows_and_st_embed_takes_them(built):
    from st_runtime import kinds
    from st_runtime.errors import ModelKindError

    _src, out = built("pylate-v3")
    with pytest.raises(ModelKindError, match="fixed-width"):
        kinds.bulk_kind(out)  # st_runtime.ray and st-embed --ray
    assert kinds.bulk_kind(out, tokens=True).task == "multi-vector"
