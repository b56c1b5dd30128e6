"""long_inputs="chunk" / "error" (st_runtime.chunking): for each kind, a tiny model at a 16-token limit gives, for
texts over the limit, what sentence-transformers gives when run on the same windows (built here independently
from sentence-transformers' own tokenizer) and pooled as documented; texts under the limit are unchanged bit for
bit; mixed calls equal one-by-one calls; a 1,000,000-character text costs time linear in its length."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import needs_export, row_cosines

from exporters.battery import PASSAGES, long_text
from st_runtime.chunking import DEFAULT_CHUNK_OVERLAP, plan
from st_runtime.errors import InputTooLongError, UnsupportedInputError

pytestmark = needs_export

LIMIT = 16
SHORT = ["How big is London", "a", "", PASSAGES[0][:40]]
LONG = [PASSAGES[1], long_text(90), PASSAGES[2] + " " + PASSAGES[0]]


def ref_windows(content: list[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """The windows as docs/long-inputs.md describes them, written out independently of st_runtime.chunking."""
    overlap = min(overlap, size // 2)
    starts = list(range(0, max(len(content) - overlap, 1), size - overlap))
    while len(starts) > 1 and starts[-2] + size >= len(content):
        starts.pop()
    return [(s, min(s + size, len(content))) for s in starts]


def bert_windows(tok, text: str, overlap: int = DEFAULT_CHUNK_OVERLAP, query: str | None = None):
    """[(input_ids, token_type_ids)] of ``text``'s windows for a BERT tokenizer ([CLS] .. [SEP] (.. [SEP]))."""
    content = tok(text, add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    q = tok(query, add_special_tokens=False)["input_ids"] if query is not None else None
    size = LIMIT - 2 if q is None else LIMIT - 3 - len(q)
    out = []
    for a, b in ref_windows(content, size, overlap):
        if q is None:
            out.append(([cls, *content[a:b], sep], [0] * (b - a + 2)))
        else:
            out.append(([cls, *q, sep, *content[a:b], sep], [0] * (len(q) + 2) + [1] * (b - a + 1)))
    return out


def features(ids, types):
    import torch

    t = torch.tensor([ids])
    return {"input_ids": t, "attention_mask": torch.ones_like(t), "token_type_ids": torch.tensor([types])}


# ---------------------------------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def embedder(zoo):
    from st_runtime import SentenceEncoder

    src = zoo.model("bert")  # mean pooling + Normalize
    enc = SentenceEncoder(zoo.export("bert"))
    enc.max_seq_length = LIMIT
    return src, enc, zoo.reference(src)


def st_chunked_embedding(ref, text: str, overlap: int = DEFAULT_CHUNK_OVERLAP) -> np.ndarray:
    """sentence-transformers on the windows: each window through the modules before Normalize, the token-weighted
    mean, then Normalize."""
    import torch

    rows, weights = [], []
    with torch.no_grad():
        for ids, types in bert_windows(ref.tokenizer, text, overlap):
            feats = features(ids, types)
            for module in list(ref)[:-1]:  # all but Normalize
                feats = module(feats)
            rows.append(feats["sentence_embedding"][0].numpy())
            weights.append(len(ids))
    mean = np.average(np.stack(rows), axis=0, weights=weights)
    return mean / np.linalg.norm(mean)


@pytest.mark.parametrize("overlap", sorted({0, 4, 32, DEFAULT_CHUNK_OVERLAP}))
def test_embedding_chunks_match_sentence_transformers_on_the_same_windows(embedder, overlap):
    _src, enc, ref = embedder
    got = enc.encode(LONG, long_inputs="chunk", chunk_overlap=overlap)
    want = np.stack([st_chunked_embedding(ref, t, overlap) for t in LONG])
    assert row_cosines(want, got).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # and it is not truncation
    assert row_cosines(enc.encode(LONG), got).max() < 0.9999
    # the rows before Normalize, when asked: the weighted mean itself
    raw = enc.encode(LONG, output_value="sentence_embedding_unnormalized", long_inputs="chunk", chunk_overlap=overlap)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).min() > 1e-3 and row_cosines(got, raw).min() >= 0.99999


def test_texts_under_the_limit_are_unchanged_bit_for_bit(embedder):
    _src, enc, _ref = embedder
    for mode in ("chunk", "error"):
        np.testing.assert_array_equal(enc.encode(SHORT, long_inputs=mode), enc.encode(SHORT))


def test_mixed_calls_equal_one_by_one(embedder):
    _src, enc, _ref = embedder
    texts = [SHORT[0], LONG[0], SHORT[1], LONG[1], SHORT[3], LONG[2]]
    together = enc.encode(texts, long_inputs="chunk")
    alone = np.stack([enc.encode(t, long_inputs="chunk") for t in texts])
    assert together.shape == (len(texts), alone.shape[1])
    assert row_cosines(alone, together).min() >= 0.99999


def test_error_names_the_token_count_and_the_limit(embedder):
    _src, enc, ref = embedder
    n = len(ref.tokenizer(LONG[0])["input_ids"])
    with pytest.raises(InputTooLongError, match=rf"input 1 has {n} tokens, over the limit of {LIMIT} tokens"):
        enc.encode([SHORT[0], LONG[0]], long_inputs="error")
    with pytest.raises(ValueError, match="long_inputs must be one of"):
        enc.encode(SHORT, long_inputs="split")
    with pytest.raises(ValueError, match="chunk_overlap must be"):
        enc.encode(SHORT, long_inputs="chunk", chunk_overlap=-1)


def test_prompts_go_into_every_window(embedder):
    _src, enc, _ref = embedder
    tower = enc.text_tower
    items, chunks = plan(tower, [LONG[0]], LIMIT, "chunk", 4, prompt="query: ")
    prompt_ids = tower.tokenizer_for(None).encode("query: ", add_special_tokens=False).ids
    assert chunks is not None and len(items) > 2 and len(prompt_ids) == 2
    for item in items:
        assert len(item) <= LIMIT
        assert item.ids[1 : 1 + len(prompt_ids)] == prompt_ids
    # the windows' content is the text's tokens, in order, each window overlapping the next by 4
    content = tower.tokenizer_for(None).encode(LONG[0], add_special_tokens=False).ids
    rebuilt: list[int] = []
    for item, (a, b, before) in zip(items, chunks.spans):
        assert item.ids[before : before + b - a] == content[a:b]
        assert not rebuilt or rebuilt[a:] == content[a : len(rebuilt)]
        rebuilt[a:] = content[a:b]
    assert rebuilt == content


def test_token_embeddings_come_back_once_per_token(embedder):
    import torch

    _src, enc, ref = embedder
    text = LONG[1]
    got = enc.encode(text, output_value="token_embeddings", long_inputs="chunk", chunk_overlap=6)
    windows = bert_windows(ref.tokenizer, text, 6)
    n_content = len(ref.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert got.shape[0] == n_content + 2
    with torch.no_grad():
        rows = [ref[0](features(ids, types))["token_embeddings"][0].numpy() for ids, types in windows]
    # each content token from the window where it is farthest from an edge (the earlier window on ties)
    spans = ref_windows(list(range(n_content)), LIMIT - 2, 6)
    want = [rows[0][0]]
    for t in range(n_content):
        best = max(
            (min(t - a, b - 1 - t), -k) for k, (a, b) in enumerate(spans) if a <= t < b
        )  # fmt: skip
        k = -best[1]
        want.append(rows[k][1 + t - spans[k][0]])
    want.append(rows[-1][-1])
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
    with pytest.raises(ValueError, match="output_value=None"):
        enc.encode(text, output_value=None, long_inputs="chunk")


LINEAR = """
import resource, sys, time
from exporters.battery import long_text
from st_runtime import SentenceEncoder
enc = SentenceEncoder(sys.argv[1], threads=1)
small, big = long_text(20_000), long_text(200_000)  # about 120,000 and 1,200,000 characters
enc.encode(small, long_inputs="chunk", chunk_overlap=0)  # warm
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
enc.encode(small, long_inputs="chunk", chunk_overlap=0)
t1 = time.perf_counter()
enc.encode(big, long_inputs="chunk", chunk_overlap=0)
t2 = time.perf_counter()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(big), t1 - t0, t2 - t1, (rss1 - rss0) / 1024)
"""


def test_a_million_characters_cost_linear_time_and_bounded_memory(zoo):
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-c", LINEAR, str(zoo.export("bert"))], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], timeout=300, check=True,
    ).stdout.split()  # fmt: skip
    chars, small_s, big_s, grown_mb = int(out[0]), *map(float, out[1:])
    assert chars >= 1_000_000
    assert big_s / small_s < 30, (small_s, big_s)  # 10x the text: linear is ~10x, quadratic ~100x
    # the 1,000,000-character call's peak over the 100,000-character one's (tokenized whole: 138 MB)
    assert grown_mb < 64, grown_mb


def test_image_models_refuse_chunking(fixtures_dir):
    from st_runtime import SentenceEncoder

    clip = SentenceEncoder(fixtures_dir / "clip" / "export")
    limit = clip.max_seq_length
    assert clip.encode("a photo", long_inputs="chunk").shape == clip.encode("a photo").shape
    with pytest.raises(UnsupportedInputError, match="image tower"):
        clip.encode(long_text(limit * 2), long_inputs="chunk")


# ---------------------------------------------------------------------------------------------------- rerankers
@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    from tiny_models import build_tiny_cross_encoder

    from exporters import export_model
    from st_runtime import CrossEncoder

    root = tmp_path_factory.mktemp("long-ce")
    src = build_tiny_cross_encoder(root / "src", "bert")
    ce = CrossEncoder(export_model(str(src), output=root / "out", variants=["opt"], log=lambda _m: None))
    ce.max_seq_length = LIMIT
    from sentence_transformers import CrossEncoder as STCrossEncoder

    return ce, STCrossEncoder(str(src), device="cpu")


def test_cross_encoder_maxp_matches_sentence_transformers_windows(reranker):
    import torch

    ce, ref = reranker
    query = "big city"
    got = ce.predict([(query, d) for d in [*LONG, SHORT[0]]], long_inputs="chunk", chunk_overlap=4)
    want = []
    with torch.no_grad():
        for doc in LONG:
            logits = [
                float(ref.model(**{k: v for k, v in features(ids, types).items()}).logits[0, 0])
                for ids, types in bert_windows(ref.tokenizer, doc, 4, query=query)
            ]
            want.append(1 / (1 + np.exp(-max(logits))))
    np.testing.assert_allclose(got[:-1], want, atol=1e-5)
    # a pair under the limit: unchanged, bit for bit
    assert got[-1] == ce.predict((query, SHORT[0]))
    ranked = ce.rank(query, LONG, long_inputs="chunk", chunk_overlap=4)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-np.asarray(want), kind="stable"))
    with pytest.raises(InputTooLongError, match=f"over the limit of {LIMIT} tokens"):
        ce.predict((query, LONG[0]), long_inputs="error")
    with pytest.raises(InputTooLongError, match="shorten the query"):
        ce.predict((LONG[0], "a"), long_inputs="chunk")


# ---------------------------------------------------------------------------------------------------- SPLADE
@pytest.fixture(scope="module")
def splade(tmp_path_factory):
    from sentence_transformers import SparseEncoder as STSparse
    from tiny_models import build_tiny_sparse_encoder

    from exporters import export_model
    from st_runtime import SparseEncoder

    root = tmp_path_factory.mktemp("long-splade")
    src = build_tiny_sparse_encoder(root / "src", "bert", "max", "relu")
    enc = SparseEncoder(export_model(str(src), output=root / "out", variants=[], log=lambda _m: None))
    enc.max_seq_length = LIMIT
    return enc, STSparse(str(src), device="cpu")


def test_splade_windows_pool_by_their_maximum(splade):
    import torch

    enc, ref = splade
    pooling = "max"
    got = enc.encode([*LONG, SHORT[0]], long_inputs="chunk", chunk_overlap=4, convert_to_sparse_tensor=False)
    with torch.no_grad():
        for row, doc in zip(got, LONG):
            windows = [
                ref(features(ids, types))["sentence_embedding"][0].numpy()
                for ids, types in bert_windows(ref.tokenizer, doc, 4)
            ]
            want = np.max(windows, axis=0) if pooling == "max" else np.sum(windows, axis=0)
            np.testing.assert_allclose(row, want, atol=1e-5)
    np.testing.assert_array_equal(got[-1], enc.encode(SHORT[0], convert_to_sparse_tensor=False))


def test_sum_pooled_splade_windows_add_up():
    from types import SimpleNamespace

    from st_runtime.chunking import Chunks
    from st_runtime.kinds.sparse import SparseEmbedding, SparseKind

    rows = [
        SparseEmbedding(np.array([1, 5], np.int32), np.array([0.5, 2.0], np.float32)),
        SparseEmbedding(np.array([3], np.int32), np.array([1.0], np.float32)),  # a text under the limit
        SparseEmbedding(np.array([5, 9], np.int32), np.array([1.0, 0.25], np.float32)),
    ]
    chunks = Chunks(np.array([0, 0, 1]), np.array([8, 8, -1]))
    for pooling, five in (("sum", 3.0), ("max", 2.0)):
        model = SimpleNamespace(spec=SimpleNamespace(output={"pooling": pooling}))
        first, second = SparseKind().pool_windows(model, [rows[0], rows[2], rows[1]], chunks)
        assert first.indices.tolist() == [1, 5, 9] and first.values.tolist() == [0.5, five, 0.25]
        assert second is rows[1]


def test_a_long_text_is_tokenized_in_pieces_exactly(embedder):
    from st_runtime.chunking import PIECE_CHARS

    _src, enc, _ref = embedder
    mixed = " ".join([*PASSAGES, "Москва 東京は日本の首都です。 café 😀 naïve", "x" * 300, "a.b,c;d", "\t\n  \u3000 "])
    text = (mixed + " ") * (4 * PIECE_CHARS // len(mixed) + 1)
    pieces = enc._cutter.pieces(text, PIECE_CHARS)
    assert len(pieces) >= 4 and all(len(p) <= PIECE_CHARS for p in pieces)
    tok = enc.text_tower.tokenizer_for(None)
    joined = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert joined == tok.encode(text, add_special_tokens=False).ids
    whole = enc.encode(text, long_inputs="chunk")
    items, _chunks = plan(enc.text_tower, [text], LIMIT, "chunk", 0)  # tokenized whole: the same windows
    assert len(items) == -(-len(joined) // (LIMIT - 2)) and np.isfinite(whole).all()
