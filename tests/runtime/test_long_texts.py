"""The long-text shortcuts (st_runtime.longtext.LongTextCutter) are exact: the cut, compacted or checked text gives
the token ids of the full text, for the fixtures' tokenizers and for tokenizers of the other families built here
(Metaspace + Unigram, byte-level BPE, Qwen2's split, Whitespace + WordLevel); and they are cheap."""

from __future__ import annotations

import random
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from st_runtime.inputs import PRECUT_FACTOR, LongTextCutter, prepare
from st_runtime.longtext.chars import CUT, REMOVE, SPACE, WORD, character_codes, word_characters

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "London has 9,787,426 inhabitants at the 2011 census.",
    "Москва — столица России. 東京は日本の首都です。",
    "I love this! 😀🎉 naïve café déjà vu",
    "tokenizers split words into pieces; pieces into ids",
] * 20


def _fixture(name: str) -> Tokenizer:
    return Tokenizer.from_file(str(FIXTURES / name / "export" / "tokenizer.json"))


def _bert_variant(**normalizer) -> Tokenizer:
    """The BERT fixture's tokenizer with other BertNormalizer settings (cased, no accent stripping, ...)."""
    tok = _fixture("bert")
    tok.normalizer = normalizers.BertNormalizer(**normalizer) if normalizer else None
    return tok


def _with_specials(tok: Tokenizer, bos: str, eos: str) -> Tokenizer:
    tok.add_special_tokens([bos, eos, "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
    )
    return tok


def _unigram() -> Tokenizer:  # XLM-R / multilingual-e5 style
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        _CORPUS, trainers.UnigramTrainer(vocab_size=120, unk_token="<unk>", special_tokens=["<unk>"])
    )
    return _with_specials(tok, "<s>", "</s>")


def _byte_bpe() -> Tokenizer:  # GPT-2 / RoBERTa style
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    return _with_specials(tok, "<s>", "</s>")


QWEN2 = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def _qwen2() -> Tokenizer:  # Qwen2 / Qwen3-Embedding style
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    return _with_specials(tok, "<|im_start|>", "<|endoftext|>")


def _word_level() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_CORPUS, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return _with_specials(tok, "[CLS]", "[SEP]")


TOKENIZERS = {
    "bert": lambda: _fixture("bert"),
    "mpnet": lambda: _fixture("mpnet"),
    "bert_cased": lambda: _bert_variant(lowercase=False, strip_accents=False),
    "bert_accents_kept": lambda: _bert_variant(lowercase=True, strip_accents=False),
    "bert_no_normalizer": lambda: _bert_variant(),
    "clip": lambda: _fixture("clip"),
    "unigram_metaspace": _unigram,
    "byte_level_bpe": _byte_bpe,
    "qwen2_split": _qwen2,
    "whitespace_wordlevel": _word_level,
}
WORDPIECE = {"bert", "mpnet", "bert_cased", "bert_accents_kept", "bert_no_normalizer"}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def family(request):
    return request.param, TOKENIZERS[request.param]()


def _truncating(tok: Tokenizer, max_len: int | None, direction: str = "right") -> Tokenizer:
    copy = Tokenizer.from_str(tok.to_str())
    copy.no_padding()
    if max_len is None:
        copy.no_truncation()
    else:
        copy.enable_truncation(max_len, direction=direction)
    return copy


def test_every_family_gets_a_plan(family):
    name, tok = family
    cutter = LongTextCutter(_truncating(tok, 8))
    assert cutter.plan is not None
    assert cutter.plan.kind == ("wordpiece" if name in WORDPIECE else "space")


def test_unknown_parts_get_no_shortcut():
    tok = _fixture("clip")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\\w+"), behavior="isolated")  # a pattern not known to be local
    assert LongTextCutter(_truncating(tok, 8)).plan is None
    tok = _unigram()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(split=False)  # the whole text is one piece
    cutter = LongTextCutter(_truncating(tok, 8))
    text = "word " * 5000
    assert cutter.plan is None and cutter.cut(text) is text and cutter.exceeds(text) == (text, None)
    bert = _fixture("bert")
    bert.add_tokens(["hello world"])  # an added token with a space could span a boundary
    assert LongTextCutter(_truncating(bert, 8)).plan is None


# ------------------------------------------------------------------------------ the character classes
@pytest.mark.parametrize("name", ["bert", "bert_cased", "bert_accents_kept", "mpnet"])
def test_character_classes_hold_for_the_installed_tokenizer(name):
    """What the compaction assumes of each class of the code table, checked for every code point against the
    Rust tokenizer (the table leaves out what unicodedata and the tokenizer's own tables disagree on)."""
    tok = TOKENIZERS[name]()
    norm, pre = tok.normalizer, tok.pre_tokenizer
    table = LongTextCutter(_truncating(tok, 8)).plan.table

    def chars(code: bytes) -> list[str]:
        return [chr(cp) for cp in np.flatnonzero(table == ord(code))]

    def words(text: str) -> list[str]:
        return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]

    # word characters never split a word, whatever the normalizer makes of them
    assert len(words("a" + "a".join(chars(WORD)) + "a")) == 1
    assert len(chars(WORD)) > 50_000
    for c in chars(SPACE):  # whitespace: a boundary, dropped
        assert words(f"a{c}b") == ["a", "b"], hex(ord(c))
    for c in chars(REMOVE):  # deleted characters: gone, and they join their neighbours
        assert norm.normalize_str(f"a{c}b") == "ab", hex(ord(c))
    for c in chars(CUT):  # punctuation and ideographs: a word of their own
        assert words(f"a{c}b") == ["a", norm.normalize_str(c).strip(), "b"], hex(ord(c))
    assert ("<" if name == "mpnet" else "[") not in chars(CUT)  # in an added token: no boundary
    word, marks = word_characters()
    assert word.sum() - len(chars(WORD)) < 10 + (marks.sum() if norm.strip_accents is not False else 0)


def test_character_codes_agree_for_ascii_and_other_texts():
    cutter = LongTextCutter(_truncating(_fixture("bert"), 8))
    text = "ab c.\x01\t東é😀[" * 3
    assert character_codes(text, cutter.plan.table) == character_codes(text.encode().decode(), cutter.plan.table)
    ascii_part = "ab c.\x01\t["
    assert character_codes(ascii_part, cutter.plan.table) == character_codes(ascii_part + "é", cutter.plan.table)[:-1]


def test_unicode_data_is_the_same_version_the_classes_were_checked_with():
    assert unicodedata.unidata_version >= "13.0.0"


# ------------------------------------------------------------------------------ exactness
_PIECES = [
    "a",
    "Ab",
    "word",
    "Σ",
    "ς",
    "İ",
    "é",
    "e\u0301",
    "\u0301",
    " ",
    "  ",
    "\t",
    "\n",
    "\u3000",
    "\xa0",
    "東",
    "京",
    ".",
    ",",
    "-",
    "'s",
    "[",
    "]",
    "[MASK]",
    "<mask>",
    "<s>",
    "😀",
    "👩‍👩‍👧",
    "\u200f",
    "\u200b",
    "\x00",
    "\x01",
    "\ufffd",
    "\ue000",
    "9",
    "2011",
    "ﬁ",
    "¨",
    "\u0600",
    "—",
    "。",
    "≠",
    "\u0378",
    "\u180e",
    "\u2065",
    "\U000e0080",
    "\U0002a6e0",
    "\U0002b820",
    "\U00020000",
]
_LONG = [
    "a" * 150,
    "x" * 101,
    "é" * 120,
    "😀" * 130,
    "\u0301" * 140,
    " " * 60,
    "\x01" * 50,
    " \x01" * 30,
    "\u200b" * 40,
    "ab\x01" * 60,
    "\t\n" * 40,
    "東" * 50,
    "—" * 60,
    "\u0378" * 120,
    "a\u0378" * 80,
    "\U0002b820" * 110,
]
_piece = st.sampled_from(_PIECES) | st.sampled_from(_LONG) | st.text(max_size=3)


def _ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text).ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_piece, min_size=20, max_size=400), max_len=st.integers(3, 24), seed=st.integers(0, 99))
def test_shortcuts_keep_the_token_ids(family, parts, max_len, seed):
    _name, tok = family
    random.Random(seed).shuffle(parts)
    text = "".join(parts)
    full = _truncating(tok, None)
    right, left = _truncating(tok, max_len, "right"), _truncating(tok, max_len, "left")
    cutter = LongTextCutter(right)
    compacted = cutter.compact(text)
    assert _ids(full, compacted) == _ids(full, text)
    assert _ids(right, cutter.cut(text)) == _ids(right, text)
    assert _ids(left, cutter.cut(text, "left")) == _ids(left, text)
    assert _ids(left, LongTextCutter(left).cut(text)) == _ids(left, text)
    same, over = cutter.exceeds(text)
    assert _ids(full, same) == _ids(full, text)
    if over is not None:
        assert len(_ids(full, text)) > max_len and len(_ids(full, same[:over])) > max_len


@pytest.mark.parametrize("seed", range(4))
def test_shortcuts_cut_and_stay_exact_on_long_random_texts(family, seed):
    """Random texts well past the bound, so that cuts, compaction and the strict check all take effect."""
    _name, tok = family
    rng = random.Random(seed)
    max_len = rng.choice([4, 16, 48])
    pieces = _PIECES + _LONG
    text = "".join(rng.choice(pieces) for _ in range(PRECUT_FACTOR * max_len))
    full = _truncating(tok, None)
    right = _truncating(tok, max_len)
    cutter = LongTextCutter(right)
    short = cutter.cut(text)
    assert _ids(right, short) == _ids(right, text)
    assert len(short) < len(text)  # the shortcut was taken
    same, over = cutter.exceeds(text)
    assert over is not None and len(_ids(full, same[:over])) > max_len


def test_huge_runs_shorten_to_one_unknown_word():
    tok = _truncating(_fixture("bert"), 48)
    cutter = LongTextCutter(tok)
    for run in ("a" * 200_000, "😀" * 100_000, "é" * 100_000, "ab\x01" * 50_000):
        text = f"head {run} tail"
        short = cutter.cut(text)
        assert len(short) < 1000 and _ids(tok, short) == _ids(tok, text)
    mixed = "".join(random.Random(1).choice("abc.,!?- ") for _ in range(200_000))
    assert _ids(tok, cutter.cut(mixed)) == _ids(tok, mixed)


def test_prepare_cuts_for_the_direction_asked():
    tok = _truncating(_fixture("bert"), 16)
    cutter = LongTextCutter(tok)
    text = " ".join(f"w{i}" for i in range(5000))
    right, left = prepare([text], cutter), prepare([text], cutter, direction="left")
    assert right[0].startswith("w0 ") and left[0].endswith("w4999")
    left_tok = _truncating(_fixture("bert"), 16, "left")
    assert _ids(left_tok, left[0]) == _ids(left_tok, text)


# ------------------------------------------------------------------------------ cost
def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


HUGE = {
    "spaceless": lambda: "a" * 5_000_000,
    "spaced": lambda: ("word " * 1_000_000)[:5_000_000],
    "emoji": lambda: "😀" * 2_000_000,
    "whitespace": lambda: "a" + " " * 5_000_000 + "b",
    "controls": lambda: "a" + "\x01" * 5_000_000 + "b",
    "marks": lambda: "e" + "\u0301" * 2_000_000,
    "punctuation": lambda: "—" * 2_000_000,
    "unassigned": lambda: "a\u0378" * 1_000_000,
}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory")
@pytest.mark.parametrize("kind", sorted(HUGE))
@pytest.mark.parametrize("strict", [False, True], ids=["truncate", "strict"])
def test_a_huge_text_costs_little(kind, strict):
    """Before the compaction and the prefix check, 5,000,000 characters cost 1.5-8 s and 280-840 MB here."""
    tok = _truncating(_fixture("bert"), 48)
    cutter = LongTextCutter(tok)
    text = HUGE[kind]()
    cutter.cut("warm " * 1000)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    base = _current_rss_mb()
    t0 = time.perf_counter()
    if strict:
        same, over = cutter.exceeds(text)
        n = over if over is not None else len(tok.encode(same).ids)
    else:
        n = len(tok.encode(prepare([text], cutter)[0]).ids)
    elapsed, grown = time.perf_counter() - t0, _peak_rss_mb() - base
    print(f"{kind} strict={strict}: {elapsed * 1000:.0f} ms, +{grown:.1f} MB (n={n})")
    assert elapsed < 1.0 and grown < 64, (elapsed, grown)
