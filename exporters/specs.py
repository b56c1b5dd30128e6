"""Per-architecture export knowledge, in one place.

Each supported Hugging Face ``config.model_type`` has one small declarative spec,
registered with :func:`register`. Generic export code reads these specs and never
branches on architecture names.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class TextEncoderSpec:
    """How to export a text transformer."""

    family: str
    model_types: tuple[str, ...]
    # Graph inputs this architecture can consume, in graph order. token_type_ids is kept only
    # when the model's tokenizer also produces it (as sentence-transformers then passes it).
    inputs: tuple[str, ...]
    # Attention implementation used for tracing. "eager" traces to plain MatMul/Softmax, which
    # onnxruntime's optimizer recognises; it is numerically equivalent to SDPA.
    attn_implementation: str = "eager"
    # model_type for onnxruntime.transformers.optimizer, None if it has no fusion for it.
    ort_optimizer_type: str | None = None
    examples: tuple[str, ...] = ()


_REGISTRY: dict[str, TextEncoderSpec] = {}


def register(spec: TextEncoderSpec) -> TextEncoderSpec:
    for mt in spec.model_types:
        if mt in _REGISTRY:
            raise ValueError(f"model_type {mt!r} is registered twice ({_REGISTRY[mt].family} and {spec.family})")
        _REGISTRY[mt] = spec
    return spec


def registry() -> Mapping[str, TextEncoderSpec]:
    """Read-only view of the registered specs, keyed by model_type."""
    return MappingProxyType(_REGISTRY)


def spec_for(model_type: str) -> TextEncoderSpec:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported by st-export. Supported model types: "
            f"{sorted(_REGISTRY)}."
        ) from None


register(TextEncoderSpec(
    family="bert",
    model_types=("bert",),
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    ort_optimizer_type="bert",
    examples=("all-MiniLM-L6-v2", "multi-qa-MiniLM-L6-cos-v1", "LaBSE", "allenai-specter"),
))
register(TextEncoderSpec(
    family="mpnet",
    model_types=("mpnet",),
    inputs=("input_ids", "attention_mask"),
    ort_optimizer_type=None,
    examples=("all-mpnet-base-v2", "multi-qa-mpnet-base-dot-v1"),
))
register(TextEncoderSpec(
    family="distilbert",
    model_types=("distilbert",),
    inputs=("input_ids", "attention_mask"),
    ort_optimizer_type="bert",
    examples=("msmarco-distilbert-base-tas-b", "distiluse-base-multilingual-cased-v2"),
))
register(TextEncoderSpec(
    family="xlm-roberta",
    model_types=("xlm-roberta",),
    inputs=("input_ids", "attention_mask"),
    ort_optimizer_type="bert",
    examples=("paraphrase-multilingual-mpnet-base-v2",),
))
