"""Tokenized items held flat: every item's token ids one after another in one array, with each item's bounds, as
st_runtime.nativetok's tokenizer writes them. Batching reads them with array operations (no Python object per
item); read one item and it answers as a tokenizers Encoding does (ids, type_ids, attention_mask, len)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any, overload

import numpy as np

try:
    from ._wordpiece import fill_batches as _fill_batches
except ImportError:  # built without a C compiler: numpy's gather
    _fill_batches = None  # type: ignore[assignment]

_IDS = operator.attrgetter("ids")
_TYPES = operator.attrgetter("type_ids")


class Encoded:
    """One item of a Packed: its token ids and type ids, as lists (what tokenizers' Encoding offers batching)."""

    __slots__ = ("ids", "type_ids")

    def __init__(self, ids: list[int], type_ids: list[int]):
        self.ids = ids
        self.type_ids = type_ids

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)

    @property
    def overflowing(self) -> list:
        return []

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoded({len(self.ids)} ids)"


class Packed(Sequence):
    """Tokenized items: ``ids`` (int32 or int64, every item's ids in order), ``bounds`` (int64, item i's ids are
    ``ids[bounds[i]:bounds[i + 1]]``) and ``type_ids`` (flat like ids; None: all zero)."""

    __slots__ = ("bounds", "ids", "type_ids")

    def __init__(self, ids: np.ndarray, bounds: np.ndarray, type_ids: np.ndarray | None = None):
        self.ids = ids
        self.bounds = bounds
        self.type_ids = type_ids

    @classmethod
    def of(cls, encodings: Sequence) -> Packed:
        """Any tokenized items (tokenizers Encodings, TokenItems, Packed items) packed, their ids read by C."""
        if isinstance(encodings, Packed):
            return encodings
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(map(_IDS, encodings)), dtype=np.int64, count=total)
        types = np.fromiter(itertools.chain.from_iterable(map(_TYPES, encodings)), dtype=np.int64, count=total)
        return cls(ids, _bounds(lengths), types if types.any() else None)

    @classmethod
    def join(cls, parts: Sequence[Packed]) -> Packed:
        """The items of ``parts``, one part after another."""
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        ids = np.concatenate([p.ids[p.bounds[0] : p.bounds[-1]] for p in parts]) if parts else np.zeros(0, np.int32)
        types = None
        if any(p.type_ids is not None for p in parts):
            types = np.concatenate([p.all_type_ids()[p.bounds[0] : p.bounds[-1]] for p in parts])
        return cls(ids, _bounds(lengths), types)

    @classmethod
    def scatter(cls, n: int, parts: Sequence[tuple[np.ndarray, Packed]]) -> Packed:
        """``n`` items gathered from ``parts``: (positions, their items in that order), the positions together
        covering 0..n-1 once."""
        lengths = np.zeros(n, dtype=np.int64)
        for at, part in parts:
            lengths[at] = part.lengths
        bounds = _bounds(lengths)
        ids = np.zeros(int(bounds[-1]), dtype=np.result_type(*[p.ids.dtype for _, p in parts], np.int32))
        typed = any(p.type_ids is not None for _, p in parts)
        types = np.zeros(len(ids), dtype=np.int64) if typed else None
        for at, part in parts:
            src, dest = part.sources(np.arange(len(part))), _positions(bounds[at], part.lengths)
            ids[dest] = part.ids[src]
            if types is not None and part.type_ids is not None:
                types[dest] = part.type_ids[src]
        return cls(ids, bounds, types)

    @property
    def lengths(self) -> np.ndarray:
        """Each item's token count (int64)."""
        return np.diff(self.bounds)

    def all_type_ids(self) -> np.ndarray:
        return self.type_ids if self.type_ids is not None else np.zeros(len(self.ids), dtype=np.int64)

    def sources(self, idx: np.ndarray) -> np.ndarray:
        """Where the tokens of items ``idx`` are in ``ids``, item after item."""
        return _positions(self.bounds[idx], self.bounds[np.asarray(idx) + 1] - self.bounds[idx])

    def padded(
        self, idx: np.ndarray, width: int, pad_id: int, left: bool = False, typed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(token ids, attention mask, type ids or None unless ``typed``) of the items ``idx`` as [len(idx), width]
        int64 arrays, each row padded with ``pad_id`` on the right (``left``: on the left)."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if _fill_batches is not None:  # C, without the interpreter lock
            return self.padded_batches(idx, [(0, len(idx), width)], pad_id, left, typed)[0]
        shape = (len(idx), width)
        types = self.type_ids if typed and self.type_ids is not None else None
        ids, mask = np.empty(shape, dtype=np.int64), np.empty(shape, dtype=np.int64)
        out_types = np.empty(shape, dtype=np.int64) if typed else None
        lens = self.bounds[idx + 1] - self.bounds[idx]
        where = np.arange(width) >= width - lens[:, None] if left else np.arange(width) < lens[:, None]
        src = self.sources(idx)
        ids.fill(pad_id)
        ids[where] = self.ids[src]
        mask[...] = where
        if out_types is not None:
            out_types.fill(0)
            if types is not None:
                out_types[where] = types[src]
        return ids, mask, out_types

    def padded_batches(
        self,
        order: np.ndarray,
        plan: list[tuple[int, int, int]],
        pad_id: int,
        left: bool = False,
        typed: bool = False,
        threads: int = 1,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``padded`` for every batch of ``plan`` ((start, end, width): the items ``order[start:end]``), written by
        C on up to ``threads`` threads at once where the plan is large."""
        if _fill_batches is None:
            return [self.padded(order[s:e], w, pad_id, left, typed) for s, e, w in plan]
        types = self.type_ids if typed and self.type_ids is not None else None
        outs = [
            (
                np.empty((e - s, w), dtype=np.int64),
                np.empty((e - s, w), dtype=np.int64),
                np.empty((e - s, w), dtype=np.int64) if typed else None,
            )
            for s, e, w in plan
        ]
        order = np.ascontiguousarray(order, dtype=np.int64)
        table = np.asarray(plan, dtype=np.int64).reshape(-1, 3)
        _fill_batches(np.ascontiguousarray(self.ids), self.bounds, order, table, pad_id, left, outs, types, threads)
        if typed and types is None:
            for out in outs:
                out[2].fill(0)  # type: ignore[union-attr]
        return outs

    def take(self, idx) -> Packed:
        """The items ``idx`` (positions), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        src = self.sources(idx)
        types = None if self.type_ids is None else self.type_ids[src]
        return Packed(self.ids[src], _bounds(self.bounds[idx + 1] - self.bounds[idx]), types)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @overload
    def __getitem__(self, i: int) -> Encoded: ...

    @overload
    def __getitem__(self, i: slice) -> Packed: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return self.take(np.arange(start, stop, step))
            bounds = self.bounds[start : max(start, stop) + 1]
            return Packed(self.ids, bounds, self.type_ids)
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        types = [0] * (b - a) if self.type_ids is None else self.type_ids[a:b].tolist()
        return Encoded(self.ids[a:b].tolist(), types)

    def __add__(self, other: Any) -> Any:
        """``a + b`` concatenates as lists do: a Packed when both are, else a list of items."""
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return join([self, other])

    def __radd__(self, other: Any) -> Any:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return join([other, self])

    def __repr__(self) -> str:
        return f"Packed({len(self)} items, {int(self.bounds[-1] - self.bounds[0])} tokens)"


def _bounds(lengths: np.ndarray) -> np.ndarray:
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return bounds


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[0], starts[0]+1, ..., starts[0]+lengths[0]-1, starts[1], ...: each item's range, concatenated."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def join(parts: Sequence[Sequence]) -> Sequence:
    """Tokenized items of several calls as one sequence: a Packed when every part is one, else a list."""
    if parts and all(isinstance(p, Packed) for p in parts):
        return Packed.join(parts)  # type: ignore[arg-type]
    return [e for p in parts for e in p]


def take(encodings: Sequence, idx) -> Sequence:
    """The tokenized items at positions ``idx``, in that order (a Packed stays one)."""
    if isinstance(encodings, Packed):
        return encodings.take(idx)
    return [encodings[i] for i in np.asarray(idx).tolist()]
