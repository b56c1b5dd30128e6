"""Two pieces of the model core the doors build on, on the committed fixtures (slim install, no torch):

* the embedding before the model's final Normalize (``output_value="sentence_embedding_unnormalized"``,
  ``Prepared.unnormalized``): sentence-transformers' own pre-Normalize output, saved in the fixtures;
* already tokenized inputs (``TokenItem``): the same rows as the text they were tokenized from, truncated as text
  is, in any batch company.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fixtures.make_fixtures import REFERENCE_TEXTS
from helpers import assert_parity

from st_runtime import SentenceEncoder
from st_runtime.errors import OutputNotExportedError
from st_runtime.inputs import TokenItem

UNNORMALIZED = "sentence_embedding_unnormalized"


@pytest.mark.parametrize("name", ["bert", "mpnet"])
def test_unnormalized_output_is_sentence_transformers_before_normalize(fixtures_dir, name):
    ref = np.load(fixtures_dir / name / "reference.npz")["unnormalized"]
    enc = SentenceEncoder(fixtures_dir / name / "export")
    for bs in (None, 1, 3):
        got = enc.encode(REFERENCE_TEXTS, batch_size=bs, output_value=UNNORMALIZED)
        assert_parity(ref, got)
        # not unit vectors, and their lengths are sentence-transformers' (cosine alone does not see a scale)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-5)
    assert not np.allclose(np.linalg.norm(ref, axis=1), 1.0)
    normalized = enc.encode(REFERENCE_TEXTS)
    got = enc.encode(REFERENCE_TEXTS, output_value=UNNORMALIZED)
    np.testing.assert_allclose(got / np.linalg.norm(got, axis=1, keepdims=True), normalized, atol=1e-6)
    one = enc.encode(REFERENCE_TEXTS[3], output_value=UNNORMALIZED)
    assert one.shape == (ref.shape[1],)


def test_model_without_normalize_gives_its_usual_output(fixtures_dir):
    enc = SentenceEncoder(fixtures_dir / "glove" / "export")  # averages word vectors, no Normalize
    np.testing.assert_array_equal(enc.encode(REFERENCE_TEXTS, output_value=UNNORMALIZED), enc.encode(REFERENCE_TEXTS))


def test_export_without_the_output_is_refused_with_the_fix(fixtures_dir, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(fixtures_dir / "bert" / "export", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["towers"]["text"]["unnormalized_output"]  # as an export made before the output existed
    (folder / "manifest.json").write_text(json.dumps(manifest))
    enc = SentenceEncoder(folder)
    with pytest.raises(OutputNotExportedError, match="Export the model again"):
        enc.encode(["a text"], output_value=UNNORMALIZED)
    enc.encode(["a text"])  # the main output still works


@pytest.fixture(scope="module")
def bert(fixtures_dir):
    return SentenceEncoder(fixtures_dir / "bert" / "export")


def _ids(enc, texts, max_length=None):
    tok = enc.text_tower.tokenizer_for(max_length)
    return [TokenItem(e.ids) for e in tok.encode_batch(texts)]


def test_token_items_give_the_rows_of_their_texts(bert):
    texts = REFERENCE_TEXTS
    want = bert.encode(texts)
    items = _ids(bert, texts, bert.max_seq_length)  # tokenized as encode tokenizes them
    np.testing.assert_array_equal(bert.encode(items, batch_size=len(items)), bert.encode(texts, batch_size=len(items)))
    mixed = [it if i % 2 else t for i, (t, it) in enumerate(zip(texts, items))]
    assert_parity(want, bert.encode(mixed))
    for bs in (1, 4):
        assert_parity(want, bert.encode(items, batch_size=bs))
    one = bert.encode(items[5])  # a single TokenItem is one input
    assert one.shape == want[5].shape


def test_token_items_are_cut_on_the_truncation_side_and_take_no_prompt(bert):
    item = TokenItem(list(range(1000, 1000 + 3 * bert.max_seq_length)))
    assert len(item.truncated(10, "right")) == 10 and item.truncated(10, "right").ids[0] == 1000
    assert item.truncated(10, "left").ids[-1] == item.ids[-1]
    cut = TokenItem(item.ids[: bert.max_seq_length])
    np.testing.assert_array_equal(bert.encode([item]), bert.encode([cut]))
    short = _ids(bert, ["a short text"])[0]
    np.testing.assert_array_equal(bert.encode([short], prompt="query: "), bert.encode([short]))


def test_token_item_type_ids_are_fed(bert):
    tok = bert.text_tower.tokenizer
    pair = tok.encode("How big is London", "London has 9 million inhabitants.")
    got = bert.encode([TokenItem(pair.ids, pair.type_ids)])
    want = bert.encode([["How big is London", "London has 9 million inhabitants."]])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="type_ids"):
        TokenItem([1, 2, 3], [0, 0])
