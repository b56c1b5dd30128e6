"""Rerankers: sentence_transformers.CrossEncoder (one graph from a (query, document) pair to the classifier's
logits; the activation runs here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..chunking import DEFAULT_CHUNK_OVERLAP, check_long_inputs
from ..errors import UnsupportedInputError
from ..inputs import prepare
from ..schema import SCORES
from . import register
from .base import Kind, Prepared, Route

if TYPE_CHECKING:
    from ..chunking import Chunks
    from ..model import Model


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "sigmoid": _sigmoid,
    "softmax": softmax,
}


def activation(default: str, activation_fn: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The activation a call asks for: None (the model's), a name, torch's module (by class name) or a callable."""
    if activation_fn is None:
        return ACTIVATIONS[default]
    if isinstance(activation_fn, str):
        if activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn {activation_fn!r} is unknown; choose from {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[activation_fn]
    name = type(activation_fn).__name__.lower()  # torch.nn.Sigmoid() / Identity() / Softmax(), if passed
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    if callable(activation_fn):
        return lambda x: np.asarray(activation_fn(x), dtype=np.float32)
    raise ValueError(f"activation_fn must be None, a name in {sorted(ACTIVATIONS)} or a callable")


def _is_pair(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(s, str) for s in x)


def pairs_of(sentence_pairs: Any, texts_alone: bool = False) -> tuple[list, bool]:
    """(pairs, whether one pair was passed), each checked (``texts_alone``: single strings are taken too, the
    texts a classifier scores alone; a list is then always a list of items)."""
    if not texts_alone and _is_pair(sentence_pairs):
        return [(sentence_pairs[0], sentence_pairs[1])], True
    if isinstance(sentence_pairs, (str, bytes, dict)) or sentence_pairs is None:
        raise UnsupportedInputError(
            f"predict expects a [query, document] pair or a list of them, got {type(sentence_pairs).__name__}"
        )
    pairs: list = []
    for i, item in enumerate(sentence_pairs):
        if texts_alone and isinstance(item, str):
            pairs.append(item)
            continue
        if not _is_pair(item):
            raise UnsupportedInputError(
                f"pair {i} is {type(item).__name__} ({item!r:.60}); each item must be a [query, document] pair of "
                "strings"
            )
        pairs.append((item[0], item[1]))
    return pairs, False


@register
class CrossEncoderKind(Kind):
    task = "cross-encoder"
    output = "scores"
    output_schema = SCORES
    reproduces = "sentence_transformers.CrossEncoder"
    public_class = "st_runtime.cross_encoder:CrossEncoder"
    routes = (
        Route("/rerank", "st_runtime.serve.handlers:tei_rerank"),
        Route("/", "st_runtime.serve.tei_more:tei_cross_encoder_root"),
        Route("/predict", "st_runtime.serve.tei_more:tei_predict"),
        Route("/v1/rerank", "st_runtime.serve.dialects:cohere_rerank", "cohere"),
        Route("/v2/rerank", "st_runtime.serve.dialects:cohere_rerank", "cohere"),
    )
    window_pooling = "the maximum over the document's windows, each paired with the whole query (MaxP)"

    def prepare(
        self,
        model: Model,
        inputs: Any,
        max_length: int | None = None,
        direction: str | None = None,
        strict: bool = False,
        texts_alone: bool = False,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> Prepared:
        """(query, document) pairs (``texts_alone``: single texts too, for a classifier of single texts);
        ``long_inputs``: "truncate" (sentence-transformers' behaviour), "error" (as ``strict``: refuse a pair over
        the limit) or "chunk" (a long document runs as windows, each with the whole query; see
        st_runtime.chunking)."""
        pairs, singular = pairs_of(inputs, texts_alone)
        long_inputs = check_long_inputs(long_inputs)
        if strict and long_inputs == "truncate":
            long_inputs = "error"
        if long_inputs != "chunk":  # "error": the drivers refuse a pair over the limit as they tokenize it
            return Prepared(prepare(pairs, None), max_length, direction, long_inputs == "error", singular=singular)
        items, chunks = self.long_call(model, pairs, max_length, long_inputs, chunk_overlap)
        return Prepared(items, max_length, direction, singular=singular, chunks=chunks)

    def pool_windows(self, model: Model, rows: np.ndarray, chunks: Chunks) -> np.ndarray:
        """Each pair's logits: the element-wise maximum over its windows' (MaxP; with one label, the window whose
        score is highest under any increasing activation)."""
        return np.maximum.reduceat(rows, chunks.starts, axis=0)

    def finish(
        self, model: Model, rows: np.ndarray, activation_fn: Any = None, apply_softmax: bool = False
    ) -> np.ndarray:
        """Scores [n, num_labels] after the activation (and softmax over the labels, when asked)."""
        scores = activation(model.spec.output["activation"], activation_fn)(rows)
        if apply_softmax and scores.ndim == 2 and scores.shape[1] > 1:
            scores = softmax(scores)
        return scores

    def warm_up(self, model: Model) -> None:
        model.run(self.prepare(model, [(w, w) for w in self.warmup_texts]), show_progress_bar=False)

    def describe(self, model: Model) -> dict[str, Any]:
        labels = model.spec.output.get("labels") or []
        return {"reranker": {"id2label": {str(i): label for i, label in enumerate(labels)}}}
