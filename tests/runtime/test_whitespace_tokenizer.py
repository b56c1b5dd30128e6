"""st_runtime.glove.WhitespaceTokenizer against sentence-transformers' WhitespaceTokenizer, id for id."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from st_runtime.glove import WhitespaceTokenizer

ws = pytest.importorskip("sentence_transformers.models.tokenizer")
word_mod = pytest.importorskip("sentence_transformers.sentence_transformer.modules.tokenizer.word")

VOCAB = [
    "PADDING_TOKEN",
    "London",
    "london",
    "U.S.",
    "u.s",
    "it's",
    "hello",
    "world",
    "...",
    "",
    "A",
    "the",
    "Café",
    "straße",
    "hello",
    "e-mail",
    "x",
]
PIECES = [
    "London",
    "LONDON",
    "london",
    "u.s.",
    "U.S.",
    "U.S",
    "it's",
    "(it's)",
    "hello,",
    "'hello'",
    "World!",
    "...",
    "..",
    "!",
    "?",
    "—",
    "the",
    "The",
    "THE",
    "a",
    "A",
    "café",
    "Café",
    "CAFÉ",
    "straße",
    "STRASSE",
    "e-mail",
    "x",
    "x.",
    ".x",
    "zzz",
    "",
    " ",
    "\t",
    "\n",
    "\u00a0",
    "\u2003",
]


def _pair(do_lower_case: bool, stop_words):
    ref = ws.WhitespaceTokenizer(VOCAB, stop_words=stop_words, do_lower_case=do_lower_case)
    ours = WhitespaceTokenizer(VOCAB, stop_words=stop_words, do_lower_case=do_lower_case)
    return ref, ours


@pytest.mark.parametrize("do_lower_case", [False, True])
@pytest.mark.parametrize("stop_words", ["english", "none", "custom"])
@settings(max_examples=100, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES) | st.text(alphabet=string.punctuation + "abAB. ", max_size=6), max_size=12),
    seps=st.lists(st.sampled_from([" ", "  ", "\t", "\n", "", "\u00a0"]), min_size=12, max_size=12),
)
def test_ids_equal_sentence_transformers(do_lower_case, stop_words, pieces, seps):
    words = {"english": word_mod.ENGLISH_STOP_WORDS, "none": [], "custom": ["london", "!", "x", ""]}[stop_words]
    ref, ours = _pair(do_lower_case, words)
    text = "".join(p + s for p, s in zip(pieces, seps))
    assert ours.tokenize(text) == ref.tokenize(text), repr(text)


def test_truncation_and_encoding_interface():
    _, ours = _pair(False, [])
    ours.enable_truncation(max_length=2)
    enc = ours.encode("hello world London")
    assert enc.ids == [14, 7] and enc.type_ids == [0, 0] and enc.attention_mask == [1, 1]
    ours.no_truncation()
    assert len(ours.encode_batch(["hello world London"])[0].ids) == 3
