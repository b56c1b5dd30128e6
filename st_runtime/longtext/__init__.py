"""Exact shortcuts for very long texts, before tokenization.

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

from .cutter import PRECUT_FACTOR, LongTextCutter

__all__ = ["PRECUT_FACTOR", "LongTextCutter"]
