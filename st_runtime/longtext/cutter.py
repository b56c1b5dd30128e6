"""LongTextCutter: a much shorter text with the same kept tokens, where that is provably exact (see
st_runtime.longtext)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer

from .chars import (
    CUT,
    REMOVE,
    SPACE,
    character_codes,
)
from .plans import (
    _AS_SPACE,
    _AS_WORD,
    _COLLAPSE,
    _Plan,
    _plan,
)

PRECUT_FACTOR = 64  # characters per kept token before the shortcut is tried
_GROWTH = 4  # each further prefix tried is this many times longer


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
        limit = self._limit()
        return None if limit is None else PRECUT_FACTOR * limit[0]

    @property
    def max_length(self) -> int | None:
        """The tokenizer's truncation length (the model's max_seq_length); None if it does not truncate."""
        trunc = getattr(self.tokenizer, "truncation", None)
        return int(trunc["max_length"]) if trunc else None

    @property
    def _active(self) -> _Plan:
        """The plan of this tokenizer, in the code paths that run only where a shortcut applies."""
        if self.plan is None:
            raise RuntimeError("no long-text shortcut applies to this tokenizer")  # callers check _limit() first
        return self.plan

    def _max_length(self) -> int:
        """The truncation length, in the code paths that run only where a shortcut applies."""
        limit = self._limit()
        if limit is None:
            raise RuntimeError("no long-text shortcut applies to this tokenizer")
        return limit[0]

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
        if side not in ("right", "left") or (side == "left" and self._active.kind != "wordpiece"):
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
        for size in (self._active.keep, 4 * self._active.keep):
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
        if len(normalized) <= self._active.max_word:
            return False
        return len(self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)) == 1

    # ------------------------------------------------------------------ boundaries
    def _boundary(self, text: str, codes: bytes | None, lo: int, hi: int, side: str) -> int:
        """The last (right) or first (left) boundary in ``text[lo:hi]``; -1 if there is none."""
        if codes is None:  # "space" plan, right side
            last_space = self._active.last_space
            m = last_space.match(text, lo, hi) if last_space is not None else None
            return m.start(1) if m else -1
        if side == "right":
            return max(codes.rfind(SPACE, lo, hi), codes.rfind(CUT, lo, hi))
        found = [i for i in (codes.find(SPACE, lo, hi), codes.find(CUT, lo, hi)) if i >= 0]
        return min(found, default=-1)

    def _pieces(self, text: str, codes: bytes | None, side: str):
        """Prefixes (right truncation) or suffixes (left) of the (compacted) ``text`` that end (start) at a
        boundary, of growing length, each with its truncated encoding."""
        size = PRECUT_FACTOR * self._max_length()
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

    def pieces(self, text: str, size: int) -> list[str]:
        """``text`` in consecutive pieces of about ``size`` characters at most whose tokens, one piece after another
        and without special tokens, are exactly the text's (chunking tokenizes a long text piece by piece, so its
        memory stays that of one piece): compacted and cut at boundaries, for BERT-like tokenizers, whose tokens
        are those of each word in turn; ``[text]`` otherwise."""
        if len(text) <= size or self.plan is None or self.plan.kind != "wordpiece":
            return [text]
        text, codes = self._compact(text)
        if codes is None:
            return [text]
        out, start = [], 0
        while len(text) - start > size:
            at = self._boundary(text, codes, start + size // 2, start + size, "right")
            if at <= start:
                break
            out.append(text[start:at])
            start = at
        out.append(text[start:])
        return out

    def cut(self, text: str, direction: str | None = None) -> str:
        """A text whose kept tokens under truncation on ``direction`` (None: the tokenizer's side) at
        max_seq_length are exactly those of ``text``: compacted, and cut at a boundary when that is exact."""
        side = self._side(text, direction)
        if side is None:
            return text
        max_len = self._max_length()
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
