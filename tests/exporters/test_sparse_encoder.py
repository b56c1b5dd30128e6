"""Sparse encoders (SPLADE): exported from tiny random models saved by sentence-transformers' SparseEncoder, run by
st_runtime.SparseEncoder, compared with sentence_transformers.SparseEncoder: the same active set, weights within
1e-5."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import needs_export
from tiny_models import build_tiny_sparse_encoder

from exporters.battery import PASSAGES, long_text

pytestmark = needs_export

TEXTS = [
    "How big is London",
    "a",  # one token
    "",  # nothing but the special tokens
    PASSAGES[1],
    long_text(400),  # over max_seq_length
    "Москва 東京は日本の首都です。 café 😀",
    "the the the the",
]

# (architecture, pooling, activation, max_active_dims saved with the model)
CASES = [("bert", "max", "relu", None), ("distilbert", "sum", "log1p_relu", None), ("xlm-roberta", "max", "relu", 4)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from exporters import export_model

    cache = {}

    def get(case):
        if case not in cache:
            arch, pooling, activation, k = case
            root = tmp_path_factory.mktemp(f"sparse-{arch}")
            src = build_tiny_sparse_encoder(root / "src", arch, pooling, activation, k)
            out = export_model(str(src), output=root / "out", variants=["opt"], log=lambda _m: None)
            cache[case] = (src, out)
        return cache[case]

    return get


def reference(src):
    from sentence_transformers import SparseEncoder

    return SparseEncoder(str(src), device="cpu")


def dense(ref_model, texts, **kwargs) -> np.ndarray:
    return ref_model.encode(texts, convert_to_sparse_tensor=False, **kwargs).cpu().numpy()


def assert_same_sparse(want: np.ndarray, got: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_array_equal(got != 0, want != 0)  # the same active set
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_weights_and_active_set_match_sentence_transformers(exported, case):
    from st_runtime import SparseEncoder

    src, out = exported(case)
    ref, ours = reference(src), SparseEncoder(out)
    want = dense(ref, TEXTS, batch_size=3)
    assert 0 < np.count_nonzero(want[0]) < want.shape[1] // 4  # sparse, as SPLADE is, but not empty
    for batch_size in (1, None, len(TEXTS)):  # alone, automatic, one mixed-length batch
        embs = ours.encode(TEXTS, batch_size=batch_size)
        assert all(np.all(np.diff(e.indices) > 0) for e in embs)  # sorted, no duplicates
        assert all(e.indices.dtype == np.int32 and e.values.dtype == np.float32 for e in embs)
        assert_same_sparse(want, ours.to_dense(embs))
        assert_same_sparse(want, ours.encode(TEXTS, batch_size=batch_size, convert_to_sparse_tensor=False))
    # the model's own max_active_dims applies by default, an explicit one overrides it
    for k in (None, 1, 3, 50):
        got = ours.encode(TEXTS, max_active_dims=k, convert_to_sparse_tensor=False)
        assert_same_sparse(dense(ref, TEXTS, max_active_dims=k), got)
    if case[3] is not None:
        assert max(len(e.indices) for e in ours.encode(TEXTS)) == case[3]


def test_single_text_query_document_decode_and_similarity(exported):
    from st_runtime import SparseEmbedding, SparseEncoder

    src, out = exported(CASES[0])
    ref, ours = reference(src), SparseEncoder(out)
    one = ours.encode("How big is London")
    assert isinstance(one, SparseEmbedding)
    indices, _values = one  # a documented (indices, values) pair
    assert_same_sparse(dense(ref, ["How big is London"])[0], one.to_dense(ours.get_embedding_dimension()))
    assert ours.encode("a", convert_to_sparse_tensor=False).shape == (ours.get_embedding_dimension(),)
    np.testing.assert_array_equal(
        ours.to_dense(ours.encode_query(TEXTS[:3])), ours.to_dense(ours.encode(TEXTS[:3], prompt_name="query"))
    )
    # decode: (token, weight) by decreasing weight, as sentence-transformers gives them
    want = ref.decode(ref.encode(TEXTS[:2]), top_k=5)
    got = ours.decode(ours.encode(TEXTS[:2]), top_k=5)
    assert [[t for t, _ in row] for row in got] == [[t for t, _ in row] for row in want]
    np.testing.assert_allclose([[w for _, w in row] for row in got], [[w for _, w in row] for row in want], atol=1e-5)
    assert len(ours.decode(one)) == len(indices)  # no top_k: every active entry
    from_dense = ours.decode(ours.encode("a", convert_to_sparse_tensor=False), top_k=2)
    assert from_dense == ours.decode(ours.encode("a"), top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        ours.decode(one, top_k=0)
    # dot product, as SparseEncoder.similarity
    q, d = ours.encode(TEXTS[:2]), ours.encode(TEXTS[2:5])
    want_sim = ref.similarity(ref.encode(TEXTS[:2]), ref.encode(TEXTS[2:5])).to_dense().numpy()
    np.testing.assert_allclose(ours.similarity(q, d), want_sim, rtol=1e-5, atol=1e-5)
    pytest.importorskip("scipy")
    csr = ours.to_scipy(ours.encode(TEXTS))
    np.testing.assert_array_equal(csr.toarray(), ours.encode(TEXTS, convert_to_sparse_tensor=False))


def test_bad_input_and_the_wrong_class_are_refused(exported):
    from st_runtime import CrossEncoder, SentenceEncoder, SparseEncoder
    from st_runtime.errors import ModelKindError, UnsupportedInputError

    _src, out = exported(CASES[0])
    ours = SparseEncoder(out)
    with pytest.raises(UnsupportedInputError, match="single texts"):
        ours.encode([("a", "b")])
    with pytest.raises(ValueError, match="max_active_dims"):
        ours.encode(["a"], max_active_dims=0)
    with pytest.raises(ValueError, match="batch_size"):
        ours.encode(["a"], batch_size=-1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.encode(["a"], normalize_embeddings=True)
    assert ours.encode([]) == []
    for cls in (SentenceEncoder, CrossEncoder):
        with pytest.raises(ModelKindError, match=r"st_runtime.SparseEncoder"):
            cls(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["towers"]["text"]["variants"]["fp32"]["validation"]["active_set_mismatches"] == 0
    assert "opt" in manifest["towers"]["text"]["variants"]


def test_progress_bars_of_the_other_model_kinds(exported, capsys):
    """show_progress_bar draws a tqdm bar over the inputs for SparseEncoder.encode and CrossEncoder.predict too."""
    pytest.importorskip("tqdm")
    from tiny_models import build_tiny_cross_encoder

    from exporters import export_model
    from st_runtime import CrossEncoder, SparseEncoder

    _src, out = exported(CASES[0])
    SparseEncoder(out).encode(TEXTS, show_progress_bar=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err
    root = out.parent
    ce = export_model(str(build_tiny_cross_encoder(root / "ce-src", "bert")), output=root / "ce", variants=[],
                      log=lambda _m: None)  # fmt: skip
    capsys.readouterr()
    CrossEncoder(ce).predict([("q", t) for t in TEXTS], show_progress_bar=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err
    CrossEncoder(ce).predict([("q", "a")])
    assert "1/1" not in capsys.readouterr().err
