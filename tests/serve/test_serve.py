"""st-serve end to end: the official openai client and httpx against a real server subprocess."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import COMMON_WORDS, TEXTS, assert_parity

from st_runtime import SentenceEncoder


@pytest.fixture(scope="module")
def local(served):
    """In-process encoders of the served folders: what the server must reproduce."""
    return {name: SentenceEncoder(folder, threads=1) for name, folder in served.folders.items()}


def post(server, path: str, payload, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=payload, timeout=60, **kwargs)


# ------------------------------------------------------------------------------------------------ parity
def test_openai_client_gets_in_process_vectors(served, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    ref = local["bert"].encode(TEXTS)
    # the client asks for base64 by default and decodes it; "float" is the other format
    for fmt in ("base64", "float"):
        kwargs = {} if fmt == "base64" else {"encoding_format": "float"}
        resp = client.embeddings.create(input=TEXTS, model="bert", **kwargs)
        got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)
        assert_parity(ref, got)
        assert resp.model == "bert"
    tokens = sum(len(e.ids) for e in local["bert"].text_tower.tokenize(TEXTS))
    assert resp.usage.prompt_tokens == tokens == resp.usage.total_tokens
    one = client.embeddings.create(input="a", model="bert", encoding_format="float")  # one text, one token
    assert_parity(local["bert"].encode(["a"]), np.array([one.data[0].embedding], dtype=np.float32))
    assert [m.id for m in client.models.list()] == ["bert", "clip"]


def test_openai_dimensions_cut_and_renormalize(served, local):
    ref = local["bert"].encode(TEXTS[:3])[:, :8]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)  # the model normalizes, so the cut is normalized again
    r = post(
        served, "/v1/embeddings", {"input": TEXTS[:3], "model": "bert", "dimensions": 8, "encoding_format": "float"}
    )
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_base64_is_little_endian_float32(served, local):
    r = post(served, "/v1/embeddings", {"input": ["How big is London"], "model": "bert", "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert_parity(local["bert"].encode(["How big is London"]), vec[None])


def test_tei_embed_shapes_and_options(served, local):
    ref = local["clip"].encode(TEXTS)  # CLIP's text tower does not normalize: /embed normalizes by default
    r = post(served, "/embed", {"inputs": TEXTS, "model": "clip"})
    got = np.array(r.json(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert_parity(ref, got)
    raw = np.array(post(served, "/embed", {"inputs": TEXTS, "model": "clip", "normalize": False}).json(), np.float32)
    assert_parity(ref, raw)
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-5)
    single = post(served, "/embed", {"inputs": "How big is London"}).json()  # default model: the first served
    assert len(single) == 1 and len(single[0]) == local["bert"].get_sentence_embedding_dimension()


def test_long_texts_truncate_left_or_right(served, local):
    long = " ".join(f"w{i}" for i in range(300))
    right = np.array(post(served, "/embed", {"inputs": [long]}).json(), np.float32)
    assert_parity(local["bert"].encode([long]), right)
    left = np.array(post(served, "/embed", {"inputs": [long], "truncation_direction": "Left"}).json(), np.float32)
    assert float(right[0] @ left[0]) < 0.9999  # the other end of the text was kept
    tower = local["bert"].text_tower
    enc = tower.tokenize([long], direction="left")
    out = np.empty((1, local["bert"].get_sentence_embedding_dimension()), np.float32)
    tower.embed_encoded(enc, out, max_length=tower.max_seq_length, pairs=False)
    assert_parity(out / np.linalg.norm(out, axis=1, keepdims=True), left)


def test_prompt_name_and_tokenize(served, local):
    r = post(served, "/embed", {"inputs": ["x"], "prompt_name": "query"})
    assert r.status_code == 200
    toks = post(served, "/tokenize", {"inputs": ["How big is London"]}).json()
    ids = local["bert"].text_tower.tokenize(["How big is London"])[0].ids
    assert [t["id"] for t in toks[0]] == ids
    assert toks[0][0]["special"] and not toks[0][1]["special"]
    assert "How big is London"[toks[0][1]["start"] : toks[0][1]["stop"]] == toks[0][1]["text"]


def test_clip_images_as_data_uris(served, local):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 60), (32, 32))]
    uris = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    payload = {"input": [uris[0], "a photo of a cat", uris[1]], "model": "clip", "encoding_format": "float"}
    r = post(served, "/v1/embeddings", payload)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    ref = local["clip"].encode([images[0], "a photo of a cat", images[1]])
    assert_parity(ref, got)
    bad = post(served, "/v1/embeddings", {"input": ["data:image/png;base64,AAAA"], "model": "clip"})
    assert bad.status_code == 422 and "input[0]" in bad.json()["error"]["message"]
    cohere = post(served, "/v2/embed", {"images": uris, "model": "clip", "embedding_types": ["float"]})
    assert_parity(local["clip"].encode(images), np.array(cohere.json()["embeddings"]["float"], np.float32))
    text_as_image = post(served, "/v2/embed", {"images": ["a cat"], "model": "clip"})
    assert text_as_image.status_code == 422 and "'images[0]'" in text_as_image.json()["message"]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "path,payload,status,needle",
    [
        ("/embed", b"{not json", 422, "not valid JSON"),
        ("/embed", b"[1, 2]", 422, "JSON object"),
        ("/embed", {"inputs": []}, 422, "'inputs' is an empty list"),
        ("/embed", {"inputs": 3}, 422, "'inputs' must be a string or a list of strings"),
        ("/embed", {"inputs": ["a", 5]}, 422, "'inputs[1]'"),
        ("/embed", {"text": "a"}, 422, "'inputs' is required"),
        ("/embed", {"inputs": "a", "normalize": "yes"}, 422, "'normalize'"),
        ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, "'prompt_name' 'nope'"),
        ("/embed", {"inputs": "a", "dimensions": 10_000}, 422, "'dimensions' must be between 1 and"),
        ("/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "'truncation_direction'"),
        ("/embed", {"inputs": "a", "model": "nope"}, 404, "served models: ['bert', 'clip']"),
        ("/v1/embeddings", {"input": [[1, 2, 10**9]], "model": "bert"}, 422, "'input[0][2]' is 1000000000, not a"),
        ("/v1/embeddings", {"input": [[]], "model": "bert"}, 422, "'input[0]' is an empty list of token ids"),
        ("/tokenize", {"inputs": [[1, 2]]}, 422, "token arrays are not accepted here"),
        ("/v1/embeddings", {"input": "a"}, 422, "'model' is required"),
        ("/v1/embeddings", {"input": "a", "model": "bert", "encoding_format": "int8"}, 422, "'encoding_format'"),
        ("/v1/embeddings", {"input": "a", "model": "gpt"}, 404, "served models: ['bert', 'clip']"),
        ("/v1/embeddings", {"input": ["data:image/png;base64,AAAA"], "model": "bert"}, 200, ""),  # text to bert
    ],
)
def test_bad_requests_name_the_field(served, path, payload, status, needle):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = httpx.post(served.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    if needle:
        body = r.json()
        message = body["error"]["message"] if path.startswith("/v1") else body["error"]
        assert needle in message, message


def test_truncate_false_refuses_long_text_with_the_limit(served):
    long = " ".join(f"w{i}" for i in range(300))
    r = post(served, "/embed", {"inputs": ["short", long], "truncate": False})
    assert r.status_code == 413
    assert "input 1 has" in r.json()["error"] and "limit of 48 tokens" in r.json()["error"]
    assert post(served, "/embed", {"inputs": ["short"], "truncate": False}).status_code == 200


def test_limits_auth_and_overload(start_server, fixtures_dir):
    folder = fixtures_dir / "bert" / "export"
    server = start_server(
        folder,
        "--api-key",
        "s3cret",
        "--max-client-batch-size",
        "4",
        "--payload-limit",
        "4000",
        "--max-concurrent-requests",
        "2",
    )
    auth = {"Authorization": "Bearer s3cret"}
    assert post(server, "/embed", {"inputs": "a"}).status_code == 401
    assert post(server, "/embed", {"inputs": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(server, "/embed", {"inputs": "a"}, headers=auth).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    assert httpx.get(server.url + "/").status_code == 200 and httpx.get(server.url + "/ping").status_code == 200
    assert post(server, "/", {"inputs": "a"}).status_code == 401  # POST / is the model's route: it needs the key
    assert post(server, "/vertex", {"instances": [{"inputs": "a"}]}).status_code == 401
    assert post(server, "/", {"inputs": "a"}, headers=auth).status_code == 200
    too_many = post(server, "/embed", {"inputs": ["a"] * 5}, headers=auth)
    assert too_many.status_code == 413 and "--max-client-batch-size of 4" in too_many.json()["error"]
    too_big = post(server, "/embed", {"inputs": ["word " * 1000]}, headers=auth)
    assert too_big.status_code == 413 and "payload limit" in too_big.json()["error"]
    # more requests in flight than --max-concurrent-requests: some get 429 with Retry-After
    statuses: list[httpx.Response] = []
    lock = threading.Lock()

    def hammer():
        with httpx.Client(timeout=60) as client:
            for _ in range(6):
                r = client.post(server.url + "/embed", json={"inputs": ["word " * 150] * 4}, headers=auth)
                with lock:
                    statuses.append(r)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = {r.status_code for r in statuses}
    assert codes <= {200, 429} and 429 in codes and 200 in codes, codes
    assert all(r.headers.get("retry-after") == "1" for r in statuses if r.status_code == 429)


def test_health_is_503_until_loaded(fixtures_dir):
    from starlette.testclient import TestClient

    from st_runtime.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(folders=[fixtures_dir / "bert" / "export"]))
    client = TestClient(app)  # without `with`: the app has not started, so nothing is loaded
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
    assert client.post("/embed", json={"inputs": "a"}).status_code == 503
    with TestClient(app) as started:
        deadline = time.monotonic() + 60
        while started.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert started.post("/embed", json={"inputs": "a"}).status_code == 200


def test_served_sessions_spin_briefly_and_not_after_a_run(fixtures_dir):
    """st-serve's onnxruntime threads spin at most SERVER_SPIN_US between operators and stop when a run ends (the
    event loop and the tokenizer need the cores); in-process encode keeps onnxruntime's default spinning."""
    from starlette.testclient import TestClient

    from st_runtime import SentenceEncoder
    from st_runtime.serve.app import ServeConfig, create_app
    from st_runtime.session import SERVER_SPIN_US

    app = create_app(ServeConfig(folders=[fixtures_dir / "bert" / "export"], threads=2))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (served,) = app.state.models.values()
        options = served.model.text_tower.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.spin_duration_us") == str(SERVER_SPIN_US)
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert client.post("/embed", json={"inputs": "a"}).status_code == 200
    local = SentenceEncoder(fixtures_dir / "bert" / "export").text_tower.session.get_session_options()
    with pytest.raises(Exception, match="force_spinning_stop"):  # not set: onnxruntime's default
        local.get_session_config_entry("session.force_spinning_stop")


def test_a_model_that_fails_to_load_exits_1(start_server, fixtures_dir, tmp_path):
    import shutil

    folder = shutil.copytree(fixtures_dir / "bert" / "export", tmp_path / "broken")
    (folder / "model.onnx").write_bytes(b"\0" * (folder / "model.onnx").stat().st_size)
    server = start_server(folder, "--variant", "fp32", ready=False)
    assert server.proc.wait(60) == 1
    assert "loading the models failed" in server.output()


def test_an_inference_failure_fails_that_batch_only(start_server, fixtures_dir, tmp_path):
    """A token id past the graph's vocabulary makes onnxruntime fail (Gather out of range): that request gets
    500, and the next requests succeed."""
    import hashlib
    import shutil

    folder = shutil.copytree(fixtures_dir / "bert" / "export", tmp_path / "boom")
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"])
    tok["added_tokens"].append(
        {
            "id": vocab + 1000,
            "content": "[BOOM]",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "tokenizer.json").read_bytes()
    manifest["files"]["tokenizer.json"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    server = start_server(folder)
    bad = post(server, "/embed", {"inputs": ["fine", "this goes [BOOM]"]})
    assert bad.status_code == 500 and bad.json()["error_type"] == "Backend", bad.text
    assert post(server, "/embed", {"inputs": ["fine"]}).status_code == 200
    openai_bad = post(server, "/v1/embeddings", {"input": "[BOOM]", "model": "source"})
    assert openai_bad.status_code == 500 and openai_bad.json()["error"]["type"] == "server_error"


# ------------------------------------------------------------------------------------------------ load
def test_64_concurrent_clients_each_get_their_own_rows(served, local):
    words = COMMON_WORDS
    rng = random.Random(1)
    errors: list[str] = []

    def client_loop(seed: int):
        r = random.Random(seed)
        with httpx.Client(timeout=120) as client:
            for _ in range(4):
                texts = [" ".join(r.choices(words, k=r.randint(1, 70))) for _ in range(r.randint(1, 6))]
                resp = client.post(served.url + "/embed", json={"inputs": texts, "normalize": False})
                if resp.status_code != 200:
                    errors.append(f"{resp.status_code}: {resp.text}")
                    continue
                got = np.array(resp.json(), dtype=np.float32)
                try:
                    assert_parity(local["bert"].encode(texts), got)
                except AssertionError as exc:
                    errors.append(str(exc))

    threads = [threading.Thread(target=client_loop, args=(rng.randrange(1 << 30),)) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    metrics = httpx.get(served.url + "/metrics").text
    assert 'st_request_count_total{route="/embed",status="200"}' in metrics
    assert "st_batch_size_bucket" in metrics and 'phase="queue"' in metrics and "st_queue_size" in metrics
    # requests were merged: fewer batches than requests
    batches = _metric(metrics, 'st_batch_size_count{model="bert"}')
    requests = _metric(metrics, 'st_request_items_count{model="bert"}')
    assert 0 < batches < requests, (batches, requests)


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_a_client_that_leaves_has_its_items_dropped(start_server, fixtures_dir):
    server = start_server(fixtures_dir / "bert" / "export", "--max-batch-tokens", "2048")
    busy = {"inputs": ["word " * 60] * 256, "normalize": False}
    results = []

    def busy_client():  # 12 of these keep about 12 x 256 texts queued ahead of the request that leaves
        for _ in range(4):
            results.append(post(server, "/embed", busy))

    threads = [threading.Thread(target=busy_client) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/embed", json={"inputs": ["gone"] * 7}, timeout=0.05)
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 48
    time.sleep(0.5)
    metrics = httpx.get(server.url + "/metrics").text
    assert _metric(metrics, 'st_batch_size_sum{model="source"}') == 48 * 256  # the 7 texts never ran


def test_sigterm_under_load_answers_every_accepted_request(start_server, fixtures_dir):
    server = start_server(fixtures_dir / "bert" / "export")
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop():
        with httpx.Client(timeout=60) as client:
            for _ in range(200):
                if stop.is_set():
                    return
                try:
                    r = client.post(server.url + "/embed", json={"inputs": ["word " * 40] * 16})
                except httpx.TransportError:
                    return  # not accepted: the server had stopped listening
                if r.status_code == 200:
                    answered.append(len(r.json()))
                else:
                    failures.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=loop) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    rc = server.stop(timeout=30)
    stop.set()
    for t in threads:
        t.join(60)
    assert rc == 0, server.output()
    assert time.monotonic() - t0 < 30
    assert not failures, failures[:3]
    assert answered and all(n == 16 for n in answered)


def test_cli_refuses_bad_arguments_before_starting(tmp_path):
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run(
            [sys.executable, "-m", "st_runtime.serve.cli", *map(str, args)], capture_output=True, text=True, timeout=60
        )

    r = serve(tmp_path / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = serve(tmp_path, "--threads", "0")
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_rerank_in_teis_shape(start_server, fixtures_dir, tmp_path):
    """A cross-encoder beside an embedding model: /rerank ranks as CrossEncoder.rank does."""
    from helpers import needs_export

    if needs_export.args[0]:
        pytest.skip(needs_export.kwargs["reason"])
    from tiny_models import build_tiny_cross_encoder

    from exporters import export_model
    from st_runtime import CrossEncoder

    src = build_tiny_cross_encoder(tmp_path / "ce-src", "bert")
    folder = export_model(str(src), output=tmp_path / "ce", variants=[], log=lambda _m: None)
    server = start_server(fixtures_dir / "bert" / "export", folder, "--served-model-name", "emb",
                          "--served-model-name", "reranker")  # fmt: skip
    docs = ["London has 9,787,426 inhabitants", "Paris is in France", "cats", "How big is London"]
    r = post(server, "/rerank", {"query": "How big is London", "texts": docs, "model": "reranker", "return_text": True})
    assert r.status_code == 200, r.text
    want = CrossEncoder(folder).rank("How big is London", docs, return_documents=True)
    assert [x["index"] for x in r.json()] == [w["corpus_id"] for w in want]
    assert [x["text"] for x in r.json()] == [w["text"] for w in want]
    np.testing.assert_allclose([x["score"] for x in r.json()], [w["score"] for w in want], atol=1e-6)
    raw = post(
        server, "/rerank", {"query": "How big is London", "texts": docs, "model": "reranker", "raw_scores": True}
    )
    logits = CrossEncoder(folder).logits([("How big is London", d) for d in docs])[:, 0]
    np.testing.assert_allclose(
        sorted((x["score"] for x in raw.json()), reverse=True), sorted(logits, reverse=True), atol=1e-5
    )
    wrong = post(server, "/rerank", {"query": "q", "texts": ["a"], "model": "emb"})
    assert wrong.status_code == 422 and "/embed" in wrong.json()["error"]
    wrong = post(server, "/embed", {"inputs": ["a"], "model": "reranker"})
    assert wrong.status_code == 422 and "/rerank" in wrong.json()["error"]
    assert post(server, "/rerank", {"query": 5, "texts": ["a"], "model": "reranker"}).status_code == 422
    info = httpx.get(server.url + "/info", params={"model": "reranker"}).json()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}}}


def test_embed_sparse_in_teis_shape(start_server, fixtures_dir, tmp_path):
    """A SPLADE model beside an embedding model: /embed_sparse gives each text's active entries as
    SparseEncoder.encode does (its max_active_dims applied), truncation and prompts as /embed takes them."""
    from helpers import needs_export

    if needs_export.args[0]:
        pytest.skip(needs_export.kwargs["reason"])
    from tiny_models import build_tiny_sparse_encoder

    from exporters import export_model
    from st_runtime import SparseEncoder

    src = build_tiny_sparse_encoder(tmp_path / "sp-src", "bert", max_active_dims=40)
    folder = export_model(str(src), output=tmp_path / "sp", variants=[], log=lambda _m: None)
    server = start_server(fixtures_dir / "bert" / "export", folder, "--served-model-name", "emb",
                          "--served-model-name", "splade")  # fmt: skip
    texts = ["How big is London", "a", "", " ".join(["a long text"] * 100)]
    r = post(server, "/embed_sparse", {"inputs": texts, "model": "splade"})
    assert r.status_code == 200, r.text
    want = SparseEncoder(folder).encode(texts)
    for got, w in zip(r.json(), want):
        assert [x["index"] for x in got] == w.indices.tolist() and 0 < len(got) <= 40
        np.testing.assert_allclose([x["value"] for x in got], w.values, atol=1e-6)
    one = post(server, "/embed_sparse", {"inputs": "How big is London", "model": "splade"}).json()
    assert one == r.json()[:1]
    ids = [e.ids for e in SparseEncoder(folder).text_tower.tokenize(texts[:2])]  # token ids: as their texts
    assert post(server, "/embed_sparse", {"inputs": ids, "model": "splade"}).json() == r.json()[:2]
    strict = post(server, "/embed_sparse", {"inputs": texts[3:], "model": "splade", "truncate": False})
    assert strict.status_code == 413
    wrong = post(server, "/embed", {"inputs": ["a"], "model": "splade"})
    assert wrong.status_code == 422 and "/embed_sparse" in wrong.json()["error"]
    wrong = post(server, "/embed_sparse", {"inputs": ["a"], "model": "emb"})
    assert wrong.status_code == 422 and "/embed" in wrong.json()["error"]
    info = httpx.get(server.url + "/info", params={"model": "splade"}).json()
    assert info["st_runtime"]["task"] == "sparse-embedding" and info["st_runtime"]["dimension"] > 1000
