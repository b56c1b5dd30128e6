"""Sparse encoders (SPLADE): sentence_transformers.SparseEncoder. The graph gives each text's vocabulary-sized
activation row; rows are reduced to their active entries batch by batch (a :class:`SparseRows` sink), so no call,
in process or in the server, holds dense [n, vocabulary] rows."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import UnsupportedInputError
from ..inputs import TokenItem, classify
from ..schema import SPARSE
from . import register
from .base import Kind, Prepared, Route

if TYPE_CHECKING:
    from ..chunking import Chunks
    from ..model import Model


class SparseEmbedding(NamedTuple):
    """One text's sparse embedding: the active vocabulary ids in increasing order (int32) and their weights
    (float32). Unpacks as ``indices, values = embedding``."""

    indices: np.ndarray
    values: np.ndarray

    def to_dense(self, dimension: int) -> np.ndarray:
        row = np.zeros(dimension, dtype=np.float32)
        row[self.indices] = self.values
        return row


def sparsify(rows: np.ndarray, max_active_dims: int | None) -> list[SparseEmbedding]:
    """Each row's non-zero entries, keeping the ``max_active_dims`` largest by magnitude (sentence-transformers'
    select_max_active_dims: top-k of |x|, zeros never kept)."""
    rows = np.asarray(rows, dtype=np.float32)
    if max_active_dims is not None and max_active_dims < rows.shape[1]:
        over = np.count_nonzero(rows, axis=1) > max_active_dims
        if over.any():
            rows = rows.copy()
            sub = rows[over]
            drop = np.argpartition(-np.abs(sub), max_active_dims - 1, axis=1)[:, max_active_dims:]
            np.put_along_axis(sub, drop, 0.0, axis=1)
            rows[over] = sub
    r, c = np.nonzero(rows)
    values = rows[r, c]
    bounds = np.searchsorted(r, np.arange(rows.shape[0] + 1))
    cols = c.astype(np.int32)
    return [SparseEmbedding(cols[a:b], values[a:b]) for a, b in itertools.pairwise(bounds)]


def keep_largest(emb: SparseEmbedding, k: int | None) -> SparseEmbedding:
    """``emb`` with only its ``k`` largest entries by magnitude (ids stay in increasing order)."""
    if k is None or len(emb.indices) <= k:
        return emb
    keep = np.sort(np.argpartition(-np.abs(emb.values), k - 1)[:k])
    return SparseEmbedding(emb.indices[keep], emb.values[keep])


class SparseRows:
    """Where the text tower writes its [batch, vocabulary] outputs (``out[idx] = rows``, ``out[a:b]``): each row
    is reduced to its active entries at once (its ``max_active_dims`` largest, where given)."""

    def __init__(self, n: int, max_active_dims: int | None = None, slots: list | None = None, offset: int = 0):
        self.slots: list[SparseEmbedding | None] = slots if slots is not None else [None] * n
        self.n, self.k, self.offset = n, max_active_dims, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> SparseRows:
        start, stop, step = s.indices(self.n)
        if step != 1:
            raise ValueError("SparseRows takes contiguous slices only")
        return SparseRows(stop - start, self.k, self.slots, self.offset + start)

    def __setitem__(self, idx, rows: np.ndarray) -> None:
        for i, emb in zip(np.asarray(idx).reshape(-1), sparsify(rows, self.k)):
            self.slots[self.offset + int(i)] = emb

    def embeddings(self) -> list[SparseEmbedding]:
        return self.slots[self.offset : self.offset + self.n]  # type: ignore[return-value]


@register
class SparseKind(Kind):
    task = "sparse-embedding"
    output = "sparse"
    output_schema = SPARSE
    reproduces = "sentence_transformers.SparseEncoder"
    public_class = "st_runtime.sparse:SparseEncoder"
    routes = (
        Route("/embed_sparse", "st_runtime.serve.handlers:tei_embed_sparse"),
        Route("/", "st_runtime.serve.handlers:tei_embed_sparse"),
    )
    window_pooling = "the element-wise maximum over the windows (the sum for sum-pooled models), as SPLADE pools tokens"

    def new_rows(self, model: Model, n: int) -> SparseRows:
        return SparseRows(n)

    def split(self, rows: SparseRows, start: int, end: int) -> list[SparseEmbedding]:
        return rows[start:end].embeddings()

    def prepare(self, model: Model, inputs: Any, **options: Any) -> Prepared:
        """Single texts (or TokenItems); ``options``: those of :meth:`Kind.text_call` (prompt, prompt_name,
        max_length, ...)."""
        items, _kinds, singular = classify(inputs)
        pair = next((i for i, it in enumerate(items) if not isinstance(it, (str, TokenItem))), None)
        if pair is not None:
            raise UnsupportedInputError(f"input {pair} is not a string; a sparse encoder embeds single texts.")
        return self.text_call(model, items, singular, **options)

    def finish(
        self, model: Model, rows: list[SparseEmbedding], max_active_dims: int | None = None
    ) -> list[SparseEmbedding]:
        """Each row's ``max_active_dims`` largest entries (default: the model's own setting, from its export)."""
        k = max_active_dims if max_active_dims is not None else model.spec.output.get("max_active_dims")
        return [keep_largest(e, k) for e in rows]

    def pool_windows(self, model: Model, rows: list[SparseEmbedding], chunks: Chunks) -> list[SparseEmbedding]:
        """Each text's windows merged entry by entry: the maximum (the sum where the model sums over tokens)."""
        reduce = np.add if model.spec.output.get("pooling") == "sum" else np.maximum
        out = []
        for a, b in itertools.pairwise([*chunks.starts.tolist(), len(rows)]):
            if b - a == 1:
                out.append(rows[a])
                continue
            indices, inverse = np.unique(np.concatenate([e.indices for e in rows[a:b]]), return_inverse=True)
            values = np.zeros(len(indices), dtype=np.float32)
            reduce.at(values, inverse, np.concatenate([e.values for e in rows[a:b]]))
            out.append(SparseEmbedding(indices.astype(np.int32), values))
        return out

    def describe(self, model: Model) -> dict[str, Any]:
        return {"embedding": {"pooling": "splade"}}
