"""ModernBERT (gte-modernbert-base, modernbert-embed-base, gte-reranker-modernbert-base): rotary positions, no
token_type_ids, a sliding-window attention in every layer but the global ones. The tiny model's window is
MODERNBERT_WINDOW tokens, far below MAX_SEQ; the architecture x pooling grid (test_tiny_parity) covers the
battery, batch of one, one and two tokens, and truncation. Here: every length around the window, alone and
padded in one batch, a check that the window matters to those comparisons, the variants and the reranker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS, assert_parity, row_cosines
from tiny_models import MAX_SEQ, MODERNBERT_WINDOW, build_tiny_cross_encoder

from st_runtime import SentenceEncoder

pytestmark = pytest.mark.filterwarnings("ignore")

# one token, two, up to half the window (no token is out of reach), just past it, several windows, the maximum
LENGTHS = sorted({1, 2, 3, MODERNBERT_WINDOW // 2 + 1, MODERNBERT_WINDOW // 2 + 2, MODERNBERT_WINDOW + 1, 17, MAX_SEQ})


def _inputs(enc, rng) -> list[np.ndarray]:
    cls_id = enc.tokenizer.encode("").ids[0]
    vocab = enc.tokenizer.get_vocab_size()
    return [np.concatenate([[cls_id], rng.randint(0, vocab - 5, size=n - 1)]).astype(np.int64) for n in LENGTHS]


def _padded(seqs: list[np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def _torch(ref_model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return ref_model({k: torch.from_numpy(v) for k, v in feeds.items()})["sentence_embedding"].numpy()


def test_graph_follows_every_length_around_the_local_window(zoo):
    """The masks are computed in the graph from the sequence length: the graph matches sentence-transformers at
    every length from one token to the maximum, alone and padded together, although it was traced at one."""
    src = zoo.model("modernbert", pooling="mean")
    enc = SentenceEncoder(zoo.export("modernbert", pooling="mean"), variant="fp32")
    session = enc.text_tower.session
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    ref_model = zoo.reference(src)
    seqs = _inputs(enc, np.random.RandomState(0))
    pad_id = ref_model.tokenizer.pad_token_id
    for s in seqs:
        feeds = _padded([s], pad_id)
        assert_parity(_torch(ref_model, feeds), session.run(None, feeds)[0])
    feeds = _padded(seqs, pad_id)
    got = session.run(None, feeds)[0]
    assert_parity(_torch(ref_model, feeds), got)
    # The comparison can fail: with the window opened to the whole sequence, the texts longer than half the
    # window plus one get other embeddings (by more than the gate), the shorter ones the same.
    ref_model[0].auto_model.config.local_attention = 10 * MAX_SEQ
    cos = row_cosines(_torch(ref_model, feeds), got)
    reach = np.array(LENGTHS) > MODERNBERT_WINDOW // 2 + 1
    assert np.all(cos[~reach] >= 0.99999), cos
    assert np.all(cos[reach] < 0.9999), cos


def test_text_pairs(zoo):
    """[CLS] a [SEP] b [SEP], without token_type_ids."""
    src = zoo.model("modernbert", pooling="mean")
    enc = SentenceEncoder(zoo.export("modernbert", pooling="mean"))
    pairs = [("How big is London", "London has 9,787,426 inhabitants."), ("a", " ".join(["long passage"] * 40))]
    e = enc.tokenizer.encode(*pairs[0])
    assert e.tokens[0] == "[CLS]" and e.tokens.count("[SEP]") == 2
    assert_parity(zoo.reference(src).encode([list(p) for p in pairs]), enc.encode(pairs))


def test_variants(zoo):
    """opt (onnxruntime's bert fusions, no attention among them) is exact; int8 quantizes every MatMul of the
    layers and stays within its gate."""
    src = zoo.model("modernbert", pooling="cls")
    out = zoo.export("modernbert", variants=("opt", "int8"), pooling="cls")
    manifest = json.loads((out / "manifest.json").read_text())
    variants = manifest["towers"]["text"]["variants"]
    assert manifest["towers"]["text"]["inputs"] == ["input_ids", "attention_mask"]
    assert set(variants) == {"fp32", "opt", "int8"}
    assert variants["opt"]["validation"]["min_cosine"] >= 0.99999  # its fusions: test_variants.EXPECTED_FUSIONS
    assert variants["int8"]["build"]["int8_matmuls"] == 4 * 3  # Wqkv, Wo, Wi, Wo in each of the 3 layers
    assert variants["int8"]["validation"]["passed"]
    ref = zoo.reference(src).encode(TEXTS)
    assert_parity(ref, SentenceEncoder(out, variant="opt").encode(TEXTS))
    int8 = SentenceEncoder(out, variant="int8").encode(TEXTS)
    assert_parity(ref, int8, gate=0.99)
    assert row_cosines(ref, int8).min() < 0.999999  # quantized for real


def test_reranker_with_mean_classifier_pooling(tmp_path):
    """ModernBertForSequenceClassification with classifier_pooling "mean" (the head pools with the attention
    mask) as a CrossEncoder; the default "cls" head is in test_cross_encoder's architecture list."""
    from sentence_transformers import CrossEncoder as StCrossEncoder

    from exporters import export_model
    from exporters.battery import PASSAGES, long_text
    from st_runtime import CrossEncoder

    src = build_tiny_cross_encoder(tmp_path / "src", "modernbert", config={"classifier_pooling": "mean"})
    out = export_model(str(src), output=tmp_path / "out", variants=["opt"], log=lambda _m: None)
    pairs = [("How big is London", p) for p in PASSAGES] + [("a", "b"), ("q", long_text(300))]
    ref = StCrossEncoder(str(src), device="cpu")
    want = ref.predict(pairs)
    for variant in ("fp32", "opt"):
        ours = CrossEncoder(out, variant=variant)
        for batch_size in (1, None):
            np.testing.assert_allclose(ours.predict(pairs, batch_size=batch_size), want, atol=1e-5)
    assert json.loads((out / "manifest.json").read_text())["task"] == "cross-encoder"
