"""CrossEncoder: sentence-transformers' reranker API on an exported cross-encoder (one graph from token ids to the
classifier's logits), on the same tokenizer, batching and runners as SentenceEncoder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import GraphLoadError, UnsupportedInputError
from .inputs import prepare
from .manifest import check_task, graph_files, load_manifest, verify_files
from .providers import resolve_providers, resolve_threads
from .text import TextTower
from .variants import choose_variant, warn_if_int8_kernels_differ

TASK = "cross-encoder"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
}


def _pairs(sentence_pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """(pairs, whether one pair was passed)."""

    def is_pair(x: Any) -> bool:
        return isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(s, str) for s in x)

    if is_pair(sentence_pairs):
        return [(sentence_pairs[0], sentence_pairs[1])], True
    if isinstance(sentence_pairs, (str, bytes, dict)) or sentence_pairs is None:
        raise UnsupportedInputError(
            f"predict expects a [query, document] pair or a list of them, got {type(sentence_pairs).__name__}"
        )
    pairs = []
    for i, item in enumerate(sentence_pairs):
        if not is_pair(item):
            raise UnsupportedInputError(
                f"pair {i} is {type(item).__name__} ({item!r:.60}); each item must be a [query, document] pair of "
                "strings"
            )
        pairs.append((item[0], item[1]))
    return pairs, False


class CrossEncoder:
    """Drop-in for ``sentence_transformers.CrossEncoder`` at inference time: ``predict`` and ``rank``.

    Args:
        model_path: a folder written by ``st-export`` from a CrossEncoder model.
        providers, threads, variant, verify_checksums, session_options, io_binding: as ``SentenceEncoder``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers=None,
        threads: int | None = None,
        variant: str | None = None,
        verify_checksums: bool = True,
        session_options: ort.SessionOptions | None = None,
        io_binding: bool | None = None,
    ):
        self.path = Path(model_path)
        self.manifest = load_manifest(self.path)
        check_task(self.path, self.manifest, TASK)
        self.threads = resolve_threads(threads)
        self.providers, fallback_allowed = resolve_providers(providers)
        text = self.manifest["towers"].get("text")
        if text is None:
            raise GraphLoadError(f"{self.path} has no text tower; re-export the model with `st-export`.")
        self.variant, vspec = choose_variant(self.path, self.manifest, text, variant, self.providers)
        warn_if_int8_kernels_differ(vspec, self.path)
        verify_files(
            self.path,
            self.manifest,
            [*graph_files(self.path, self.manifest, vspec), text["tokenizer"]["file"]],
            checksums=verify_checksums,
        )
        scores = self.manifest["scores"]
        self.num_labels: int = int(scores["num_labels"])
        self.labels: list[str] = list(scores.get("labels") or [])
        self.default_activation: str = scores["activation"]
        self.text_tower = TextTower(
            self.path,
            text,
            vspec,
            self.providers,
            fallback_allowed,
            self.threads,
            session_options,
            io_binding,
            False,
            self.num_labels,
        )
        self.max_length: int | None = self.text_tower.max_seq_length

    @property
    def max_seq_length(self) -> int | None:
        return self.max_length

    @property
    def tokenizer(self):
        """The tokenizer at the exported max_seq_length (a ``tokenizers.Tokenizer``)."""
        return self.text_tower.tokenizer

    def __repr__(self) -> str:
        return (
            f"CrossEncoder({str(self.path)!r}, variant={self.variant!r}, num_labels={self.num_labels}, "
            f"activation={self.default_activation!r})"
        )

    def _activation(self, activation_fn: Any) -> Callable[[np.ndarray], np.ndarray]:
        if activation_fn is None:
            return ACTIVATIONS[self.default_activation]
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

    def predict_activation(self, logits: np.ndarray) -> np.ndarray:
        """The model's default activation applied to ``logits`` (what ``predict`` returns by default)."""
        return ACTIVATIONS[self.default_activation](np.asarray(logits, dtype=np.float32))

    def logits(
        self, sentence_pairs, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """The classifier's raw output, [n, num_labels] float32, for a list of (query, document) pairs."""
        from .encoder import progress_bar

        pairs, _ = _pairs(sentence_pairs)
        out = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        bar = progress_bar(show_progress_bar, len(pairs))
        try:
            if pairs:
                self.text_tower.embed(prepare(pairs, None), batch_size, out, None, bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        return out

    def predict(
        self,
        sentence_pairs,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Any = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ):
        """Scores for (query, document) pairs, as ``CrossEncoder.predict``: one float per pair for a one-label
        model ([n]; a single pair gives a scalar), [n, num_labels] otherwise. ``activation_fn`` defaults to the
        model's (sigmoid for one label); "identity", "sigmoid", "softmax" or a callable on numpy arrays.
        ``apply_softmax`` applies softmax over the labels afterwards (models with more than one label)."""
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0
        ):
            raise ValueError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}.")
        pairs, singular = _pairs(sentence_pairs)
        scores = self._activation(activation_fn)(self.logits(pairs, batch_size, show_progress_bar))
        if apply_softmax and scores.ndim == 2 and scores.shape[1] > 1:
            scores = _softmax(scores)
        if self.num_labels == 1:
            scores = scores[:, 0]
        if singular:
            return scores[0]
        if not convert_to_numpy and not convert_to_tensor:
            return list(scores)
        return scores

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Any = None,
        apply_softmax: bool = False,
    ) -> list[dict[str, Any]]:
        """``documents`` ranked for ``query``: a list of ``{"corpus_id", "score"(, "text")}`` by decreasing
        score, at most ``top_k``, as ``CrossEncoder.rank`` returns them (one-label models only)."""
        if not isinstance(query, str):
            raise UnsupportedInputError(f"query must be a string, got {type(query).__name__}")
        if self.num_labels != 1:
            raise ValueError(f"rank needs a model with one label; this one has {self.num_labels}. Use predict.")
        if isinstance(documents, str):
            raise UnsupportedInputError("documents must be a list of strings, not one string")
        documents = list(documents)
        scores = self.predict(
            [(query, d) for d in documents], batch_size=batch_size, activation_fn=activation_fn,
            apply_softmax=apply_softmax, show_progress_bar=show_progress_bar,
        )  # fmt: skip
        order = np.argsort(-np.asarray(scores), kind="stable")
        if top_k is not None:
            order = order[:top_k]
        out = []
        for i in order:
            entry: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                entry["text"] = documents[i]
            out.append(entry)
        return out
