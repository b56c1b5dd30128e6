"""st-serve's dialects with the clients people point at an embedding server: huggingface_hub's InferenceClient
(TEI's POST /), the cohere client (v2 embed and rerank), Jina's rerank shape, and TEI's other routes, each
compared with in-process results on one server holding an embedding model (with prompts), a reranker and a
three-label classifier."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import pytest
from conftest import Server
from helpers import TEXTS, assert_parity, needs_export

from st_runtime import CrossEncoder, SentenceEncoder

pytestmark = needs_export
QUERY = "How big is London"
DOCS = ["London has 9,787,426 inhabitants", "Paris is in France", "cats", "How big is London", "a"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, fixtures_dir):
    from tiny_models import build_tiny_cross_encoder

    from exporters import export_model

    root = tmp_path_factory.mktemp("dialects")
    emb = shutil.copytree(fixtures_dir / "bert" / "export", root / "emb")
    manifest = json.loads((emb / "manifest.json").read_text())
    manifest["prompts"] = {"query": "query: ", "document": "passage: "}
    (emb / "manifest.json").write_text(json.dumps(manifest))
    out = {"emb": emb}
    for name, labels in (("reranker", 1), ("classifier", 3)):
        src = build_tiny_cross_encoder(root / f"{name}-src", "bert", num_labels=labels)
        out[name] = export_model(str(src), output=root / name, variants=[], log=lambda _m: None)
        out[name + "-src"] = src
    return out


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    args = [str(folders[n]) for n in ("emb", "reranker", "classifier")]
    names = [a for n in ("emb", "reranker", "classifier") for a in ("--served-model-name", n)]
    server = Server([*args, *names], tmp_path_factory.mktemp("dialects-log") / "serve.log").wait_ready()
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def local(folders):
    return {
        "emb": SentenceEncoder(folders["emb"], threads=1),
        "reranker": CrossEncoder(folders["reranker"], threads=1),
        "classifier": CrossEncoder(folders["classifier"], threads=1),
    }


def post(server, path: str, payload) -> httpx.Response:
    return httpx.post(server.url + path, json=payload, timeout=60)


# ------------------------------------------------------------------------------------------------ clients
def test_huggingface_hub_inference_client_posts_to_the_root(server, local):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=server.url)
    got = np.asarray(client.feature_extraction(TEXTS), dtype=np.float32)
    assert_parity(local["emb"].encode(TEXTS), got)
    one = np.asarray(client.feature_extraction("How big is London", prompt_name="query"), dtype=np.float32)
    assert_parity(local["emb"].encode(["How big is London"], prompt_name="query"), one.reshape(1, -1))


def test_normalize_false_is_the_embedding_before_normalize(server, local):
    from huggingface_hub import InferenceClient

    enc = local["emb"]
    want = enc.encode(TEXTS, output_value="sentence_embedding_unnormalized")
    assert np.abs(np.linalg.norm(want, axis=1) - 1).max() > 0.01  # the fixture's pre-Normalize rows are not unit
    got = np.asarray(InferenceClient(model=server.url).feature_extraction(TEXTS, normalize=False), np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    cut = np.asarray(post(server, "/embed", {"inputs": TEXTS, "normalize": False, "dimensions": 8}).json())
    np.testing.assert_allclose(cut, want[:, :8], rtol=1e-4, atol=1e-5)  # cut, not normalized
    info = httpx.get(server.url + "/info", params={"model": "emb"}).json()["st_runtime"]
    assert info["normalized"] is True and info["normalize_false"] == "before_normalize"


def test_token_ids_with_the_openai_client_and_tei(server, local):
    import openai

    enc = local["emb"]
    ids = [e.ids for e in enc.text_tower.tokenize(TEXTS)]  # special tokens included, as the model adds them
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    resp = client.embeddings.create(input=ids, model="emb", encoding_format="float")
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert_parity(enc.encode(TEXTS), got)  # the same vectors as the texts they tokenize to
    assert resp.usage.prompt_tokens == sum(map(len, ids))
    one = client.embeddings.create(input=ids[0], model="emb", encoding_format="float")  # one list: one input
    assert_parity(enc.encode(TEXTS[:1]), np.array([one.data[0].embedding], np.float32))
    mixed = post(server, "/embed", {"inputs": [TEXTS[1], ids[0]]}).json()
    assert_parity(enc.encode([TEXTS[1], TEXTS[0]]), np.asarray(mixed, np.float32))
    # over the limit: cut as a text is (a plain slice, on the call's side), or refused with truncate=false
    long = [101] + [2000 + i for i in range(300)] + [102]
    from st_runtime.inputs import TokenItem

    for side in ("Right", "Left"):
        cut = post(server, "/embed", {"inputs": [long], "truncation_direction": side}).json()
        want = enc.encode([TokenItem(long[:48] if side == "Right" else long[-48:])])
        assert_parity(want, np.asarray(cut, np.float32))
    refused = post(server, "/embed", {"inputs": [long], "truncate": False})
    assert refused.status_code == 413 and "302 tokens" in refused.json()["error"]
    token_rows = post(server, "/embed_all", {"inputs": [ids[0]]}).json()
    np.testing.assert_allclose(
        np.asarray(token_rows[0], np.float32), enc.encode(TEXTS[:1], output_value="token_embeddings")[0], atol=1e-5
    )
    vocab = enc.text_tower.tokenizer.get_vocab_size(with_added_tokens=True)
    bad = post(server, "/embed", {"inputs": [ids[0], [101, vocab, -1]]})
    assert bad.status_code == 422 and f"'inputs[1][1]' is {vocab}" in bad.json()["error"]
    assert post(server, "/embed", {"inputs": [[101, True]]}).status_code == 422


def test_cohere_client_v2_embed_every_type(server, local):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    resp = client.embed(model="emb", texts=TEXTS, input_type="search_query", embedding_types=types)
    enc = local["emb"]
    ref = enc.encode(TEXTS, prompt_name="query")  # search_query -> the model's "query" prompt
    assert_parity(ref, np.asarray(resp.embeddings.float_, dtype=np.float32))
    b64 = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in resp.embeddings.base64])
    assert_parity(ref, b64)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        want = enc.encode(TEXTS, prompt_name="query", precision=precision).astype(np.int64)
        got = np.asarray(getattr(resp.embeddings, precision), dtype=np.int64)
        assert got.shape == want.shape, precision
        # the same float rows, quantized with this call's ranges: equal up to a rounding boundary
        assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.98, precision
    doc = client.embed(model="emb", texts=TEXTS[:2], input_type="search_document", embedding_types=["float"])
    assert_parity(enc.encode(TEXTS[:2], prompt_name="document"), np.asarray(doc.embeddings.float_, np.float32))
    cut = client.embed(
        model="emb", texts=TEXTS[:2], input_type="clustering", embedding_types=["float"], output_dimension=8
    )
    want = enc.encode(TEXTS[:2])[:, :8]
    want /= np.linalg.norm(want, axis=1, keepdims=True)  # a Matryoshka cut of a normalizing model: normalized again
    np.testing.assert_allclose(np.asarray(cut.embeddings.float_, np.float32), want, atol=1e-6)


def test_cohere_client_v2_rerank(server, local):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    resp = client.rerank(model="reranker", query=QUERY, documents=DOCS, top_n=3)
    want = local["reranker"].rank(QUERY, DOCS, top_k=3)
    assert [r.index for r in resp.results] == [w["corpus_id"] for w in want]
    np.testing.assert_allclose([r.relevance_score for r in resp.results], [w["score"] for w in want], atol=1e-6)
    with pytest.raises(cohere.core.ApiError) as err:  # a Cohere-shaped error, the field named
        client.rerank(model="reranker", query=QUERY, documents=[])
    assert err.value.status_code == 422 and "documents" in err.value.body["message"]


def test_jina_rerank_shape_with_document_objects(server, local):
    docs = [{"text": d} for d in DOCS]
    r = post(server, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": docs, "return_documents": True})
    assert r.status_code == 200, r.text
    want = local["reranker"].rank(QUERY, DOCS, return_documents=True)
    results = r.json()["results"]
    assert [x["index"] for x in results] == [w["corpus_id"] for w in want]
    assert [x["document"]["text"] for x in results] == [w["text"] for w in want]
    assert r.json()["usage"]["total_tokens"] > 0
    v2 = post(server, "/v2/rerank", {"model": "reranker", "query": QUERY, "documents": DOCS, "return_documents": False})
    assert [x["index"] for x in v2.json()["results"]] == [x["index"] for x in results]
    assert "document" not in v2.json()["results"][0]


# ------------------------------------------------------------------------------------------------ TEI
def test_root_answers_by_the_models_kind(server, local):
    assert httpx.get(server.url + "/").status_code == 200 and httpx.get(server.url + "/ping").status_code == 200
    emb = post(server, "/", {"inputs": TEXTS[:3], "model": "emb"})
    assert_parity(local["emb"].encode(TEXTS[:3]), np.asarray(emb.json(), np.float32))
    ranked = post(server, "/", {"query": QUERY, "texts": DOCS, "model": "reranker"}).json()
    assert [x["index"] for x in ranked] == [w["corpus_id"] for w in local["reranker"].rank(QUERY, DOCS)]
    assert post(server, "/invocations", {"inputs": TEXTS[:3], "model": "emb"}).json() == emb.json()
    instances = [{"inputs": TEXTS[0]}, {"inputs": [["x"], ["y"]], "model": "classifier"}]
    vertex = post(server, "/vertex", {"instances": instances})
    assert vertex.status_code == 200, vertex.text
    first, second = vertex.json()["predictions"]
    assert_parity(local["emb"].encode(TEXTS[:1]), np.asarray(first, np.float32))
    assert len(second) == 2 and len(second[0]) == 3  # two inputs, three labels each
    bad = post(server, "/vertex", {"instances": []})
    assert bad.status_code == 422 and "'instances'" in bad.json()["error"]


def test_predict_labels_for_texts_and_pairs(server, local, folders):
    import torch
    import transformers

    pair = post(server, "/predict", {"inputs": [QUERY, DOCS[0]], "model": "classifier"}).json()
    want = local["classifier"].predict([(QUERY, DOCS[0])], apply_softmax=True)[0]
    assert [x["label"] for x in pair] == [f"label_{i}" for i in np.argsort(-want, kind="stable")]
    np.testing.assert_allclose(sorted((x["score"] for x in pair), reverse=True), sorted(want, reverse=True), atol=1e-6)
    batch = post(server, "/predict", {"inputs": [[QUERY, DOCS[0]], [DOCS[1]]], "model": "classifier"}).json()
    assert batch[0] == pair and len(batch[1]) == 3
    # a single text, as the classifier's own transformers model scores it
    src = folders["classifier-src"]
    tok = transformers.AutoTokenizer.from_pretrained(src)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(src).eval()
    with torch.no_grad():
        logits = hf(**tok([DOCS[1]], return_tensors="pt")).logits[0].numpy()
    raw = post(server, "/predict", {"inputs": DOCS[1], "model": "classifier", "raw_scores": True}).json()
    np.testing.assert_allclose(sorted((x["score"] for x in raw), reverse=True), sorted(logits, reverse=True), atol=1e-4)
    assert [x["label"] for x in raw] == [x["label"] for x in batch[1]]  # softmax keeps the order
    bad = post(server, "/predict", {"inputs": [["a", "b", "c"]], "model": "classifier"})
    assert bad.status_code == 422 and "'inputs[0]'" in bad.json()["error"]


def test_similarity_embed_all_and_decode(server, local):
    enc = local["emb"]
    sims = post(server, "/similarity", {"inputs": {"source_sentence": QUERY, "sentences": DOCS}}).json()
    e = enc.encode([QUERY, *DOCS])
    np.testing.assert_allclose(sims, enc.similarity(e[:1], e[1:])[0], atol=1e-5)
    r = post(server, "/embed_all", {"inputs": [QUERY, "a"]})
    want = enc.encode([QUERY, "a"], output_value="token_embeddings")
    for got, w in zip(r.json(), want):
        np.testing.assert_allclose(np.asarray(got, np.float32), w, atol=1e-5)
    long = " ".join(f"w{i}" for i in range(300))
    assert post(server, "/embed_all", {"inputs": [long], "truncate": False}).status_code == 413
    tokens = post(server, "/tokenize", {"inputs": [QUERY]}).json()[0]
    ids = [t["id"] for t in tokens]
    text = post(server, "/decode", {"ids": ids}).json()
    assert text == [enc.text_tower.tokenizer.decode(ids)] and "london" in text[0].lower()
    bad = post(server, "/decode", {"ids": [1, 10**9]})
    assert bad.status_code == 422 and str(10**9) in bad.json()["error"]


@pytest.mark.parametrize(
    "path,payload,status,needle",
    [
        ("/v2/embed", {"model": "emb", "texts": ["a"], "embedding_types": ["int4"]}, 422, "'embedding_types'"),
        ("/v2/embed", {"model": "emb", "texts": []}, 422, "'texts'"),
        ("/v2/embed", {"model": "emb", "texts": ["a"], "input_type": "nope"}, 422, "'input_type'"),
        ("/v2/embed", {"model": "emb", "texts": ["a"] * 300}, 413, "--max-client-batch-size"),
        ("/v2/embed", {"model": "emb", "texts": ["a"], "output_dimension": 0}, 422, "'output_dimension'"),
        ("/v2/rerank", {"model": "reranker", "query": "q", "documents": [3]}, 422, "'documents[0]'"),
        ("/v2/rerank", {"model": "reranker", "query": "q", "documents": ["a"], "top_n": 0}, 422, "'top_n'"),
        ("/v2/rerank", {"model": "emb", "query": "q", "documents": ["a"]}, 422, "/v2/embed"),
        ("/similarity", {"inputs": {"source_sentence": "a"}}, 422, "'inputs.sentences'"),
        ("/predict", {"inputs": 5, "model": "classifier"}, 422, "'inputs'"),
    ],
)
def test_bad_requests_get_the_dialects_error(server, path, payload, status, needle):
    r = post(server, path, payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert needle in (body["message"] if path.startswith("/v2") else body["error"])
    assert httpx.get(server.url + "/health").status_code == 200
