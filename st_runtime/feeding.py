"""The feed path of a text tower, up to the graph's input arrays: its tokenizers (one per truncation length and
side, each with its ASCII fast path, st_runtime.fasttok) and tokenization spread over worker threads.

``tokenizers`` releases the interpreter lock while it encodes a batch, but holds it while it reads the texts in and
makes the result objects; so one large call leaves those steps unoverlapped. A large call is cut here into a chunk
per worker, and each worker thread encodes its chunk: one chunk's Rust work runs while another's objects are made.
The chunks are contiguous and joined in order, so the encodings are those of one call."""

from __future__ import annotations

import copy
import functools
import itertools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ManifestError
from .fasttok import AsciiFastPath
from .inputs import TokenItem
from .nativetok import NativeWordPiece
from .packed import Packed

# a worker's chunk holds at least this many texts, or of plain texts this many characters (smaller calls are
# tokenized in one piece, on the calling thread)
MIN_CHUNK = 256
MIN_CHUNK_CHARS = 32768


def default_feed_threads() -> int:
    """Tokenization threads when the caller sets none: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def load_tokenizer(folder: Path, info: Mapping[str, Any]):
    """The text tower's tokenizer: a tokenizers.Tokenizer (kind "hf", the default) or the word-embedding
    models' WhitespaceTokenizer (kind "whitespace"), which offers the same encode_batch interface."""
    kind = info.get("kind", "hf")
    if kind == "hf":
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / info["file"]))
    if kind == "whitespace":
        from .glove import WhitespaceTokenizer

        return WhitespaceTokenizer.from_manifest(folder, info)
    raise ManifestError(
        f"tokenizer kind {kind!r} in {folder} is unknown to this st-runtime (it knows 'hf' and "
        "'whitespace'). Upgrade st-runtime or re-export the model."
    )


# per truncation: (the tokenizer, its ASCII fast path or None, its native form or None)
Entry = tuple[Any, AsciiFastPath | None, NativeWordPiece | None]


def _entry(tokenizer) -> Entry:
    return tokenizer, AsciiFastPath.make(tokenizer), NativeWordPiece.make(tokenizer)


class Tokenizers:
    """A tower's tokenizers: truncation is chosen per call (each maximum length and side has its own configured
    tokenizer and fast path, made once), so one set is shared by every thread."""

    # other lengths than the exported one whose tokenizers are kept (each is a copy, vocabulary included)
    MAX_TRUNCATIONS = 8

    def __init__(
        self, base, max_seq_length: int | None, side: str, add_special_tokens: bool, threads: int | None = None
    ):
        self.max_seq_length = max_seq_length
        self.side = side
        self.add_special_tokens = add_special_tokens
        base.no_padding()
        base = self._truncating(base, max_seq_length)
        # by truncation length, or (length, side) for the side other than the model's: (tokenizer, fast path)
        self._entries: dict[Any, Entry] = {max_seq_length: _entry(base)}
        self._lock = threading.Lock()
        self.threads = default_feed_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"feed_threads must be at least 1, got {threads!r}")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = os.getpid()

    @property
    def tokenizer(self):
        """The tokenizer at the exported max_seq_length (the one the model was validated with)."""
        return self._entries[self.max_seq_length][0]

    def _truncating(self, tokenizer, max_len: int | None, direction: str | None = None):
        if max_len is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(
                max_length=int(max_len), strategy="longest_first", direction=direction or self.side
            )
        return tokenizer

    def entry(self, max_len: int | None, direction: str | None = None) -> Entry:
        """(a tokenizer truncating at ``max_len`` (None: not at all) on the side ``direction`` ("right" or "left";
        None: the model's), its ASCII fast path or None, its native form or None), made once per length and side;
        the MAX_TRUNCATIONS most recently made others are kept (a call holds its own reference)."""
        if direction is not None and direction not in ("right", "left"):
            raise ValueError(f"truncation direction must be 'right' or 'left', got {direction!r}")
        key = max_len if direction in (None, self.side) else (max_len, direction)
        entry = self._entries.get(key)
        if entry is None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    entry = _entry(self._truncating(copy.deepcopy(self.tokenizer), max_len, direction))
                    others = [k for k in self._entries if k != self.max_seq_length]
                    if len(others) >= self.MAX_TRUNCATIONS:
                        del self._entries[others[0]]  # dicts keep insertion order: the oldest
                    self._entries[key] = entry
        return entry

    def encode_fn(self, max_length: int | None, direction: str | None = None):
        """The function tokenizing a list of items (texts, (text, text_pair) tuples, TokenItems) as the model
        does, truncating at ``max_length`` on ``direction`` (None: the model's side)."""
        tokenizer, fast, native = self.entry(max_length, direction)
        # encode_batch_fast (tokenizers 0.20+) skips the character offsets, which batching never reads
        method = "encode_batch_fast" if hasattr(tokenizer, "encode_batch_fast") else "encode_batch"
        options: dict[str, Any] = {} if self.add_special_tokens else {"add_special_tokens": False}
        # ASCII texts take the fast path where the tokenizer has one (the same ids: st_runtime.fasttok)
        encode: Callable[[list], Sequence] = (
            functools.partial(fast.encode, method=method, **options)
            if fast is not None
            else functools.partial(getattr(tokenizer, method), **options)
        )
        spread: Callable[[list], Sequence] = functools.partial(self._spread, encode)
        if native is not None:  # WordPiece texts natively, on the extension's threads (nativetok); the rest as above
            spread = functools.partial(
                native.encode_all, spread, add_special_tokens=self.add_special_tokens, threads=self.threads
            )
        return functools.partial(_encode_items, spread, max_length, direction or self.side)

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_pid != os.getpid():  # a forked child gets a pool of its own
            with self._lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="st-tokenize")
                    self._pool_pid = os.getpid()
        return self._pool

    def _spread(self, encode, items: list) -> Sequence:
        """``encode(items)``, in one contiguous chunk per worker thread when the call is large enough."""
        if self.threads == 1 or len(items) < 2:
            return encode(items)
        chars = sum(map(len, items)) if all(map(str.__instancecheck__, items)) else 0
        parts = min(self.threads, len(items), max(len(items) // MIN_CHUNK, chars // MIN_CHUNK_CHARS))
        if parts <= 1:
            return encode(items)
        pool = self._ensure_pool()
        bounds = np.linspace(0, len(items), parts + 1).astype(np.int64).tolist()
        chunks = [items[a:b] for a, b in itertools.pairwise(bounds)]
        done = list(pool.map(encode, chunks))
        if all(isinstance(part, Packed) for part in done):
            return Packed.join(done)
        return list(itertools.chain.from_iterable(done))


def _encode_items(encode, max_length: int | None, side: str, items: list):
    """``encode(items)`` where items may hold TokenItems (already tokenized): the texts are tokenized in one call
    and each TokenItem is passed through, cut to ``max_length`` on ``side``."""
    if TokenItem not in set(map(type, items)):
        return encode(items)
    at = [i for i, it in enumerate(items) if not isinstance(it, TokenItem)]
    out = [it.truncated(max_length, side) if isinstance(it, TokenItem) else None for it in items]
    encoded = encode([items[i] for i in at]) if at else []
    if isinstance(encoded, Packed):  # the TokenItems packed beside the texts
        given = [i for i, it in enumerate(out) if it is not None]
        parts = [(np.asarray(at, np.int64), encoded), (np.asarray(given, np.int64), Packed.of([out[i] for i in given]))]
        return Packed.scatter(len(items), parts)
    for i, enc in zip(at, encoded):
        out[i] = enc
    return out
