"""What differs between the kinds of model st-export exports (the manifest's ``task``): how sentence-transformers'
reference outputs are computed, which st_runtime class checks the graph against them and with which gate, and
the workload the variants are timed on. Export steps look the task up here instead of branching on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    output: str  # the graph's output name
    reference: Callable[[Any, list[Any]], np.ndarray]  # (sentence-transformers model, battery inputs) -> outputs
    check: Callable[[np.ndarray, Path, str, str, Any, list[tuple[str, Any]], dict[str, Any]], dict[str, Any]]
    timing: Callable[[Path, str], tuple[Any, Callable[[], Any]]]  # (folder, variant) -> (model, run once)


def _check_embedding(ref, folder, providers, variant, plan, items, manifest):
    from st_runtime import SentenceEncoder

    from .validate import validate

    encoder = SentenceEncoder(folder, providers=providers, variant=variant)
    return validate(ref, encoder, plan.min_cosine, items, mean_gate=plan.mean_cosine)


def _check_cross_encoder(ref, folder, providers, variant, plan, items, manifest):
    from st_runtime import CrossEncoder
    from st_runtime.cross_encoder import ACTIVATIONS

    from .validate import validate_scores

    runtime = CrossEncoder(folder, providers=providers, variant=variant)
    activation = ACTIVATIONS[manifest["scores"]["activation"]]
    return validate_scores(ref, runtime, plan.max_score_diff, items, activation, top_k=plan.top_k_identical)


def _check_sparse(ref, folder, providers, variant, plan, items, manifest):
    from st_runtime import SparseEncoder

    from .validate import validate_sparse

    return validate_sparse(ref, SparseEncoder(folder, providers=providers, variant=variant), plan.max_score_diff, items)


def _texts():
    from .battery import PASSAGES, SHORT_QUERIES

    return SHORT_QUERIES * 16 + PASSAGES * 4


def _time_embedding(folder: Path, variant: str):
    from st_runtime import SentenceEncoder

    enc, texts = SentenceEncoder(folder, providers="cpu", variant=variant), _texts()
    return len(texts), lambda: enc.encode(texts)


def _time_cross_encoder(folder: Path, variant: str):
    """A reranker's work: a few queries, each with many documents."""
    from st_runtime import CrossEncoder

    from .battery import PASSAGES, SHORT_QUERIES

    enc = CrossEncoder(folder, providers="cpu", variant=variant)
    pairs = [(q, d) for q in SHORT_QUERIES[:4] for d in SHORT_QUERIES * 2 + PASSAGES]
    return len(pairs), lambda: enc.logits(pairs)


def _time_sparse(folder: Path, variant: str):
    from st_runtime import SparseEncoder

    enc, texts = SparseEncoder(folder, providers="cpu", variant=variant), _texts()
    return len(texts), lambda: enc.encode(texts)


def _reference(name: str):
    def ref(model, inputs):
        from . import validate

        return getattr(validate, name)(model, inputs)

    return ref


TASKS = {
    t.name: t
    for t in (
        Task("embedding", "sentence_embedding", _reference("reference_outputs"), _check_embedding, _time_embedding),
        Task("cross-encoder", "scores", _reference("reference_scores"), _check_cross_encoder, _time_cross_encoder),
        Task("sparse-embedding", "sentence_embedding", _reference("reference_sparse"), _check_sparse, _time_sparse),
    )
}
