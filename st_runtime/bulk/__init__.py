"""Bulk embedding: any number of texts through an encoder in order, a chunk at a time.

:func:`embed_iter` is the in-process API. ``st-embed`` (:mod:`.cli`) is the file job on top of it: streaming
readers (:mod:`.sources`, pyarrow), resumable Parquet part files (:mod:`.job`), and the same job on Ray
(:mod:`st_runtime.ray`). ``import st_runtime`` imports none of these; this module needs only numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..util import calibration_ranges, quantize_embeddings

# what st-embed stores: sentence-transformers' precisions, and float16
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
__all__ = ["PRECISIONS", "calibration_ranges", "embed_iter", "quantize_embeddings"]


def embed_iter(encoder, texts: Iterable[str], chunk_size: int = 8192, **encode_kwargs: Any) -> Iterator[np.ndarray]:
    """Yield ``encoder.encode`` of consecutive chunks of ``texts``, in order: at most ``chunk_size`` texts and one
    chunk of embeddings are held at a time.

    Args:
        encoder: a loaded model with ``encode`` (``SentenceTransformer``, ``SparseEncoder``, ...).
        texts: an iterable of texts of any length, read lazily (not one string).
        chunk_size: texts per chunk.
        **encode_kwargs: passed to ``encode`` (``normalize_embeddings``, ``precision``, ``prompt_name``, ...).

    Yields:
        Each chunk's ``encode`` result, in input order.
    """
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
