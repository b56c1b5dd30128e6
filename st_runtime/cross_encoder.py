"""CrossEncoder: sentence-transformers' reranker API on an exported cross-encoder (loading is
:class:`st_runtime.model.Model`'s; pairs and scores are the cross-encoder kind's, st_runtime.kinds.cross_encoder)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kinds
from .chunking import DEFAULT_CHUNK_OVERLAP
from .errors import UnsupportedInputError
from .kinds.cross_encoder import ACTIVATIONS, CrossEncoderKind
from .model import Model

__all__ = ["ACTIVATIONS", "CrossEncoder"]


class CrossEncoder(Model):
    """Drop-in for ``sentence_transformers.CrossEncoder`` at inference time: ``predict`` and ``rank``.

    Args:
        model_path: a folder written by ``st-export`` from a CrossEncoder model (where sentence-transformers takes a
            model name or path).
        providers: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, an onnxruntime provider name, or an
            explicit list (a list of several is an opt-in to fall back, with a warning).
        threads: onnxruntime intra-op threads; default: the physical cores of this machine.
        variant: the exported graph to run ("fp32", "opt", "int8", "fastest"); default: the fastest that
            reproduces sentence-transformers' results.
        verify_checksums: check the sha256 of every file at load (sizes are always checked).
        session_options: an ``onnxruntime.SessionOptions`` to use as is.
        io_binding: feed the graph through onnxruntime IO binding (default: on for CUDA/TensorRT).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA only).
        device: sentence-transformers' ``device``: "cpu", "cuda" or "cuda:N" (in place of ``providers``).
    """

    kind = kinds.instance(CrossEncoderKind)

    def _loaded(self) -> None:
        self.num_labels: int = int(self.spec.output["num_labels"])
        self.labels: list[str] = list(self.spec.output.get("labels") or [])
        self.default_activation: str = self.spec.output["activation"]
        self.max_length: int | None = self.text_tower.max_seq_length

    def __repr__(self) -> str:
        return (
            f"CrossEncoder({str(self.path)!r}, variant={self.variant!r}, num_labels={self.num_labels}, "
            f"activation={self.default_activation!r})"
        )

    def predict_activation(self, logits: np.ndarray) -> np.ndarray:
        """The model's default activation applied to ``logits`` (what ``predict`` returns by default)."""
        return self.kind.finish(self, np.asarray(logits, dtype=np.float32))

    def logits(
        self,
        sentence_pairs,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> np.ndarray:
        """The classifier's raw output, [n, num_labels] float32, for a list of (query, document) pairs
        (``long_inputs``, ``chunk_overlap``: as in :meth:`predict`)."""
        prepared = self.kind.prepare(self, sentence_pairs, long_inputs=long_inputs, chunk_overlap=chunk_overlap)
        return self.run(prepared, batch_size, show_progress_bar)

    def predict(
        self,
        sentence_pairs,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Any = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ):
        """Scores for (query, document) pairs, as ``sentence_transformers.CrossEncoder.predict``.

        Args:
            sentence_pairs: a list of ``(query, document)`` pairs (or one pair).
            batch_size: the most pairs per batch; ``None`` lets st_runtime size batches by tokens.
            show_progress_bar: draw a tqdm bar over the pairs (default: when the "st_runtime" logger is at INFO).
            activation_fn: applied to the logits; default the model's (sigmoid for one label, identity otherwise).
                "identity", "sigmoid", "softmax", the torch modules of those names, or a callable on numpy arrays.
            apply_softmax: apply softmax over the labels afterwards (models with more than one label).
            convert_to_numpy: ``False`` (with ``convert_to_tensor=False``) gives a list instead of an array.
            convert_to_tensor: accepted for compatibility; returns the numpy array (there is no torch here).
            long_inputs: st_runtime extension: a pair over the limit is "truncate"d (sentence-transformers'
                behaviour), refused ("error": InputTooLongError naming its token count), or its document cut into
                windows ("chunk"), each paired with the whole query; the pair's score is then the maximum over its
                windows (MaxP). See docs/long-inputs.md.
            chunk_overlap: tokens shared by consecutive windows of a document (``long_inputs="chunk"``).

        Returns:
            One float32 score per pair for a one-label model (``[n]``; a single pair gives a scalar),
            ``[n, num_labels]`` otherwise.
        """
        prepared = self.kind.prepare(self, sentence_pairs, long_inputs=long_inputs, chunk_overlap=chunk_overlap)
        rows = self.run(prepared, batch_size, show_progress_bar)
        scores = self.kind.finish(self, rows, activation_fn=activation_fn, apply_softmax=apply_softmax)
        if self.num_labels == 1:
            scores = scores[:, 0]
        if prepared.singular:
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
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> list[dict[str, Any]]:
        """``documents`` ranked for ``query``, as ``sentence_transformers.CrossEncoder.rank`` (one-label models).

        Args:
            query: the query text.
            documents: the texts to rank.
            top_k: return at most this many (default: all).
            return_documents: add each document's ``"text"`` to its entry.
            batch_size: as in ``predict``.
            show_progress_bar: as in ``predict``.
            activation_fn: as in ``predict``.
            apply_softmax: as in ``predict``.
            long_inputs: as in ``predict``.
            chunk_overlap: as in ``predict``.

        Returns:
            ``[{"corpus_id", "score"(, "text")}]`` by decreasing score (ties in input order).
        """
        if not isinstance(query, str):
            raise UnsupportedInputError(f"query must be a string, got {type(query).__name__}")
        if self.num_labels != 1:
            raise ValueError(f"rank needs a model with one label; this one has {self.num_labels}. Use predict.")
        if isinstance(documents, str):
            raise UnsupportedInputError("documents must be a list of strings, not one string")
        documents = list(documents)
        scores = self.predict(
            [(query, d) for d in documents], batch_size=batch_size, activation_fn=activation_fn,
            apply_softmax=apply_softmax, show_progress_bar=show_progress_bar, long_inputs=long_inputs,
            chunk_overlap=chunk_overlap,
        )  # fmt: skip
        return ranking(np.asarray(scores), documents if return_documents else None, top_k, "corpus_id", "score")


def ranking(
    scores: np.ndarray, texts: list[str] | None, top_k: int | None, index_key: str, score_key: str, text_key="text"
) -> list[dict[str, Any]]:
    """Entries {index_key, score_key(, text_key)} by decreasing score (ties in input order), at most top_k."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    out = []
    for i in order:
        entry: dict[str, Any] = {index_key: int(i), score_key: float(scores[i])}
        if texts is not None:
            entry[text_key] = texts[i]
        out.append(entry)
    return out
