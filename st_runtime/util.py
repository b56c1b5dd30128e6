"""numpy versions of sentence_transformers.util's similarity helpers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "SIMILARITY_FUNCTIONS",
    "calibration_ranges",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "normalize_embeddings",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "quantize_embeddings",
    "semantic_search",
]


def _as_2d(x) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32) if not isinstance(x, np.ndarray) or x.dtype.kind != "f" else x
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"expected a vector or a 2-D array of vectors, got an array of shape {arr.shape}")
    return arr


def normalize_embeddings(embeddings) -> np.ndarray:
    """L2-normalise each row (zero rows stay zero)."""
    a = np.asarray(embeddings)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


def cos_sim(a, b) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``: shape [len(a), len(b)]."""
    return normalize_embeddings(_as_2d(a)) @ normalize_embeddings(_as_2d(b)).T


def dot_score(a, b) -> np.ndarray:
    """Dot product of every row of ``a`` with every row of ``b``: shape [len(a), len(b)]."""
    return _as_2d(a) @ _as_2d(b).T


def euclidean_sim(a, b) -> np.ndarray:
    """Negative euclidean distance (higher is more similar), as sentence-transformers defines it."""
    a, b = _as_2d(a), _as_2d(b)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return -np.sqrt(np.maximum(sq, 0.0))


def manhattan_sim(a, b) -> np.ndarray:
    """Negative manhattan distance (higher is more similar)."""
    a, b = _as_2d(a), _as_2d(b)
    return -np.abs(a[:, None, :] - b[None, :, :]).sum(-1)


def pairwise_cos_sim(a, b) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b``: shape [len(a)]."""
    a, b = normalize_embeddings(_as_2d(a)), normalize_embeddings(_as_2d(b))
    return (a * b).sum(-1)


def pairwise_dot_score(a, b) -> np.ndarray:
    """Dot product of row i of ``a`` with row i of ``b``: shape [len(a)]."""
    return (_as_2d(a) * _as_2d(b)).sum(-1)


SIMILARITY_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": cos_sim,
    "dot": dot_score,
    "euclidean": euclidean_sim,
    "manhattan": manhattan_sim,
}


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable[[np.ndarray, np.ndarray], np.ndarray] = cos_sim,
) -> list[list[dict]]:
    """For each query, the ``top_k`` corpus entries by score: a list (one per query) of lists of
    ``{"corpus_id": int, "score": float}`` sorted by decreasing score."""
    q, c = _as_2d(query_embeddings), _as_2d(corpus_embeddings)
    if top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    results: list[list[dict]] = []
    for qs in range(0, len(q), query_chunk_size):
        qchunk = q[qs : qs + query_chunk_size]
        best_scores = np.full((len(qchunk), 0), -np.inf, dtype=np.float32)
        best_ids = np.zeros((len(qchunk), 0), dtype=np.int64)
        for cs in range(0, len(c), corpus_chunk_size):
            scores = score_function(qchunk, c[cs : cs + corpus_chunk_size])
            k = min(top_k, scores.shape[1])
            idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            best_scores = np.concatenate([best_scores, np.take_along_axis(scores, idx, 1)], axis=1)
            best_ids = np.concatenate([best_ids, idx + cs], axis=1)
        for row_scores, row_ids in zip(best_scores, best_ids):
            order = np.lexsort((row_ids, -row_scores))[:top_k]
            results.append([{"corpus_id": int(row_ids[i]), "score": float(row_scores[i])} for i in order])
    return results


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """[2, dim] per-dimension minimum and maximum, the ranges int8/uint8 quantization maps onto 256 steps."""
    emb = np.asarray(embeddings, dtype=np.float32)
    return np.vstack((emb.min(axis=0), emb.max(axis=0)))


def quantize_embeddings(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers' ``quantize_embeddings`` in numpy: float16, int8/uint8 (256 steps per dimension
    over ``ranges``, from :func:`calibration_ranges`), binary/ubinary (the sign bits packed 8 per byte; binary
    is offset by -128 into int8)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return emb
    if precision == "float16":
        return emb.astype(np.float16)
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"precision {precision!r} needs calibration ranges")
        ranges = np.asarray(ranges, dtype=np.float32)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((emb - starts) / steps), 0, 255)  # values outside the ranges are clipped
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(emb > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    raise ValueError(
        f"precision must be one of ['float32', 'float16', 'int8', 'uint8', 'binary', 'ubinary'], got {precision!r}"
    )
