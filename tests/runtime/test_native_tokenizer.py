"""Native WordPiece (st_runtime.nativetok, the C extension st_runtime._wordpiece) gives exactly the tokenizer's own
ids for every WordPiece tokenizer of the test zoo and the real all-MiniLM-L6-v2 tokenizer: generated and real text
(ASCII and not), control characters, added tokens in any letter case, pairs (left to the tokenizer), every
truncation on both sides, with and without special tokens, from several threads at once; tokenizers it does not
reproduce get no native form; Packed encodings give the same graph inputs as lists of encodings."""

from __future__ import annotations

import copy
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TOKENIZERS
from tokenizers import Tokenizer, normalizers, pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the corpora of benchmarks/ (also in the slim venv)
from test_fast_tokenizer import EDGES, _backend, _minilm
from test_long_texts import _truncating

from benchmarks.common import docs_corpus, make_corpus
from st_runtime import nativetok
from st_runtime.batching import build_feeds, token_counts
from st_runtime.feeding import Tokenizers
from st_runtime.inputs import TokenItem
from st_runtime.nativetok import NativeWordPiece
from st_runtime.packed import Packed, join, take

MORE = [
    "[MASK]ed [mask] [Mask] x[cls]y [unk][UNK]",
    "a[UN\x00K]b c[se\x07p]d",
    "pre##fix ## #word ##ing",
    "unaffable tokenization qwertyuiopasdfghjkl " + "x" * 101 + " " + "y" * 100,
    "\x0b\x0c vertical\x0btab form\x0cfeed \x1c\x1d\x1e\x1f separators",
    "1234567890 3.14159 1e-10 0xDEADBEEF user@example.com https://example.com/a?b=c&d=e#f",
]


def _texts() -> list:
    gen, docs = make_corpus(n_queries=300, n_passages=30), docs_corpus(n_queries=300, n_passages=30)
    return gen["queries"] + gen["passages"] + docs["queries"] + docs["passages"] + EDGES + MORE


def _same(native: NativeWordPiece, tok: Tokenizer, items: list, specials: bool = True) -> None:
    got = native.encode_all(lambda rest: tok.encode_batch(rest, add_special_tokens=specials), items, specials)
    want = tok.encode_batch(items, add_special_tokens=specials)
    assert isinstance(got, Packed) and len(got) == len(items)
    assert np.array_equal(token_counts(got), [len(e) for e in want])
    for item, a, b in zip(items, got, want, strict=True):
        assert (a.ids, a.type_ids) == (b.ids, b.type_ids), item


def test_the_extension_is_built():
    """CI and every install with a C compiler build it (setup.py); without it st-runtime is slower, not wrong."""
    assert nativetok.available()


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_native_wordpiece_gives_the_tokenizers_own_ids(kind):
    pytest.importorskip("transformers")  # the zoo's tokenizers are made with it
    base = _backend(kind)
    # the zoo's WordPiece tokenizers with BERT's pre-tokenizer have a native form; the others (BPE, Unigram) none
    assert (NativeWordPiece.make(base) is not None) == (kind in ("bert", "distilbert", "mpnet"))
    if kind not in ("bert", "distilbert", "mpnet"):
        return
    texts = _texts()
    pairs = [(q, p) for q, p in zip(texts[:20], texts[300:320], strict=True)]
    for max_len, side in ((None, "right"), (3, "right"), (16, "left"), (128, "right"), (128, "left")):
        tok = _truncating(base, max_len, side)
        native = NativeWordPiece.make(tok)
        assert native is not None, (max_len, side)
        for specials in (True, False):
            _same(native, tok, texts + pairs, specials)


def test_real_minilm_tokenizer_is_native_with_the_same_ids():
    tok = _truncating(_minilm(), 256)
    native = NativeWordPiece.make(tok)
    assert native is not None
    texts = _texts()
    _same(native, tok, texts)
    _, ok = native.encode(texts)
    assert ok.mean() > 0.9  # most of the corpus is ASCII without special tokens
    _, ok = native.encode(["naïve", "x [MASK] y", "x [mask] y", "[Cls]", "[MA\x00SK]", ("a", "b"), "plain [ma sk]"])
    assert ok.tolist() == [False, False, False, False, False, False, True]


def test_tokenizers_it_does_not_reproduce_get_no_native_form():
    tok = _minilm()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # another pre-tokenizer
    assert NativeWordPiece.make(tok) is None
    tok = _minilm()
    tok.normalizer = normalizers.Sequence([normalizers.Replace("a", "b"), normalizers.Lowercase()])
    assert NativeWordPiece.make(tok) is None  # a normalizer step it does not do
    tok = _minilm()
    tok.enable_truncation(1)  # no room for the text between [CLS] and [SEP]
    assert NativeWordPiece.make(tok) is None


def test_a_native_form_that_differs_is_not_used(monkeypatch):
    tok = _minilm()
    monkeypatch.setattr(nativetok, "_added_forms", lambda tokenizer: [])  # "forgets" the added tokens
    assert NativeWordPiece.make(tok) is None


def test_a_cased_tokenizer_keeps_case_and_leaves_made_special_tokens_to_the_tokenizer():
    tok = _minilm()
    tok.no_padding()
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=False, strip_accents=False)
    native = NativeWordPiece.make(tok)
    assert native is not None
    texts = ["x [MA\x00SK] y", "[CL\x07S]", "plain \x00 text", "[MASK]", "Hello World HELLO"]
    _same(native, tok, texts)
    assert native.encode(texts)[1].tolist() == [False, False, True, False, True]


def test_threads_encoding_at_once_get_their_own_results():
    tok = _truncating(_minilm(), 128)
    native = NativeWordPiece.make(tok)
    assert native is not None
    texts = make_corpus(n_queries=2000, n_passages=200)["queries"]
    want = [e.ids for e in tok.encode_batch(texts)]
    got: dict[int, list] = {}

    def work(k: int) -> None:
        mine = texts[k:] + texts[:k]
        got[k] = [e.ids for e in native.encode_all(tok.encode_batch, mine, threads=2)]

    spread = native.encode_all(tok.encode_batch, texts * 3, True, threads=4)  # in parts, on the extension's threads
    assert [e.ids for e in spread] == want * 3
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert got[k] == want[k:] + want[:k]


def test_feeds_from_packed_encodings_equal_feeds_from_encodings():
    tok = _truncating(_minilm(), 64)
    texts = _texts()[:400] + [("a pair", "of texts")] * 3
    pairs = [TokenItem([101, 7, 8, 102], [0, 1, 1, 1]), TokenItem([5])]
    sets = Tokenizers(copy.deepcopy(tok), 64, "right", True, threads=2)
    packed = sets.encode_fn(64)(texts + pairs)
    listed = [*tok.encode_batch(texts), *pairs]
    assert isinstance(packed, Packed) and packed.type_ids is not None
    lengths = token_counts(packed)
    assert np.array_equal(lengths, token_counts(listed))
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    rng = np.random.default_rng(0)
    for side in ("right", "left"):
        for _ in range(5):
            idx = rng.choice(len(texts) + 2, size=37, replace=False)
            width = int(lengths[idx].max()) + 3
            a = build_feeds(packed, lengths, idx, width, inputs, 0, padding_side=side)
            b = build_feeds(listed, lengths, idx, width, inputs, 0, padding_side=side)
            for k in inputs:
                assert np.array_equal(a[k], b[k]), (side, k)


def test_packed_sequences_slice_take_join_and_scatter():
    items = [TokenItem([1, 2, 3]), TokenItem([4]), TokenItem([5, 6], [0, 1]), TokenItem([])]
    packed = Packed.of(items)
    assert [e.ids for e in packed] == [[1, 2, 3], [4], [5, 6], []]
    assert packed[-2].type_ids == [0, 1] and packed[1].attention_mask == [1] and len(packed[0]) == 3
    with pytest.raises(IndexError):
        packed[4]
    assert [e.ids for e in packed[1:3]] == [[4], [5, 6]] and [e.ids for e in packed[::2]] == [[1, 2, 3], [5, 6]]
    assert [e.ids for e in take(packed, [2, 0])] == [[5, 6], [1, 2, 3]]
    assert [e.type_ids for e in join([packed[2:], packed[:1]])] == [[0, 1], [], [0, 0, 0]]
    assert [e.ids for e in join([packed[:1], items[1:2]])] == [[1, 2, 3], [4]]  # a list part: a list
    mixed = Packed.scatter(3, [(np.array([2, 0]), packed[:2]), (np.array([1]), packed[2:3])])
    assert [(e.ids, e.type_ids) for e in mixed] == [([4], [0]), ([5, 6], [0, 1]), ([1, 2, 3], [0, 0, 0])]
    # ``+`` concatenates as on the lists tokenize returned before: Packed + Packed stays packed, a list makes a list
    both = packed[2:] + packed[:1]
    assert isinstance(both, Packed) and [e.ids for e in both] == [[5, 6], [], [1, 2, 3]]
    assert [e.ids for e in items[1:2] + packed[:1]] == [[4], [1, 2, 3]]
    assert [e.ids for e in packed[:1] + items[1:2]] == [[1, 2, 3], [4]]
    with pytest.raises(TypeError):
        packed + 1


def test_fill_refuses_arrays_of_the_wrong_shape():
    from st_runtime._wordpiece import fill_batches

    packed = Packed.of([TokenItem([1, 2, 3])])

    def fill(order, width, out, plan=None, types=None):
        plan = np.array([[0, len(order), width]]) if plan is None else plan
        fill_batches(packed.ids, packed.bounds, order, plan, 0, False, [(out, out.copy(), out.copy())], types, 1)

    out = np.empty((1, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="wider than"):
        fill(np.array([0]), 2, out)
    with pytest.raises(ValueError, match="out of range"):
        fill(np.array([3]), 2, out)
    with pytest.raises(ValueError, match="must be"):
        fill(np.array([0]), 3, out)
    with pytest.raises(ValueError, match="bytes"):
        fill(np.array([0], dtype=np.int32), 2, out)
    with pytest.raises(ValueError, match=r"one \(start, end, width\) per output"):
        fill(np.array([0]), 2, out, plan=np.array([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(ValueError, match="types like ids"):
        fill(np.array([0]), 3, np.empty((1, 3), dtype=np.int64), types=np.zeros(2, dtype=np.int64))


def test_a_gpu_tower_builds_its_batches_on_the_feed_threads_with_the_same_rows(tiny_bert):
    """On a GPU every batch's arrays are built at once, by C on the feed threads (build_all_feeds): the same rows
    as built batch by batch, in input order, for a call of many batches."""
    from st_runtime import SentenceEncoder

    gen, docs = make_corpus(n_queries=400, n_passages=40), docs_corpus(n_queries=100, n_passages=20)
    texts = gen["queries"] + docs["passages"] + EDGES + gen["passages"] + docs["queries"]
    enc = SentenceEncoder(tiny_bert[1], feed_threads=3)
    assert enc.text_tower.tokenizers.entry(enc.text_tower.max_seq_length)[2] is not None  # native
    expected = enc.encode(texts, batch_size=16)
    feeds = enc.text_tower.feeds
    enc.text_tower.feeds = None  # flat ids: the GPU path builds no batch alone
    enc.text_tower.on_gpu = True  # as on CUDA (the CPU session runs the batches)
    np.testing.assert_array_equal(enc.encode(texts, batch_size=16), expected)
    enc.text_tower.feeds = feeds
    enc.text_tower.tokenizers.entry = lambda max_len, direction=None: (enc.tokenizer, None, None)  # encodings
    np.testing.assert_array_equal(enc.encode(texts, batch_size=16), expected)  # built one batch ahead
