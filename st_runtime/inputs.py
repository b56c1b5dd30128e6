"""Text clean-up that runs before tokenization: lone surrogates, and exact shortcuts for very long texts.

Documented, deterministic rules:

* **Surrogates.** A Python ``str`` can hold UTF-16 surrogate code points (U+D800..U+DFFF), for example
  from ``json.loads('"\\ud800"')`` or ``bytes.decode(errors="surrogateescape")``. They are not Unicode
  scalar values, and the Rust tokenizer (so sentence-transformers too) raises ``TypeError`` on them.
  st_runtime instead decodes the text as UTF-16 would: a high surrogate directly followed by a low
  surrogate becomes the character they encode, and every other surrogate becomes U+FFFD (the
  replacement character). The embedding is then exactly sentence-transformers' embedding of that
  repaired text.

* **Very long texts.** The tokenizer reads the whole text even though only ``max_seq_length`` tokens are
  kept: a 5,000,000-character text costs seconds and hundreds of MB. :class:`LongTextCutter` gives a much
  shorter text with the same kept tokens, only where that is provably exact, and the full text otherwise.
  Texts up to ``PRECUT_FACTOR * max_seq_length`` characters are left alone.

  - *Cut at a boundary.* A tokenizer whose normalizer works character by character and whose pre-tokenizer
    always starts a new word at a boundary character ``b`` gives for ``text = head + b + tail`` the tokens
    of ``head`` followed by those of ``b + tail``. So the first ``max_seq_length`` tokens of ``text`` are those
    of ``head`` whenever ``head`` alone has that many (checked by tokenizing ``head``); likewise for the last
    ones and the suffix under left truncation. The boundaries:

    * BERT-like tokenizers (BertNormalizer or none, BertPreTokenizer, WordPiece: BERT, MiniLM, MPNet, BGE,
      ...): any White_Space character, any ASCII punctuation character that no added token contains, and
      CJK ideographs (which BertNormalizer isolates); both truncation sides.
    * Other tokenizers built only from parts known to be local (NFC/NFD/NFKC/NFKD, Lowercase, StripAccents,
      Strip, Prepend, whitespace Replace rules; Whitespace(Split), Metaspace, ByteLevel with its regex, the
      CLIP and Qwen2 Split regexes, Digits, Punctuation; BPE, Unigram, WordLevel, WordPiece models): an
      ASCII space directly after a character that is not whitespace (nor a grapheme "Prepend"
      character); right truncation.

    Prefixes are tried at 1, 4, 16, ... times the first bound, so the work stays proportional to the part
    of the text that holds the kept tokens.

  - *Compaction (BERT-like tokenizers).* Runs that cannot add tokens are shortened first, each to a text
    with exactly the same token ids: a run of characters BertNormalizer deletes (controls, format and
    private-use characters, U+FFFD; combining marks when it strips accents) becomes one U+0000; a run of
    whitespace (with deleted characters in it) becomes one space; and a run of word characters (letters,
    numbers, marks, symbols, outside ASCII punctuation and CJK) longer than WordPiece's
    ``max_input_chars_per_word`` is shortened to a prefix that still normalizes to more than that many
    characters, since the whole word is then one ``[UNK]`` token either way.

  A text with more than ``max_seq_length`` tokens and ``truncate=False`` is recognised from such a prefix
  (:meth:`LongTextCutter.exceeds`), without tokenizing the rest.
"""

from __future__ import annotations

import functools
import json
import re
import string
import threading
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import UnsupportedInputError

_SURROGATE = re.compile("[\ud800-\udfff]")

PRECUT_FACTOR = 64  # characters per kept token before the shortcut is tried
_GROWTH = 4  # each further prefix tried is this many times longer

# ------------------------------------------------------------------------------------ character classes
# White_Space (the same set in every Unicode version since 6.3): BertPreTokenizer splits there and drops it,
# BertNormalizer's clean_text makes it " " (but deletes the three that are control characters, as REMOVED says).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# What BertNormalizer(clean_text=True) deletes, in a subset that is the same in every Unicode version: the
# control characters but tab, newline and carriage return, soft hyphen, zero-width and bidirectional format
# characters, the byte order mark, U+FFFD and the private-use block.
REMOVED = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffd\ue000-\uf8ff"
# BertNormalizer(handle_chinese_chars=True)'s ideographs (all of its ranges; boundaries use the main block)
CJK_ALL = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_CJK = "\u4e00-\u9fff"
# exactly the ranges BertNormalizer isolates (boundaries)
_CJK_BERT = (
    "\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f"
    "\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f"
)
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))
# Grapheme_Cluster_Break=Prepend: such a character joins the next one (even a space) in a grapheme
_PREPEND = (
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u0d4e\U000110bd\U000110cd\U000111c2\U000111c3"
    "\U0001193f\U00011941\U00011a3a\U00011a84-\U00011a89\U00011d46\U00011f02"
)
_WORD_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Sm", "Sc", "Sk", "So"})
# (Unassigned code points, "Cn", count as word characters too: the tokenizer keeps them, inside words.)


# one byte per character, so that runs are found by bytes regexes over the codes (fast for any alphabet)
WORD, MARK, REMOVE, SPACE, CUT, OTHER = b"W", b"M", b"R", b"S", b"C", b"O"


@functools.lru_cache(maxsize=1)
def word_characters() -> tuple[np.ndarray, np.ndarray]:
    """(word, marks): boolean masks over all code points of the non-ASCII letters, marks, numbers and symbols
    outside the CJK ranges (characters at which BertPreTokenizer never splits), and of the combining marks
    (which BertNormalizer deletes when it strips accents). Built once per process (0.2 s) from
    ``unicodedata``; the tables built from them are checked against the tokenizer (see ``_wordpiece_table``)."""
    word, marks, _, _ = _categories()
    return word, marks


@functools.lru_cache(maxsize=1)
def _categories() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks over all code points: word characters and marks (as ``word_characters``, with the unassigned
    code points), the format and private-use characters (which BertNormalizer's clean_text deletes), and the
    non-ASCII punctuation (which BertPreTokenizer isolates). Candidates only: the table keeps what the
    tokenizer confirms."""
    cats = [unicodedata.category(chr(cp)) for cp in range(0x110000)]
    # unassigned code points (unassigned in the tokenizer's older tables too) are kept inside words
    word = np.fromiter((c in _WORD_CATEGORIES or c == "Cn" for c in cats), dtype=bool, count=len(cats))
    marks = np.fromiter((c[0] == "M" for c in cats), dtype=bool, count=len(cats))
    gone = np.fromiter((c in ("Cf", "Co") for c in cats), dtype=bool, count=len(cats))
    punct = np.fromiter((c[0] == "P" for c in cats), dtype=bool, count=len(cats))
    word[:0x80] = punct[:0x80] = gone[:0x80] = False
    for a, b in _CJK_RANGES:
        word[a : b + 1] = False
    word[0x20000:] &= np.fromiter((c != "Cn" for c in cats[0x20000:]), dtype=bool)  # (checking those costs 1 s)
    return word, marks & word, gone, punct


def _mask(chars: str) -> np.ndarray:
    """A mask over all code points of a regex character-class body (literal characters and ranges)."""
    out = np.zeros(0x110000, dtype=bool)
    i = 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            out[ord(chars[i]) : ord(chars[i + 2]) + 1] = True
            i += 3
        else:
            out[ord(chars[i])] = True
            i += 1
    return out


def character_codes(text: str, table: np.ndarray) -> bytes:
    """One code byte per character of ``text`` (``table``: a uint8 array over all code points)."""
    if text.isascii():
        return text.encode("ascii").translate(table[:256].tobytes())
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return table[points].tobytes()


def repair_surrogates(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD; other text is returned unchanged."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# ------------------------------------------------------------------------------------ which tokenizers qualify
# Replace rules of known tokenizers that never act across "non-space, space": (pattern, content)
_LOCAL_REPLACES = {
    ("String", " ", "▁"),  # Llama / Gemma style
    ("Regex", "\\s+", " "),  # CLIP
    ("Regex", " {2,}", " "),  # SentencePiece conversions (XLM-R, ...)
    ("String", "``", '"'),
    ("String", "''", '"'),
}
_LOCAL_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip", "Prepend", "BertNormalizer"}
# Split pre-tokenizers of known tokenizers whose pieces never span "non-space, space": (regex, behavior, invert)
_LOCAL_SPLITS = {
    (  # CLIP
        "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+",
        "Removed",
        True,
    ),
    (  # Qwen2 / Qwen3
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
        "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        "Isolated",
        False,
    ),
}
_LOCAL_MODELS = {"BPE", "Unigram", "WordLevel", "WordPiece"}


def _spec(component) -> dict | None:
    return None if component is None else json.loads(component.__getstate__())


def _local_normalizer(spec: dict | None) -> bool:
    if spec is None:
        return True
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_local_normalizer(s) for s in spec.get("normalizers", []))
    if kind == "Replace":
        ((how, pattern),) = spec["pattern"].items()
        return (how, pattern, spec.get("content")) in _LOCAL_REPLACES
    return kind in _LOCAL_NORMALIZERS


def _splits_at_spaces(spec: dict) -> bool:
    """Whether ``spec`` starts a new piece at every space that follows a non-space, and never joins pieces."""
    kind = spec.get("type")
    if kind in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit"):
        return True
    if kind == "Metaspace":
        return bool(spec.get("split", True))
    if kind == "ByteLevel":
        return bool(spec.get("use_regex", True))
    if kind == "Split":
        pattern = spec["pattern"].get("Regex")
        return (pattern, spec.get("behavior"), bool(spec.get("invert"))) in _LOCAL_SPLITS
    return False


def _local_pre_tokenizer(spec: dict | None) -> bool:
    if spec is None:
        return False  # the whole text is one piece
    if spec.get("type") != "Sequence":
        return _splits_at_spaces(spec)
    parts = spec.get("pretokenizers", [])
    first = next((i for i, p in enumerate(parts) if _splits_at_spaces(p)), None)
    if first is None or any(p.get("type") not in ("Digits", "Punctuation") for p in parts[:first]):
        return False
    # after the first splitter: more splitters, or parts that only split further or map bytes within a piece
    return all(
        _splits_at_spaces(p)
        or p.get("type") in ("Digits", "Punctuation")
        or (p.get("type") == "ByteLevel" and not p.get("use_regex", True))
        for p in parts[first + 1 :]
    )


class _Plan:
    """How one tokenizer's texts may be shortened (see the module docstring). The code table of a BERT-like
    tokenizer is built on first use (0.3 s, once per process and tokenizer), from ``unicodedata`` and checked
    against the tokenizer itself: word characters at which it does split, or marks it does not delete, are
    left out."""

    def __init__(self, kind: str, tokenizer: Tokenizer, last_space: re.Pattern | None = None, **wordpiece: Any):
        self.kind = kind  # "wordpiece" (BERT-like) or "space"
        self.tokenizer = tokenizer
        self.last_space = last_space  # "space": .match(text, lo, hi) -> group 1 at the last boundary
        self.contents: str = wordpiece.get("contents", "")  # the added tokens' contents, joined
        self.chinese: bool = wordpiece.get("chinese", False)
        self.clean: bool = wordpiece.get("clean", False)
        self.strip: bool = wordpiece.get("strip", False)
        self.max_word: int = wordpiece.get("max_word", 0)  # WordPiece's max_input_chars_per_word
        self.keep = self.max_word + 1  # characters a shortened run keeps
        self._table: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def table(self) -> np.ndarray:
        """A code byte per code point: WORD, REMOVE, SPACE, CUT or OTHER (shared by the plans of tokenizers
        with the same normalizer and added tokens)."""
        if self._table is None:
            with self._lock:
                if self._table is None:
                    norm = self.tokenizer.normalizer
                    key = (None if norm is None else norm.__getstate__(), self.contents, self.clean, self.strip)
                    with _TABLES_LOCK:
                        table = _TABLES.get(key)
                        if table is None:
                            table = _TABLES[key] = _wordpiece_table(self)
                            while len(_TABLES) > 8:
                                _TABLES.pop(next(iter(_TABLES)))
                    self._table = table
        return self._table

    @functools.cached_property
    def long_words(self) -> re.Pattern | None:
        """Over the codes: runs of word characters longer than ``keep``; None when an added token could be
        inside one (each must start and end outside the run characters, and be shorter)."""
        run = (ord(WORD), ord(REMOVE))
        for c in self.contents.split("\x00"):
            if c and (len(c) >= self.keep or self.table[ord(c[0])] in run or self.table[ord(c[-1])] in run):
                return None
        return re.compile(WORD * (self.keep + 1) + WORD + b"*")


_TABLES: dict[tuple, np.ndarray] = {}  # code tables by (normalizer, added tokens, ...), the last 8 built
_TABLES_LOCK = threading.Lock()


def _splitting(tokenizer: Tokenizer, codepoints: np.ndarray) -> list[int]:
    """Those of ``codepoints`` at which the tokenizer's normalizer and pre-tokenizer split a word: checked in
    blocks (one string each), and located from the pieces' offsets where a block splits."""
    from tokenizers import PreTokenizedString

    norm, pre = tokenizer.normalizer, tokenizer.pre_tokenizer
    found: list[int] = []
    for i in range(0, len(codepoints), 1 << 15):
        block = np.asarray(codepoints[i : i + (1 << 15)], dtype=np.uint32).tobytes().decode("utf-32-le")
        if len(pre.pre_tokenize_str(block if norm is None else norm.normalize_str(block))) == 1:
            continue
        pts = PreTokenizedString(block)
        if norm is not None:
            pts.normalize(norm.normalize)
        pre.pre_tokenize(pts)
        edges = set()
        for _, (a, b), _ in pts.get_splits(offset_referential="original", offset_type="char"):
            edges.update((a - 1, a, b - 1, b))
        found.extend(ord(block[j]) for j in sorted(edges) if 0 <= j < len(block))
    return found


def _deleted(norm, codepoints: np.ndarray) -> list[int]:
    """Those of ``codepoints`` the normalizer deletes (checked in blocks; one by one where a block fails)."""
    out: list[int] = []
    for i in range(0, len(codepoints), 4096):
        block = [chr(cp) for cp in codepoints[i : i + 4096]]
        if norm.normalize_str("a" + "".join(block) + "b") == "ab":
            out.extend(ord(c) for c in block)
        else:
            out.extend(ord(c) for c in block if norm.normalize_str(f"a{c}b") == "ab")
    return out


def _isolated(tokenizer: Tokenizer, codepoints: np.ndarray) -> list[int]:
    """Those of ``codepoints`` that always make a word of their own (as BertPreTokenizer makes punctuation, and
    BertNormalizer ideographs): checked in blocks, one by one where a block fails."""
    norm, pre = tokenizer.normalizer, tokenizer.pre_tokenizer

    def pieces(text: str) -> int:
        return len(pre.pre_tokenize_str(text if norm is None else norm.normalize_str(text)))

    out: list[int] = []
    points = [int(cp) for cp in codepoints if unicodedata.combining(chr(cp)) == 0]
    for i in range(0, len(points), 2048):
        block = points[i : i + 2048]
        if pieces("a" + "a".join(map(chr, block)) + "a") == 2 * len(block) + 1:
            out.extend(block)
        else:
            out.extend(cp for cp in block if pieces(f"a{chr(cp)}b") == 3)
    return out


def _wordpiece_table(plan: _Plan) -> np.ndarray:
    tokenizer, norm = plan.tokenizer, plan.tokenizer.normalizer
    word, marks, gone, punct = _categories()
    word = word.copy()
    word[_splitting(tokenizer, np.flatnonzero(word))] = False
    table = np.full(0x110000, ord(OTHER), dtype=np.uint8)
    table[word] = ord(WORD)
    table[[ord(c) for c in string.ascii_letters + string.digits]] = ord(WORD)
    table[_mask(WHITESPACE)] = ord(SPACE)
    if plan.clean:  # deleted: these (checked), and the marks when accents are stripped; without clean_text none
        removed = _mask(REMOVED)
        removed[_deleted(norm, np.flatnonzero((gone | marks) if plan.strip else gone))] = True
        table[removed] = ord(REMOVE)
    # boundaries: punctuation that no added token contains (so that no match can span it), and ideographs
    table[[ord(c) for c in string.punctuation if c not in plan.contents]] = ord(CUT)
    others = [cp for cp in np.flatnonzero(punct) if chr(cp) not in plan.contents]
    table[_isolated(tokenizer, np.asarray(others, dtype=np.int64))] = ord(CUT)
    if plan.chinese:
        table[_isolated(tokenizer, np.flatnonzero(_mask(_CJK_BERT)))] = ord(CUT)
    return table


# Runs are found over the codes with a literal prefix (which sre finds at memchr speed) in a translation that
# merges the classes of the run: deleted characters with whitespace (collapsed runs), with word characters
# (shortened words).
_COLLAPSE_FROM = 32
_AS_SPACE = bytes.maketrans(REMOVE, SPACE)
_AS_WORD = bytes.maketrans(REMOVE, WORD)
_COLLAPSE = re.compile(SPACE * _COLLAPSE_FROM + SPACE + b"*")


def _added_contents(tokenizer: Tokenizer) -> list[str] | None:
    """The added tokens' contents (raw, and normalized where they match normalized text), or None when one
    is matched as a single word (its match would depend on the characters around it)."""
    out = []
    norm = tokenizer.normalizer
    for tok in tokenizer.get_added_tokens_decoder().values():
        if tok.single_word:
            return None
        out.append(tok.content)
        if tok.normalized and norm is not None:
            out.append(norm.normalize_str(tok.content))
    return out


def _wordpiece_plan(tokenizer: Tokenizer, contents: list[str]) -> _Plan | None:
    from tokenizers import models, normalizers, pre_tokenizers

    norm = tokenizer.normalizer
    if norm is not None and not isinstance(norm, normalizers.BertNormalizer):
        return None
    if not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return None
    if not isinstance(tokenizer.model, models.WordPiece):
        return None
    chinese = norm is not None and norm.handle_chinese_chars
    # an added token with whitespace, a deleted character or an ideograph in it could match across a boundary
    if re.search(f"[{WHITESPACE}{REMOVED}{CJK_ALL if chinese else ''}]", "".join(contents)):
        return None
    return _Plan(
        "wordpiece",
        tokenizer,
        contents="\x00".join(contents),
        chinese=chinese,
        clean=norm is not None and norm.clean_text,
        strip=norm is not None and (norm.lowercase if norm.strip_accents is None else norm.strip_accents),
        max_word=int(tokenizer.model.max_input_chars_per_word),
    )


def _space_plan(tokenizer: Tokenizer, contents: list[str]) -> _Plan | None:
    if type(tokenizer.model).__name__ not in _LOCAL_MODELS or getattr(tokenizer.model, "dropout", None):
        return None
    if any(re.search(r"\s|▁", c) for c in contents):
        return None
    if not _local_normalizer(_spec(tokenizer.normalizer)) or not _local_pre_tokenizer(_spec(tokenizer.pre_tokenizer)):
        return None
    # the lookbehind (after the space) keeps the costly class test to the spaces
    return _Plan("space", tokenizer, last_space=re.compile(rf"(?s).*( )(?<=[^\s{_PREPEND}] )"))


def _plan(tokenizer: Any) -> _Plan | None:
    if not isinstance(tokenizer, Tokenizer):  # e.g. the word-embedding models' WhitespaceTokenizer
        return None
    contents = _added_contents(tokenizer)
    if contents is None:
        return None
    return _wordpiece_plan(tokenizer, contents) or _space_plan(tokenizer, contents)


class LongTextCutter:
    """Applies the long-text shortcuts described in the module docstring for one tokenizer (the one that
    truncates at the model's max_seq_length)."""

    def __init__(self, tokenizer: Tokenizer, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens  # as the model tokenizes, so the kept tokens are counted alike
        self.plan = _plan(tokenizer)
        self.pattern = self.plan  # None when no shortcut applies (the attribute's older meaning)
        self._verified: dict[str, bool] = {}

    @property
    def threshold(self) -> int | None:
        """Texts longer than this many characters may be shortened (None: none are)."""
        return None if self._limit() is None else PRECUT_FACTOR * self._limit()[0]

    @property
    def max_length(self) -> int | None:
        """The tokenizer's truncation length (the model's max_seq_length); None if it does not truncate."""
        trunc = getattr(self.tokenizer, "truncation", None)
        return int(trunc["max_length"]) if trunc else None

    def _limit(self) -> tuple[int, str] | None:
        if self.plan is None:
            return None
        trunc = self.tokenizer.truncation
        if not trunc:
            return None
        return int(trunc["max_length"]), trunc.get("direction", "right")

    def _side(self, text: str, direction: str | None) -> str | None:
        """The side to cut ``text`` at for truncation on ``direction`` (None: the tokenizer's), or None when
        the text is short or no cut applies."""
        limit = self._limit()
        if limit is None or len(text) <= PRECUT_FACTOR * limit[0]:
            return None
        side = direction or limit[1]
        if side not in ("right", "left") or (side == "left" and self.plan.kind != "wordpiece"):
            return None
        return side

    # ------------------------------------------------------------------ compaction
    def compact(self, text: str) -> str:
        """``text`` with runs that cannot add tokens shortened: exactly the same token ids (BERT-like
        tokenizers; other texts and tokenizers are returned unchanged)."""
        return self._compact(text)[0]

    def _compact(self, text: str) -> tuple[str, bytes | None]:
        plan = self.plan
        if plan is None or plan.kind != "wordpiece" or self._side(text, "right") is None:
            return text, None
        codes = character_codes(text, plan.table)
        text, codes = _substitute(text, codes, _COLLAPSE.finditer(codes.translate(_AS_SPACE)), _collapsed)
        if plan.long_words is not None:
            runs = plan.long_words.finditer(codes.translate(_AS_WORD))
            text, codes = _substitute(text, codes, runs, self._shorten)
        return text, codes

    def _shorten(self, run: str, codes: bytes) -> tuple[str, bytes]:
        for size in (self.plan.keep, 4 * self.plan.keep):
            kept = run[:size]
            ok = self._verified.get(kept)
            if ok is None:
                ok = self._one_long_word(kept)
                if len(self._verified) < 4096:
                    self._verified[kept] = ok
            if ok:
                return kept, codes[:size]
        return run, codes

    def _one_long_word(self, kept: str) -> bool:
        """Whether ``kept`` normalizes to one word longer than max_input_chars_per_word (one [UNK])."""
        norm = self.tokenizer.normalizer
        normalized = kept if norm is None else norm.normalize_str(kept)
        if len(normalized) <= self.plan.max_word:
            return False
        return len(self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)) == 1

    # ------------------------------------------------------------------ boundaries
    def _boundary(self, text: str, codes: bytes | None, lo: int, hi: int, side: str) -> int:
        """The last (right) or first (left) boundary in ``text[lo:hi]``; -1 if there is none."""
        if codes is None:  # "space" plan, right side
            m = self.plan.last_space.match(text, lo, hi)
            return m.start(1) if m else -1
        if side == "right":
            return max(codes.rfind(SPACE, lo, hi), codes.rfind(CUT, lo, hi))
        found = [i for i in (codes.find(SPACE, lo, hi), codes.find(CUT, lo, hi)) if i >= 0]
        return min(found, default=-1)

    def _pieces(self, text: str, codes: bytes | None, side: str):
        """Prefixes (right truncation) or suffixes (left) of the (compacted) ``text`` that end (start) at a
        boundary, of growing length, each with its truncated encoding."""
        size = PRECUT_FACTOR * self._limit()[0]
        while size < len(text):
            if side == "right":
                at = self._boundary(text, codes, size // 2, size, side)
                piece = text[:at] if at > 0 else None
            else:
                at = self._boundary(text, codes, len(text) - size, len(text) - size // 2, side)
                piece = text[at:] if at >= 0 else None
            if piece:
                yield piece, self.tokenizer.encode(piece, add_special_tokens=self.add_special_tokens)
            size *= _GROWTH

    def cut(self, text: str, direction: str | None = None) -> str:
        """A text whose kept tokens under truncation on ``direction`` (None: the tokenizer's side) at
        max_seq_length are exactly those of ``text``: compacted, and cut at a boundary when that is exact."""
        side = self._side(text, direction)
        if side is None:
            return text
        max_len = self._limit()[0]
        text, codes = self._compact(text)
        for piece, encoding in self._pieces(text, codes, side):
            if len(encoding.ids) >= max_len:  # exact only if the piece alone still reaches the truncation length
                return piece
        return text

    def exceeds(self, text: str) -> tuple[str, int | None]:
        """``(compacted, chars)``: ``compacted`` has the same token ids as ``text``; ``chars`` is set when its
        first ``chars`` characters already hold more than max_seq_length tokens (so ``text`` does too), and
        None when the text may fit (tokenize ``compacted`` whole to know)."""
        if self._side(text, "right") is None:
            return text, None
        text, codes = self._compact(text)
        for piece, encoding in self._pieces(text, codes, "right"):
            if encoding.overflowing:
                return text, len(piece)
        return text, None


def _collapsed(run: str, codes: bytes) -> tuple[str, bytes]:
    """A long run of deleted characters and whitespace becomes one space if it holds whitespace (a word
    boundary), else one deleted character (U+0000): the same tokens."""
    return (" ", SPACE) if SPACE in codes else ("\x00", REMOVE)


def _substitute(text: str, codes: bytes, matches: Iterable[re.Match], replace) -> tuple[str, bytes]:
    """``text`` and its codes with each span of ``matches`` (over the codes) replaced by ``replace(run, codes)``."""
    texts: list[str] = []
    code_parts: list[bytes] = []
    at = 0
    for m in matches:
        a, b = m.span()
        new_text, new_codes = replace(text[a:b], codes[a:b])
        texts += (text[at:a], new_text)
        code_parts += (codes[at:a], new_codes)
        at = b
    if not at:
        return text, codes
    texts.append(text[at:])
    code_parts.append(codes[at:])
    return "".join(texts), b"".join(code_parts)


def prepare(
    items: list[Any], cutter: LongTextCutter | None, kinds: list[str] | None = None, direction: str | None = None
) -> list[Any]:
    """Repair surrogates in every text (and text pair) and shorten very long single texts exactly for
    truncation on ``direction`` (None: the model's side). ``kinds`` marks items that are not text (images),
    which are left alone."""
    out = items
    for i, item in enumerate(items):
        if kinds is not None and kinds[i] != "text":
            continue
        new: Any
        if isinstance(item, str):
            new = repair_surrogates(item)
            if cutter is not None:
                new = cutter.cut(new, direction)
        else:
            new = (repair_surrogates(item[0]), repair_surrogates(item[1]))
            if new[0] is item[0] and new[1] is item[1]:
                new = item
        if new is not item:
            if out is items:
                out = list(items)
            out[i] = new
    return out


TEXT = "text"
IMAGE = "image"
_SCALARS = (bytes, bytearray, dict, int, float, complex, bool)


def classify(sentences: Any, images: bool = False) -> tuple[list, list[str], bool]:
    """Validate ``encode``'s input before any work: (items, kinds, singular), each kind "text" (a string or a
    (text, text_pair) tuple) or, for a model with an image tower (``images``), "image" (a PIL image, a 3-D
    uint8 array, an image file path or a ``data:image/`` URI, decided as sentence-transformers 6 decides).
    Anything else raises UnsupportedInputError naming the input."""
    from .image import is_image_path, is_image_url, is_pil_image

    expected = "text, an image, or a list of them" if images else "a string or a list of strings"

    def is_image(obj: Any) -> bool:
        return images and (is_pil_image(obj) or (isinstance(obj, np.ndarray) and obj.ndim == 3))

    if isinstance(sentences, str) or is_image(sentences):
        items, singular = [sentences], True
    elif sentences is None or isinstance(sentences, _SCALARS):
        raise UnsupportedInputError(f"encode expects {expected}, got {type(sentences).__name__}.")
    elif isinstance(sentences, np.ndarray):
        if sentences.ndim == 0:
            return classify(sentences.item(), images)
        items = list(sentences) if images and sentences.ndim == 4 else sentences.tolist()  # 4-D: images
        singular = False
    elif isinstance(sentences, Iterable):
        items, singular = list(sentences), False
    else:
        raise UnsupportedInputError(f"encode expects {expected}, got {type(sentences).__name__}.")
    kinds = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if images and is_image_url(item):
                raise UnsupportedInputError(
                    f"input {i} is an image URL ({item[:80]!r}); st_runtime does not download. Fetch the image "
                    "and pass it as a PIL image, a numpy array or a local file path."
                )
            kinds.append(IMAGE if images and is_image_path(item) else TEXT)
        elif is_image(item):
            kinds.append(IMAGE)
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            items[i] = (item[0], item[1])
            kinds.append(TEXT)
        else:
            allowed = (
                "a string, a [text, pair] of strings, a PIL image, a 3-D uint8 numpy array (H, W, C) or "
                "(C, H, W), or an image file path"
                if images
                else "a string or a pair [text, text_pair] of strings"
            )
            raise UnsupportedInputError(
                f"input {i} is a {type(item).__name__} ({item!r:.60}); each input must be {allowed}."
            )
    return items, kinds, singular
