"""Property-based: encoding a list equals encoding its items one by one, in order, for any batch size."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from st_runtime import SentenceEncoder  # noqa: E402
from st_runtime.inputs import LongTextCutter  # noqa: E402

_texts = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60) | st.sampled_from(
    ["", " ", "a", "東京", "😀", "\ud800", "x\x00y", "London has 9,787,426 inhabitants", "word " * 60]
)
_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def enc(tiny_bert):
    return SentenceEncoder(tiny_bert[1], threads=1)


@_SETTINGS
@given(texts=st.lists(_texts, min_size=0, max_size=20), batch_size=st.integers(1, 40))
def test_list_equals_row_wise_encode(enc, texts, batch_size):
    got = enc.encode(texts, batch_size=batch_size)
    assert got.shape == (len(texts), enc.get_sentence_embedding_dimension())
    for i, t in enumerate(texts):
        np.testing.assert_allclose(got[i], enc.encode(t), atol=1e-5)


@_SETTINGS
@given(texts=st.lists(_texts, min_size=1, max_size=20), batch_size=st.integers(1, 40), data=st.data())
def test_batching_and_sorting_preserve_order(enc, texts, batch_size, data):
    perm = data.draw(st.permutations(range(len(texts))))
    got = enc.encode(texts, batch_size=batch_size)
    shuffled = enc.encode([texts[i] for i in perm], batch_size=batch_size)
    np.testing.assert_allclose(shuffled, got[list(perm)], atol=1e-5)


_long_pieces = st.sampled_from(
    [
        "a",
        "Σ",
        "é",
        "e\u0301",
        " ",
        "  ",
        "東",
        ".",
        ",",
        "[MASK]",
        "\t",
        "😀",
        "Ab",
        "x" * 150,
        "\u200f",
        "\x00",
        "ς",
        "İ",
    ]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_long_pieces, min_size=200, max_size=1500), max_len=st.integers(3, 48))
def test_long_text_shortcut_keeps_the_tokens_of_the_full_text(tiny_bert, parts, max_len):
    e = SentenceEncoder(tiny_bert[1], threads=1)
    e.max_seq_length = max_len
    text = "".join(parts)
    cutter = LongTextCutter(e.tokenizer)
    assert e.tokenizer.encode(cutter.cut(text)).ids == e.tokenizer.encode(text).ids
