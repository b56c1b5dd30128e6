"""Character classes of the long-text shortcuts: which code points a tokenizer splits at, deletes or keeps
inside words, as one byte per character (see st_runtime.longtext)."""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

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
