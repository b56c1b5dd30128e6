"""Bulk embedding: any number of texts through an encoder in order, a chunk at a time.

:func:`embed_iter` is the in-process API. ``st-embed`` (:mod:`.cli`) is the file job on top of it: streaming
readers (:mod:`.sources`, pyarrow), resumable Parquet part files (:mod:`.job`), and the same job on Ray
(:mod:`st_runtime.ray`). ``import st_runtime`` imports none of these; this module needs only numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def embed_iter(encoder, texts: Iterable[str], chunk_size: int = 8192, **encode_kwargs: Any) -> Iterator[np.ndarray]:
    """Yield ``encoder.encode`` of consecutive chunks of ``texts`` (an iterable of any length, read lazily), in
    order: at most ``chunk_size`` texts and one chunk of embeddings are held at a time."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(texts, str):
        raise TypeError("embed_iter takes an iterable of texts, not one string; wrap it in a list")
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield encoder.encode(chunk, **encode_kwargs)
            chunk = []
    if chunk:
        yield encoder.encode(chunk, **encode_kwargs)


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
    raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
