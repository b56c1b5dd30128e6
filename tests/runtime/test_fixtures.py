"""Every committed fixture (tests/fixtures: BERT with an int8 variant, MPNet, CLIP text and image, word
embeddings) reproduces the sentence-transformers outputs saved beside it, on the slim install (no torch):
mixed lengths in one batch, batch of one, a one-token text, a text past max_seq_length, pairs, images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.make_fixtures import REFERENCE_PAIRS, REFERENCE_TEXTS, reference_images
from helpers import assert_parity as _assert_parity
from helpers import row_cosines

from st_runtime import SentenceEncoder

NAMES = ["bert", "mpnet", "clip", "glove"]


def assert_parity(ref, got):
    """Parity, where rows sentence-transformers gives as zeros (word embeddings of a text without known
    words) must be zeros here too."""
    ref, got = np.asarray(ref), np.asarray(got)
    zero = np.linalg.norm(ref, axis=1) == 0
    np.testing.assert_allclose(got[zero], 0.0, atol=1e-7)
    _assert_parity(ref[~zero], got[~zero])


@pytest.mark.parametrize("name", NAMES)
def test_fixture_reproduces_sentence_transformers(fixtures_dir, name):
    ref = np.load(fixtures_dir / name / "reference.npz")
    enc = SentenceEncoder(fixtures_dir / name / "export")
    for bs in (None, 1, 4):
        assert_parity(ref["texts"], enc.encode(REFERENCE_TEXTS, batch_size=bs))
    assert_parity(ref["texts"][7:8], enc.encode(REFERENCE_TEXTS[7:8]))  # alone: past max_seq_length
    if "pairs" in ref:
        assert_parity(ref["pairs"], enc.encode([list(p) for p in REFERENCE_PAIRS]))
    if "images" in ref:
        images = reference_images()
        assert_parity(ref["images"], enc.encode(images))
        assert_parity(ref["images"], enc.encode(images, batch_size=1))


def test_int8_fixture_stays_within_its_gate(fixtures_dir):
    folder = fixtures_dir / "bert" / "export"
    gate = json.loads((folder / "manifest.json").read_text())["towers"]["text"]["variants"]["int8"]
    enc = SentenceEncoder(folder, variant="int8")
    assert enc.variant == "int8" and SentenceEncoder(folder).variant == "fp32"
    cos = row_cosines(np.load(fixtures_dir / "bert" / "reference.npz")["texts"], enc.encode(REFERENCE_TEXTS))
    assert cos.min() >= gate["validation"]["gate_min_cosine"]


@pytest.mark.parametrize("name", ["bert", "mpnet", "glove"])
def test_token_embeddings_match_sentence_transformers(fixtures_dir, name):
    """encode(output_value="token_embeddings"): each text's rows without padding, as sentence-transformers trims
    them, whatever the batch company; output_value=None: inputs, token and sentence embeddings per text."""
    ref = np.load(fixtures_dir / name / "reference.npz")
    enc = SentenceEncoder(fixtures_dir / name / "export")
    want = [t[~np.isnan(t).any(axis=1)] for t in ref["tokens"]]
    # A text without any token (word embeddings: "" or only stop words) has no rows, as sentence-transformers gives
    # it alone; in a batch it gives one row of padding there.
    enc_tokens = enc.text_tower.tokenize(REFERENCE_TEXTS)
    want = [w if len(e) else w[:0] for w, e in zip(want, enc_tokens)]
    for bs in (None, 1, 3):
        got = enc.encode(REFERENCE_TEXTS, output_value="token_embeddings", batch_size=bs)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=2e-5)
    one = enc.encode(REFERENCE_TEXTS[3], output_value="token_embeddings")
    np.testing.assert_allclose(one, want[3], atol=2e-5)
    full = enc.encode(REFERENCE_TEXTS, output_value=None)
    for item, w, sentence in zip(full, want, ref["texts"]):
        assert len(item["input_ids"]) == len(item["attention_mask"]) == len(w)
        assert item["attention_mask"].all()
        np.testing.assert_allclose(item["token_embeddings"], w, atol=2e-5)
        assert_parity(sentence[None], item["sentence_embedding"][None])
    with pytest.raises(ValueError, match="output_value"):
        enc.encode(["a"], output_value="cls")
    with pytest.raises(ValueError, match="precision"):
        enc.encode(["a"], output_value="token_embeddings", precision="int8")


def test_clip_has_no_token_output(fixtures_dir):
    from st_runtime.errors import GraphLoadError

    with pytest.raises(GraphLoadError, match="sentence embeddings only"):
        SentenceEncoder(fixtures_dir / "clip" / "export").encode(["a"], output_value="token_embeddings")
