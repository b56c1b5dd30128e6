"""Long inputs: truncate (sentence-transformers' behaviour), chunk, or refuse.

``long_inputs="chunk"`` cuts a text over the model's limit into windows of tokens, each run as an ordinary item
of the length-sorted batches, and the kind pools each text's window rows into one (its ``pool_windows``):

* the text is tokenized once, without truncation and without special tokens (its *content tokens*); a text
  whose content and special tokens fit the limit is left as it is (same result, bit for bit, as truncation);
* the content tokens are cut into windows of ``limit - specials - prompt`` tokens, consecutive windows sharing
  ``chunk_overlap`` tokens (at most half a window); the last window ends at the text's end (it may be shorter);
* each window gets the prompt's tokens (once per window) and the special tokens the tokenizer's post-processor
  puts around a text (read from the tokenizer's own template, so BERT's ``[CLS] .. [SEP]``, RoBERTa's
  ``<s> .. </s>``, or nothing), and runs as a :class:`st_runtime.inputs.TokenItem`;
* a (text, text_pair) item (a cross-encoder's (query, document)) keeps its first text whole and cuts the second:
  each window of the document is paired with the whole query.

``long_inputs="error"`` refuses a text over the limit (InputTooLongError; st-serve answers 413) naming its
token count and the limit.

Tokenizing a text costs time linear in its length; the windows' token ids are the text's own ids, so memory is
a few bytes per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputTooLongError, UnsupportedInputError

LONG_INPUTS = ("truncate", "chunk", "error")
# tokens shared by consecutive windows: benchmarks/long_inputs.py measured 0, 16, 32 and 64, and 0 retrieved best
# (within two questions of the others) at the lowest cost; docs/long-inputs.md
DEFAULT_CHUNK_OVERLAP = 0
# a (query, document) pair is chunked only where the query leaves at least this share of the limit per window
MIN_WINDOW_SHARE = 4
# a long text is tokenized in pieces of about this many characters where that is exact (LongTextCutter.pieces),
# this many pieces per tokenizer call: the tokenizer's working memory (about 100 bytes a character) stays bounded
PIECE_CHARS = 16384
PIECES_PER_CALL = 8


def check_long_inputs(value: Any) -> str:
    if value not in LONG_INPUTS:
        raise ValueError(f"long_inputs must be one of {list(LONG_INPUTS)}, got {value!r}")
    return value


def check_overlap(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"chunk_overlap must be a non-negative integer (tokens), got {value!r}")
    return value


@dataclass
class Chunks:
    """Which caller input each prepared item belongs to, for a call that chunked at least one text.

    ``groups[i]``: the caller's text index of item ``i`` (non-decreasing: a text's windows are consecutive);
    ``tokens[i]``: item ``i``'s tokens, special tokens included (-1 where the item is a string the tower counts
    itself); ``spans[i]``: for a window, (content start, content end, tokens before the content in the window)
    in its text's content tokens; None for an item that is not a window."""

    groups: np.ndarray
    tokens: np.ndarray
    spans: list[tuple[int, int, int] | None] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the kind's own notes for its pool_windows

    @property
    def count(self) -> int:
        """How many caller texts."""
        return int(self.groups[-1]) + 1 if len(self.groups) else 0

    @property
    def starts(self) -> np.ndarray:
        """Index of each caller text's first item (for ``np.ufunc.reduceat``)."""
        return np.searchsorted(self.groups, np.arange(self.count))

    def sizes(self) -> np.ndarray:
        return np.bincount(self.groups, minlength=self.count)

    def per_text(self, counts: np.ndarray) -> np.ndarray:
        """Per-item counts (tokens) summed per caller text."""
        return np.bincount(self.groups, weights=counts, minlength=self.count).astype(np.int64)


class Template:
    """The special tokens a tokenizer's post-processor puts around one text and around a pair, read from the
    tokenizer itself (an encoding of a probe with and without special tokens)."""

    def __init__(self, tokenizer: Any, add_special_tokens: bool):
        self.tokenizer, self.add_special_tokens = tokenizer, add_special_tokens
        self.single = self._parts(tokenizer, "a", add_special_tokens)
        self._pair: list[tuple[Any, Any]] | None = None

    @property
    def pair(self) -> list[tuple[Any, Any]]:
        if self._pair is None:
            self._pair = self._parts(self.tokenizer, ("a", "b"), self.add_special_tokens)
        return self._pair

    @staticmethod
    def _parts(tokenizer: Any, probe: Any, add_special_tokens: bool) -> list[tuple[Any, Any]]:
        """[(ids, type_ids) of special tokens, or (sequence index, its type id)] in order."""
        enc = tokenizer.encode(*((probe,) if isinstance(probe, str) else probe), add_special_tokens=add_special_tokens)
        parts: list[tuple[Any, Any]] = []
        for tid, ttype, seq in zip(enc.ids, enc.type_ids, enc.sequence_ids):
            if seq is None:
                if parts and isinstance(parts[-1][0], list):
                    parts[-1][0].append(tid)
                    parts[-1][1].append(ttype)
                else:
                    parts.append(([tid], [ttype]))
            elif not parts or parts[-1][0] != seq:
                parts.append((seq, ttype))
        return parts

    def specials(self, pair: bool) -> int:
        return sum(len(p[0]) for p in (self.pair if pair else self.single) if isinstance(p[0], list))

    def wrap(self, seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[int], int]:
        """(ids, type ids, tokens before the last sequence) of ``seqs`` (one text, or a pair) with the special
        tokens."""
        ids: list[int] = []
        types: list[int] = []
        before_last = 0
        for part, ptype in self.pair if len(seqs) == 2 else self.single:
            if isinstance(part, list):
                ids += part
                types += ptype
            else:
                if part == len(seqs) - 1:
                    before_last = len(ids)
                ids += seqs[part]
                types += [ptype] * len(seqs[part])
        return ids, types, before_last


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most ``size`` over ``n`` tokens, consecutive ones sharing ``overlap`` (at most
    half a window); the last one ends at ``n``."""
    overlap = min(overlap, size // 2)
    step = size - overlap
    out = []
    start = 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end >= n:
            return out
        start += step


def _too_long(i: int, tokens: int, limit: int, mode: str) -> InputTooLongError:
    how = (
        "send long_inputs='chunk' to embed it in windows, or 'truncate' to keep the first tokens"
        if mode == "error"
        else "shorten the query, or send long_inputs='truncate'"
    )
    return InputTooLongError(
        f"input {i} has {tokens} tokens, over the limit of {limit} tokens (the model's max_seq_length); {how}."
    )


def _prompted(item: Any, prompt: str | None) -> Any:
    if not prompt or not isinstance(item, (str, tuple)):
        return item
    return prompt + item if isinstance(item, str) else (prompt + item[0], item[1])


def _content(encode: Any, texts: list[str], pieces: Any) -> list[Any]:
    """Each text's token ids without special tokens: a long text's pieces (``pieces(text)``, see
    LongTextCutter.pieces) a few per tokenizer call, joined; the others in one call."""
    split = [pieces(t, PIECE_CHARS) if pieces is not None and len(t) > PIECE_CHARS else [t] for t in texts]
    short = [i for i, parts in enumerate(split) if len(parts) == 1]
    out: list[Any] = [None] * len(texts)
    for i, enc in zip(short, encode([split[i][0] for i in short], add_special_tokens=False) if short else []):
        out[i] = enc.ids
    for i, parts in enumerate(split):
        if len(parts) > 1:
            ids = []
            for k in range(0, len(parts), PIECES_PER_CALL):
                encodings = encode(parts[k : k + PIECES_PER_CALL], add_special_tokens=False)
                ids += [np.asarray(e.ids, dtype=np.int32) for e in encodings]
            out[i] = np.concatenate(ids)
    return out


def _sequences(tokenizer: Any, items: list, prompt: str | None, pieces: Any) -> list[tuple[list[int], Any] | None]:
    """Per item, its content tokens (no special tokens) as (head, body): (prompt, text) for a text, (prompt and
    first text, text_pair) for a pair; None for a TokenItem. Each text is tokenized once."""
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
    prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else []
    singles = [it for it in items if isinstance(it, str)]
    pairs = [it for it in items if isinstance(it, tuple)]
    single_ids = iter(_content(encode, singles, pieces))
    firsts = iter(encode([_prompted(p, prompt)[0] for p in pairs], add_special_tokens=False) if pairs else [])
    seconds = iter(_content(encode, [p[1] for p in pairs], pieces))
    out: list[tuple[list[int], Any] | None] = []
    for item in items:
        if isinstance(item, str):
            out.append((prompt_ids, next(single_ids)))
        elif isinstance(item, tuple):
            out.append((list(next(firsts).ids), next(seconds)))
        else:
            out.append(None)
    return out


def plan(
    tower: Any,
    items: list,
    limit: int | None,
    mode: str,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
    prompt: str | None = None,
    pieces: Any = None,
) -> tuple[list, Chunks | None]:
    """The items a call runs for ``items`` (strings or (text, text_pair) tuples, surrogates repaired, prompt not
    yet applied; TokenItems pass unchanged) under ``mode`` ("chunk" or "error") at ``limit`` tokens (None: the
    model has no limit), and their Chunks (None when no text was chunked: then the items are the caller's, with
    the prompt applied). ``pieces(text, size)``: the text in pieces tokenized one after another (bounded memory;
    LongTextCutter.pieces)."""
    from .inputs import TokenItem

    if limit is None or not items:
        return [_prompted(it, prompt) for it in items], None
    tokenizer = tower.tokenizer_for(None)
    if not hasattr(tokenizer, "post_processor"):
        raise UnsupportedInputError(
            f"long_inputs={mode!r} needs a subword tokenizer (tokenizers.Tokenizer); this model's tokenizer "
            f"({type(tokenizer).__name__}) does not truncate texts."
        )
    template = Template(tokenizer, tower.add_special_tokens)
    out: list = []
    groups: list[int] = []
    tokens: list[int] = []
    spans: list[tuple[int, int, int] | None] = []
    for i, (item, seqs) in enumerate(zip(items, _sequences(tokenizer, items, prompt, pieces))):
        pair = isinstance(item, tuple)
        total = len(item) if seqs is None else template.specials(pair) + len(seqs[0]) + len(seqs[1])
        if total <= limit or seqs is None:  # a TokenItem over the limit is cut as the call truncates
            if mode == "error" and total > limit:
                raise _too_long(i, total, limit, mode)
            out.append(_prompted(item, prompt))
            groups.append(i)
            tokens.append(-1)
            spans.append(None)
            continue
        head, body = seqs
        size = limit - template.specials(pair) - len(head)
        if mode == "error" or size < max(1, limit // MIN_WINDOW_SHARE):
            raise _too_long(i, total, limit, mode)
        for a, b in windows(len(body), size, overlap):
            ids, types, before = template.wrap([head, body[a:b]] if pair else [[*head, *body[a:b]]])
            out.append(TokenItem(ids, types))
            groups.append(i)
            tokens.append(len(ids))
            spans.append((a, b, before + (0 if pair else len(head))))
    if len(out) == len(items):  # no text was cut
        return out, None
    return out, Chunks(np.asarray(groups, dtype=np.int64), np.asarray(tokens, dtype=np.int64), spans)


def stitch(rows: list[np.ndarray], spans: list[tuple[int, int, int]]) -> np.ndarray:
    """One text's per-token rows from its windows' (each [window tokens, hidden]): the first window's tokens
    before the content (special tokens, prompt), each content token once, taken from the window where it is
    farther from an edge, then the last window's tokens after the content."""
    first_before = spans[0][2]
    pieces = [rows[0][:first_before]]
    pos = 0
    for k, (a, b, before) in enumerate(spans):
        end = b
        if k + 1 < len(spans):
            a2, b2, _ = spans[k + 1]
            end = a2
            # in the overlap [a2, b), a token stays here while it is at least as far from this window's edges
            while end < b and min(end - a, b - 1 - end) >= min(end - a2, b2 - 1 - end):
                end += 1
        pieces.append(rows[k][before + pos - a : before + end - a])
        pos = end
    last_a, last_b, last_before = spans[-1]
    pieces.append(rows[-1][last_before + last_b - last_a :])
    return np.concatenate(pieces)
