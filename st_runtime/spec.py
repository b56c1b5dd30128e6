"""The typed view of a manifest: frozen dataclasses built once by the loader, after the schema check.

Every default a reader needs is declared here, next to the field it belongs to; code that runs a model reads
these objects, never ``manifest.get(...)`` with a default of its own. The raw dictionary stays available as
``raw`` for the parts that are records for people (validation summaries, build notes) or are read by one
specialised module (the whitespace tokenizer's vocabulary, the image preprocessor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .schema import DEFAULT_TASK


def _frozen(d: Mapping | None) -> Mapping:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class TokenizerSpec:
    """How a text tower tokenizes (``towers.<name>.tokenizer``)."""

    file: str
    kind: str = "hf"  # "hf" (tokenizer.json) or "whitespace" (word-embedding models)
    max_seq_length: int | None = None
    truncation_side: str = "right"
    # the side sentence-transformers pads the model's batches on (Qwen3-Embedding: left, for its last token)
    padding_side: str = "right"
    # False for models whose input module tokenizes without special tokens (StaticEmbedding)
    add_special_tokens: bool = True
    pad_token_id: int = 0
    pairs: bool = True  # whether sentence-transformers accepts [text, text_pair] inputs for the model
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TokenizerSpec:
        return cls(
            file=d["file"],
            kind=d.get("kind", "hf"),
            max_seq_length=d.get("max_seq_length"),
            truncation_side=d.get("truncation_side", "right"),
            padding_side=d.get("padding_side", "right"),
            add_special_tokens=d.get("add_special_tokens", True),
            pad_token_id=int(d.get("pad_token_id") or 0),
            pairs=d.get("pairs", True),
            raw=_frozen(d),
        )


@dataclass(frozen=True)
class TowerSpec:
    """One graph tower (``towers.<name>``): its modality, graph inputs and outputs, variants."""

    name: str
    modality: str
    inputs: tuple[str, ...]
    output: str
    variants: Mapping[str, Mapping[str, Any]]
    tokenizer: TokenizerSpec | None = None
    token_output: str | None = None  # the per-token output (token_embeddings), where the graph has one
    unnormalized_output: str | None = None  # the output before the model's final Normalize, where it has one
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> TowerSpec:
        return cls(
            name=name,
            modality=d["modality"],
            inputs=tuple(d["inputs"]),
            output=d["output"],
            variants=_frozen(d["variants"]),
            tokenizer=TokenizerSpec.from_dict(d["tokenizer"]) if "tokenizer" in d else None,
            token_output=d.get("token_output"),
            unnormalized_output=d.get("unnormalized_output"),
            raw=d,
        )


@dataclass(frozen=True)
class ModelSpec:
    """The whole manifest, typed: what the runtime reads of it."""

    name: str
    task: str
    format_version: int
    towers: Mapping[str, TowerSpec]
    output: Mapping[str, Any]  # the task's output block ("embedding", "scores", "sparse", ...)
    prompts: Mapping[str, str]
    default_prompt_name: str | None
    family: str
    revision: str | None
    rejected_variants: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, manifest: Mapping[str, Any], output_key: str) -> ModelSpec:
        export = manifest.get("export") or {}
        return cls(
            name=manifest["name"],
            task=manifest.get("task", DEFAULT_TASK),
            format_version=int(manifest["format_version"]),
            towers=_frozen({n: TowerSpec.from_dict(n, t) for n, t in manifest["towers"].items()}),
            output=_frozen(manifest.get(output_key)),
            prompts=_frozen(manifest.get("prompts")),
            default_prompt_name=manifest.get("default_prompt_name"),
            family=(manifest.get("architecture") or {}).get("family", "?"),
            revision=(manifest.get("source") or {}).get("revision"),
            rejected_variants=_frozen(export.get("rejected_variants")),
            raw=manifest,
        )

    @property
    def dimension(self) -> int:
        """Columns of the task's output row (embedding or vocabulary dimension, or a classifier's labels)."""
        return int(self.output.get("dimension") or self.output.get("num_labels") or 0)
