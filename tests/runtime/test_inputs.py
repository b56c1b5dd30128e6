"""Hostile and unusual inputs to encode: odd Unicode, huge texts, many texts, container types."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from helpers import FOX_WORDS, assert_parity

from st_runtime import SentenceEncoder
from st_runtime.errors import UnsupportedInputError
from st_runtime.inputs import LongTextCutter, repair_surrogates

ODD_TEXTS = {
    "lone_high_surrogate": "\ud800",
    "lone_low_surrogate_inside": "a\udc00b test",
    "surrogate_pair_as_two_code_points": "smile \ud83d\ude00 now",
    "reversed_surrogate_pair": "x\ude00\ud83dy",
    "nul_only": "\x00",
    "nul_inside": "nul\x00byte inside\x00",
    "rtl_marks": "\u200fשלום עולם\u200f and \u202eevil\u202c text",
    "arabic": "مرحبا بالعالم",
    "combining": "e\u0301\u0302 n\u0303 a\u0308\u0308\u0308 Zalgo Z\u0351\u0352\u0353",
    "emoji": "I love this! 😀🎉 👩‍👩‍👧 🇫🇷 👍🏽",
    "cjk": "東京は日本の首都です。北京是中国的首都。",
    "mixed_scripts": "Москва — 東京 — London — القاهرة",
    "control_chars": "tab\there\nnewline\rcr\x0bvt\x1besc",
    "replacement_char": "\ufffd\ufffd",
    "empty": "",
    "space": " ",
    "whitespace_only": " \t\n\r  \u3000\u00a0",
    "single_char": "a",
    "single_punct": "?",
    "single_cjk": "東",
    "single_combining_mark": "\u0301",
    "noncharacter": "\uffff\U0010ffff",
}


def test_surrogate_repair_rule():
    assert repair_surrogates("\ud800") == "\ufffd"
    assert repair_surrogates("a\udc00b") == "a\ufffdb"
    assert repair_surrogates("\ud83d\ude00") == "\U0001f600"  # a pair given as two code points is joined
    assert repair_surrogates("\ude00\ud83d") == "\ufffd\ufffd"  # wrong order: two lone surrogates
    clean = "東京 😀 e\u0301"
    assert repair_surrogates(clean) is clean


def test_sentence_transformers_itself_rejects_lone_surrogates(ref):
    # Why st_runtime repairs them: the Rust tokenizer cannot take them, so sentence-transformers raises.
    with pytest.raises(TypeError):
        ref.encode(["\ud800"])


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
def test_odd_text_matches_sentence_transformers(enc, ref, name):
    text = ODD_TEXTS[name]
    got = enc.encode(text)
    assert got.shape == (enc.get_sentence_embedding_dimension(),) and np.all(np.isfinite(got))
    # For surrogates the reference is sentence-transformers on the repaired text; otherwise on the text.
    want = ref.encode([repair_surrogates(text)])
    assert_parity(want, got[None, :])


def test_odd_texts_in_one_batch_keep_order(enc, ref):
    names = sorted(ODD_TEXTS)
    texts = [ODD_TEXTS[n] for n in names]
    got = enc.encode(texts, batch_size=4)
    assert_parity(ref.encode([repair_surrogates(t) for t in texts]), got)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(got[i], enc.encode(t), atol=1e-6)


@pytest.mark.parametrize("pair", [("\ud800 left", "right"), ("left", "right \udfff"), ("\x00", "東京 😀")])
def test_odd_text_pairs(enc, pair):
    got = enc.encode([list(pair)])
    want = enc.encode([[repair_surrogates(pair[0]), repair_surrogates(pair[1])]])
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- very long texts
MILLION = 1_000_000


def _random_text(alphabet: list[str], sep: str, seed: int) -> str:
    """A non-repeating text of exactly MILLION characters, so a wrong truncation point changes the vector."""
    rng = random.Random(seed)
    words = rng.choices(alphabet, k=MILLION if not sep else MILLION // 3)
    return sep.join(words)[:MILLION]


_WORDS = [
    *(w for w in FOX_WORDS if w != "a"),
    *"London has many inhabitants census river bridge city people weather lovely today".split(),  # noqa: SIM905
]
_CJK_CHARS = list("東京は日本の首都です北京是中国的首都大阪名古屋")

LONG_TEXTS = {
    "words": lambda: _random_text(_WORDS, " ", 1),
    "cjk": lambda: _random_text(_CJK_CHARS, "", 2),
    "one_huge_word": lambda: "a" * MILLION,
    "emoji_and_surrogates": lambda: ("😀 \ud800 word " * (MILLION // 9 + 1))[:MILLION],
}


class _ShapeRecorder:
    """Stands in for the onnxruntime session and records the shape of every batch fed to it."""

    def __init__(self, session):
        self._session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, outputs, feeds, *args, **kwargs):
        self.shapes.append(feeds["input_ids"].shape)
        return self._session.run(outputs, feeds, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def recording_enc(tiny_bert):
    e = SentenceEncoder(tiny_bert[1])
    e.text_tower.runner.session = _ShapeRecorder(e.text_tower.session)
    return e


def _kept_prefix(enc: SentenceEncoder, text: str) -> str:
    """The part of ``text`` whose tokens survive truncation, from the tokenizer's own offsets."""
    encoding = enc.tokenizer.encode(text)  # the full text, without the runtime's shortcut
    offsets = [o for o, special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
    return text[: offsets[-1][1]]


@pytest.mark.parametrize("kind", sorted(LONG_TEXTS))
def test_million_character_text(recording_enc, ref, kind):
    text = LONG_TEXTS[kind]()
    assert len(text) == MILLION
    t0 = time.perf_counter()
    got = recording_enc.encode(text)
    elapsed = time.perf_counter() - t0
    print(f"{kind}: {elapsed:.3f}s")
    assert elapsed < 15, f"{elapsed:.1f}s for one {len(text)}-character text"
    # Truncated at max_seq_length: no batch wider than that was ever built.
    assert max(s[1] for s in recording_enc.text_tower.runner.session.shapes) <= recording_enc.max_seq_length
    # ... and the result is the embedding of the kept part of the text.
    kept = _kept_prefix(recording_enc, repair_surrogates(text))
    assert len(kept) < 10_000 or kind == "one_huge_word"  # one word of 1e6 chars is one [UNK] token
    np.testing.assert_array_equal(got, recording_enc.encode(kept))
    assert_parity(ref.encode([repair_surrogates(text)]), got[None, :])


def test_long_text_cutter_is_exact_on_word_texts(enc):
    """The shortcut must give the tokens of the full text (checked on texts where it cuts)."""
    cutter = LongTextCutter(enc.tokenizer)
    assert cutter.pattern is not None, "the BERT WordPiece tokenizer should qualify for the shortcut"
    rng = random.Random(7)
    pieces = ["a", "Σ", "é", "e\u0301", " ", " ", "東", ".", "[MASK]", "\t", "x" * 120, "😀", "\u200f", "\x00", "Ab"]
    cut_count = 0
    for _ in range(150):
        parts: list[str] = []
        while sum(map(len, parts)) < 5000:
            p = rng.choice(pieces)
            parts.append(p * rng.randint(1, 80) if rng.random() < 0.3 else p)
        text = "".join(parts)
        short = cutter.cut(text)
        cut_count += short is not text
        assert enc.tokenizer.encode(short).ids == enc.tokenizer.encode(text).ids, repr(text[:200])
    assert cut_count > 30  # the test exercised the shortcut, not only its fallback


def test_ten_thousand_mixed_length_texts_in_one_call(recording_enc, ref):
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "東京", "😀", "naïve"]
    texts = []
    for _ in range(10_000):
        n = rng.choice([0, 1, 3, 10, 40, 100, 400])
        texts.append(" ".join(rng.choice(words) for _ in range(n)))
    for i in (17, 5000, 9999):
        texts[i] = LONG_TEXTS["words"]()
    t0 = time.perf_counter()
    got = recording_enc.encode(texts, batch_size=64)
    elapsed = time.perf_counter() - t0
    print(f"10,000 mixed texts ({sum(map(len, texts))} characters): {elapsed:.2f}s")
    assert got.shape == (10_000, recording_enc.get_sentence_embedding_dimension())
    assert elapsed < 60, f"{elapsed:.1f}s for 10,000 texts"
    shapes = recording_enc.text_tower.runner.session.shapes
    assert max(s[1] for s in shapes) <= recording_enc.max_seq_length
    assert sum(s[0] for s in shapes) == 10_000 and max(s[0] for s in shapes) <= 64
    sample = [*sorted(rng.sample(range(10_000), 150)), 17, 5000, 9999]
    assert_parity(ref.encode([texts[i] for i in sample]), got[sample])


# ---------------------------------------------------------------------------- containers
TEXTS = ["How big is London", "東京", "", "a"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: np.array(t), id="numpy_unicode_array"),
        pytest.param(lambda t: np.array(t, dtype=object), id="numpy_object_array"),
        pytest.param(lambda t: [np.str_(x) for x in t], id="list_of_numpy_str"),
        pytest.param(tuple, id="tuple"),
        pytest.param(lambda t: (x for x in t), id="generator"),
        pytest.param(lambda t: iter(t), id="iterator"),
        pytest.param(lambda t: dict.fromkeys(t).keys(), id="dict_keys"),
    ],
)
def test_containers_accepted_like_lists(enc, make):
    np.testing.assert_array_equal(enc.encode(make(TEXTS)), enc.encode(list(TEXTS)))


def test_zero_dim_numpy_string_is_a_single_text(enc):
    np.testing.assert_array_equal(enc.encode(np.array("How big is London")), enc.encode("How big is London"))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: np.array(p), id="numpy_2d_pairs"),
        pytest.param(lambda p: tuple(tuple(x) for x in p), id="tuple_of_tuples"),
        pytest.param(lambda p: (list(x) for x in p), id="generator_of_lists"),
    ],
)
def test_pair_containers(enc, make):
    pairs = [["London", "has 9 million people"], ["東京", "首都"]]
    np.testing.assert_array_equal(enc.encode(make(pairs)), enc.encode(pairs))


@pytest.mark.parametrize(
    "bad,index",
    [
        pytest.param(np.array([b"a", b"b"]), 0, id="numpy_bytes_array"),
        pytest.param(range(3), 0, id="range_of_ints"),
        pytest.param((x for x in ["ok", None]), 1, id="generator_with_none"),
        pytest.param(np.array([1.0, 2.0]), 0, id="numpy_float_array"),
        pytest.param(["ok", ["a", 1]], 1, id="pair_with_number"),
        pytest.param(["ok", ("a",)], 1, id="one_tuple"),
    ],
)
def test_bad_containers_name_index(enc, bad, index):
    with pytest.raises(UnsupportedInputError, match=f"input {index} is a"):
        enc.encode(bad)
