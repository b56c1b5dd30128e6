"""SentenceEncoder.encode follows SentenceTransformer.encode semantics."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import TEXTS, assert_parity

import st_runtime
from st_runtime import SentenceEncoder, SentenceTransformer
from st_runtime.errors import ProviderUnavailableError, UnsupportedInputError, VariantError


def test_alias_is_one_line_switch():
    assert SentenceTransformer is SentenceEncoder


def test_single_string_gives_1d(enc, ref):
    v = enc.encode("How big is London")
    assert v.shape == (enc.get_sentence_embedding_dimension(),) and v.dtype == np.float32
    assert_parity(ref.encode(["How big is London"]), v[None, :])


def test_list_keeps_input_order_for_every_batch_size(enc, ref):
    expected = ref.encode(TEXTS)
    for bs in (1, 2, 3, 32):
        assert_parity(expected, enc.encode(TEXTS, batch_size=bs))


def test_empty_list(enc):
    out = enc.encode([])
    assert out.shape == (0, enc.get_sentence_embedding_dimension()) and out.dtype == np.float32


def test_convert_to_numpy_false_gives_list(enc):
    out = enc.encode(TEXTS[:3], convert_to_numpy=False)
    assert isinstance(out, list) and len(out) == 3 and out[0].ndim == 1


def test_normalize_and_truncate_dim(enc, ref):
    got = enc.encode(TEXTS, normalize_embeddings=True, truncate_dim=8)
    want = ref.encode(TEXTS, normalize_embeddings=True, truncate_dim=8)
    assert got.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("make", [tuple, lambda t: np.array(t), lambda t: (x for x in t)])
def test_sequence_types_accepted_like_lists(enc, make):
    np.testing.assert_array_equal(enc.encode(make(TEXTS)), enc.encode(list(TEXTS)))


def test_pairs_tokenize_as_pairs(enc):
    a = enc.encode([["London", "London has 9,787,426 inhabitants"]])
    b = enc.encode(["London London has 9,787,426 inhabitants"])
    assert a.shape == b.shape and not np.allclose(a, b)


@pytest.mark.parametrize(
    "bad,index",
    [
        ([None], 0),
        (["ok", 3], 1),
        (["ok", "ok", b"bytes"], 2),
        ([{"text": "x"}], 0),
        ([["a", "b", "c"]], 0),
        ([[["nested"]]], 0),
    ],
)
def test_bad_items_name_index_and_type(enc, bad, index):
    with pytest.raises(TypeError, match=f"input {index} is a"):
        enc.encode(bad)


@pytest.mark.parametrize("bad", [None, 3, 2.5, b"bytes", {"a": 1}])
def test_bad_top_level_input(enc, bad):
    with pytest.raises(UnsupportedInputError):
        enc.encode(bad)


@pytest.mark.parametrize("bs", [0, -1, 1.5, "8", True])
def test_bad_batch_size(enc, bs):
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(TEXTS, batch_size=bs)


def test_unknown_prompt_name_lists_choices(enc):
    with pytest.raises(ValueError, match="valid choices"):
        enc.encode(TEXTS, prompt_name="nope")


def test_truncate_dim_too_large(enc):
    with pytest.raises(ValueError, match="truncate_dim"):
        enc.encode(TEXTS, truncate_dim=enc.get_sentence_embedding_dimension() + 1)


def test_max_seq_length_can_be_lowered_not_raised(enc, ref, tiny_bert):
    e = SentenceEncoder(tiny_bert[1])
    with pytest.raises(ValueError, match="only be lowered"):
        e.max_seq_length = e.max_seq_length + 1
    e.max_seq_length = 8
    ref.max_seq_length = 8
    try:
        assert_parity(ref.encode(TEXTS), e.encode(TEXTS))
    finally:
        ref.max_seq_length = enc.max_seq_length


def test_cuda_requested_but_unavailable_raises_listing_providers(tiny_bert):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ProviderUnavailableError, match="CPUExecutionProvider"):
        SentenceEncoder(tiny_bert[1], providers="cuda")


def test_explicit_fallback_list_warns(tiny_bert):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.warns(RuntimeWarning, match="falling back"):
        e = SentenceEncoder(tiny_bert[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert e.encode("x").shape == (e.get_sentence_embedding_dimension(),)


def test_unknown_variant(tiny_bert):
    with pytest.raises(VariantError, match="fp32"):
        SentenceEncoder(tiny_bert[1], variant="int4")


def test_similarity_matches_sentence_transformers(enc, ref):
    a, b = enc.encode(TEXTS[:4]), enc.encode(TEXTS[4:])
    np.testing.assert_allclose(enc.similarity(a, b), ref.similarity(a, b).numpy(), atol=1e-6)
    np.testing.assert_allclose(enc.similarity_pairwise(a, b[:4]), ref.similarity_pairwise(a, b[:4]).numpy(), atol=1e-6)


def test_util_matches_sentence_transformers_util(enc):
    st_util = pytest.importorskip("sentence_transformers.util")

    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    np.testing.assert_allclose(st_runtime.util.cos_sim(q, c), st_util.cos_sim(q, c).numpy(), atol=1e-6)
    np.testing.assert_allclose(st_runtime.util.dot_score(q, c), st_util.dot_score(q, c).numpy(), atol=1e-5)
    ours = st_runtime.util.semantic_search(q, c, top_k=7, corpus_chunk_size=13)
    theirs = st_util.semantic_search(q, c, top_k=7)
    assert [[h["corpus_id"] for h in r] for r in ours] == [[h["corpus_id"] for h in r] for r in theirs]
    np.testing.assert_allclose(
        [[h["score"] for h in r] for r in ours], [[h["score"] for h in r] for r in theirs], atol=1e-6
    )


def test_cuda_provider_is_asked_for_full_fp32_precision():
    """onnxruntime's CUDA provider defaults to TF32 MatMuls; the fp32 promise needs them off, unless the
    caller set it."""
    from st_runtime.providers import full_precision

    assert full_precision("CUDAExecutionProvider") == ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert full_precision(("CUDAExecutionProvider", {"device_id": 1})) == (
        "CUDAExecutionProvider",
        {"device_id": 1, "use_tf32": "0"},
    )
    assert full_precision(("CUDAExecutionProvider", {"use_tf32": "1"}))[1]["use_tf32"] == "1"
    assert full_precision("CPUExecutionProvider") == "CPUExecutionProvider"


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_quantizes_as_sentence_transformers(tiny_bert, precision):
    """sentence-transformers 6's quantize_embeddings, written out: floor((x - min) / ((max - min) / 255)) clipped
    to 0..255 (minus 128 for int8) per dimension; the signs packed 8 to a byte (minus 128 for binary)."""
    from st_runtime import SentenceEncoder

    enc = SentenceEncoder(tiny_bert[1])
    texts = ["How big is London", "a", "The weather is lovely today.", "Москва"]
    emb = enc.encode(texts)
    got = enc.encode(texts, precision=precision)
    if precision.endswith("int8"):
        lo, hi = emb.min(0), emb.max(0)
        steps = np.where(hi - lo == 0, 1, (hi - lo) / 255)
        q = np.clip(np.floor((emb - lo) / steps), 0, 255)
        want = q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
        ranges = np.vstack((emb.min(0) - 1, emb.max(0) + 1))  # given ranges are used as given
        fixed = enc.encode(texts[:1], precision=precision, ranges=ranges)
        assert fixed.shape == (1, emb.shape[1]) and not np.array_equal(fixed, got[:1])
        calibrated = enc.encode(texts[:1], precision=precision, calibration_embeddings=emb)
        # the ranges of the four: the same codes, up to a step where float rounding (batch of 1 against 4) sits on
        # a step's edge
        assert np.abs(calibrated.astype(np.int16) - got[:1].astype(np.int16)).max() <= 1
    else:
        packed = np.packbits(emb > 0, axis=-1)
        want = packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="valid choices"):
        enc.encode(texts, precision="int4")


def test_device_as_sentence_transformers_names_it(tiny_bert):
    from st_runtime.providers import device_name, device_providers

    enc = SentenceEncoder(tiny_bert[1], device="cpu")
    assert enc.device == "cpu"
    np.testing.assert_array_equal(enc.encode(["a b"], device="cpu"), enc.encode(["a b"]))
    with pytest.raises(ValueError, match="runs on cpu"):
        enc.encode(["a b"], device="cuda:1")
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
        SentenceEncoder(tiny_bert[1], device="mps")
    with pytest.raises(ValueError, match="either device"):
        SentenceEncoder(tiny_bert[1], device="cpu", providers="cpu")
    assert device_providers("cuda:1") == ("CUDAExecutionProvider", {"device_id": 1})
    assert device_name(device_providers("cuda")) == "cuda:0"
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(ProviderUnavailableError):  # never a silent CPU fallback
            SentenceEncoder(tiny_bert[1], device="cuda")


def test_tokenize_gives_the_graph_inputs_padded_to_the_longest(tiny_bert):
    enc = SentenceEncoder(tiny_bert[1])
    texts = ["How big is London", "a", " ".join(["word"] * 500), ["a title", "and its passage"]]
    feats = enc.tokenize(texts)
    assert list(feats) == enc.text_tower.inputs
    ids, mask = feats["input_ids"], feats["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape == (4, enc.max_seq_length)  # the long text is truncated at max_seq_length
    for row, text in enumerate(texts):
        want = enc.tokenizer.encode(*text) if isinstance(text, list) else enc.tokenizer.encode(text)
        n = int(mask[row].sum())
        assert ids[row, :n].tolist() == want.ids and not ids[row, n:].any()
        if "token_type_ids" in feats:
            assert feats["token_type_ids"][row, :n].tolist() == want.type_ids


def test_progress_bar_counts_every_text(tiny_bert, capsys):
    pytest.importorskip("tqdm")
    import logging

    enc = SentenceEncoder(tiny_bert[1])
    texts = ["word " * n for n in range(1, 300)]
    plain = enc.encode(texts)
    with_bar = enc.encode(texts, show_progress_bar=True, batch_size=16)
    assert_parity(plain, with_bar)
    err = capsys.readouterr().err
    assert "Encoding" in err and "299/299" in err
    enc.encode(texts[:3])  # default: no bar while the st_runtime logger is at WARNING
    assert capsys.readouterr().err == ""
    logging.getLogger("st_runtime").setLevel(logging.INFO)
    try:
        enc.encode(texts[:3])
        assert "3/3" in capsys.readouterr().err
    finally:
        logging.getLogger("st_runtime").setLevel(logging.NOTSET)
