"""Cross-encoders (rerankers): exported from tiny random models saved by sentence-transformers, run by
st_runtime.CrossEncoder, compared with sentence_transformers.CrossEncoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import needs_export
from tiny_models import build_tiny_cross_encoder

from exporters.battery import PASSAGES, SHORT_QUERIES, long_text

pytestmark = needs_export

PAIRS = [
    ("How big is London", "London has 9,787,426 inhabitants at the 2011 census."),
    ("a", "b"),
    ("", "an empty query"),
    ("what is the capital of france?", PASSAGES[1]),
    ("A short query", long_text(500)),  # over max_seq_length: truncated longest-first
    (long_text(300), long_text(400)),
    ("Москва", "東京は日本の首都です。 😀"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from exporters import export_model

    cache = {}

    def get(arch: str, num_labels: int = 1, plain_hf: bool = False):
        key = (arch, num_labels, plain_hf)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"ce-{arch}-{num_labels}")
            src = build_tiny_cross_encoder(root / "src", arch, num_labels, plain_hf)
            out = export_model(str(src), output=root / "out", variants=["opt", "int8"], log=lambda _m: None)
            cache[key] = (src, out)
        return cache[key]

    return get


def reference(src):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(src), device="cpu")


@pytest.mark.parametrize("arch", ["bert", "distilbert", "xlm-roberta", "modernbert"])
def test_scores_and_ranking_match_sentence_transformers(exported, arch):
    from st_runtime import CrossEncoder

    src, out = exported(arch)
    ref, ours = reference(src), CrossEncoder(out)
    want = ref.predict(PAIRS, batch_size=3)
    for batch_size in (1, None, len(PAIRS)):  # alone, automatic, and one mixed-length batch
        got = ours.predict(PAIRS, batch_size=batch_size)
        assert got.shape == want.shape == (len(PAIRS),)
        np.testing.assert_allclose(got, want, atol=1e-5)
    single = ours.predict(PAIRS[0])  # one pair: a scalar, as sentence-transformers returns
    assert np.ndim(single) == 0 and abs(float(single) - float(want[0])) < 1e-5
    docs = PASSAGES + SHORT_QUERIES
    ranked, expected = (
        ours.rank("How big is London", docs, return_documents=True),
        ref.rank("How big is London", docs, return_documents=True),
    )
    assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in expected]
    assert [r["text"] for r in ranked] == [r["text"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in ranked], [r["score"] for r in expected], atol=1e-5)
    top3 = ours.rank("How big is London", docs, top_k=3)
    assert [r["corpus_id"] for r in top3] == [r["corpus_id"] for r in expected][:3] and "text" not in top3[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "cross-encoder" and "embedding" not in manifest
    assert manifest["scores"] == {"num_labels": 1, "labels": ["LABEL_0"], "activation": "sigmoid"}
    assert manifest["towers"]["text"]["output"] == "scores"
    variants = manifest["towers"]["text"]["variants"]
    assert {"fp32", "opt"} <= set(variants) and variants["opt"]["validation"]["ranking_identical"]
    assert ours.variant != "int8"  # approximate: never the default
    if "int8" in variants:  # kept only when it passed the reranker gate
        assert variants["int8"]["validation"]["max_abs_diff"] <= 0.01
        assert variants["int8"]["validation"]["ranking_identical"]
    else:
        assert "int8" in manifest["export"]["rejected_variants"]


def test_int8_reranker_keeps_the_ranking(exported):
    """The int8 gate for rerankers: every score within 0.01 of sentence-transformers after the activation and
    each query's top 10 in the same order (checked here on documents the export never saw)."""
    from st_runtime import CrossEncoder

    src, out = exported("bert")
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["towers"]["text"]["variants"]["int8"]
    assert int8["status"] == "passed" and int8["validation"]["gate_max_abs_diff"] == 0.01
    ref, ours = reference(src), CrossEncoder(out, variant="int8")
    docs = [p for _q, p in PAIRS] + SHORT_QUERIES + PASSAGES
    for query in ("How big is London", "vitamins", "Москва"):
        want = ref.rank(query, docs)
        got = ours.rank(query, docs)
        want_scores = {r["corpus_id"]: r["score"] for r in want}
        assert max(abs(r["score"] - want_scores[r["corpus_id"]]) for r in got) <= 0.01
        # the same top 10, except where two documents' reference scores are within the score tolerance
        for a, b in zip(want[:10], got[:10]):
            assert a["corpus_id"] == b["corpus_id"] or abs(a["score"] - want_scores[b["corpus_id"]]) <= 0.01


def test_activation_and_softmax_options(exported):
    import torch

    from st_runtime import CrossEncoder

    src, out = exported("bert", num_labels=3)
    ref, ours = reference(src), CrossEncoder(out)
    assert ours.num_labels == 3 and ours.labels == ["label_0", "label_1", "label_2"]
    np.testing.assert_allclose(ours.predict(PAIRS), ref.predict(PAIRS), atol=1e-5)  # identity for 3 labels
    np.testing.assert_allclose(
        ours.predict(PAIRS, apply_softmax=True), ref.predict(PAIRS, apply_softmax=True), atol=1e-5
    )
    np.testing.assert_allclose(
        ours.predict(PAIRS, activation_fn=torch.nn.Sigmoid()),
        ref.predict(PAIRS, activation_fn=torch.nn.Sigmoid()),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        ours.predict(PAIRS, activation_fn="sigmoid"), 1 / (1 + np.exp(-ours.logits(PAIRS))), atol=1e-6
    )
    with pytest.raises(ValueError, match="one label"):
        ours.rank("q", ["a", "b"])


def test_a_plain_transformers_classifier_exports_as_a_cross_encoder(exported):
    from st_runtime import CrossEncoder

    src, out = exported("bert", plain_hf=True)
    np.testing.assert_allclose(CrossEncoder(out).predict(PAIRS), reference(src).predict(PAIRS), atol=1e-5)


def test_the_wrong_class_for_a_folder_says_which_to_use(exported, tiny_bert):
    from st_runtime import CrossEncoder, SentenceEncoder
    from st_runtime.errors import ModelKindError, UnsupportedInputError

    _, out = exported("bert")
    with pytest.raises(ModelKindError, match="CrossEncoder"):
        SentenceEncoder(out)
    with pytest.raises(ModelKindError, match="SentenceEncoder"):
        CrossEncoder(tiny_bert[1])
    ours = CrossEncoder(out)
    with pytest.raises(UnsupportedInputError, match="pair 1"):
        ours.predict([("a", "b"), "just a string"])
    with pytest.raises(UnsupportedInputError):
        ours.predict("a string")


def test_load_picks_the_class_and_every_kind_takes_the_same_load_arguments(exported, tiny_bert):
    """st_runtime.load returns the folder's class; CrossEncoder takes device= and cuda_graphs= as the others do."""
    import inspect

    import st_runtime
    from st_runtime import CrossEncoder, SentenceEncoder, SparseEncoder
    from st_runtime.model import Model

    _, out = exported("bert")
    model = st_runtime.load(out, device="cpu", cuda_graphs=False, threads=1, variant="fp32")
    assert type(model) is CrossEncoder and model.device == "cpu" and model.variant == "fp32"
    np.testing.assert_array_equal(model.predict(PAIRS), CrossEncoder(out, variant="fp32").predict(PAIRS))
    assert type(st_runtime.load(tiny_bert[1])) is SentenceEncoder
    with pytest.raises(ValueError, match="either device"):
        CrossEncoder(out, device="cpu", providers="cpu")
    expected = list(inspect.signature(Model.__init__).parameters)
    for cls in (SentenceEncoder, CrossEncoder, SparseEncoder):
        assert issubclass(cls, Model) and cls.kind.public_class.endswith(f":{cls.__name__}")
    assert "device" in expected and "cuda_graphs" in expected
