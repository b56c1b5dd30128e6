"""Which tokenizers the long-text shortcuts hold for, and the per-tokenizer plan (its character table and
limits), checked against the installed tokenizer (see st_runtime.longtext)."""

from __future__ import annotations

import functools
import json
import re
import string
import threading
import unicodedata
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .chars import (
    _CJK_BERT,
    _PREPEND,
    CJK_ALL,
    CUT,
    OTHER,
    REMOVE,
    REMOVED,
    SPACE,
    WHITESPACE,
    WORD,
    _categories,
    _mask,
)

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
        edges: set[int] = set()
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
