"""Per-architecture export knowledge, in one place.

Each supported Hugging Face ``config.model_type`` has one small declarative spec,
registered with :func:`register`. Generic export code reads these specs and never
branches on architecture names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class TowerSpec:
    """One exported graph: the sentence-transformers pipeline run on one modality.

    ``features`` are constant entries added to the pipeline's feature dict while tracing (for example
    ``("modality", "image")``, which makes sentence-transformers' Transformer module call
    ``get_image_features``).
    """

    name: str  # key in manifest["towers"]
    modality: str  # "text" or "image"
    inputs: tuple[str, ...]  # graph inputs the tower can take, in graph order
    graph_file: str
    features: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TextEncoderSpec:
    """How to export one model family (historical name: it also covers image towers and word embeddings)."""

    family: str
    model_types: tuple[str, ...]
    # Graph inputs this architecture can consume, in graph order. token_type_ids is kept only
    # when the model's tokenizer also produces it (as sentence-transformers then passes it).
    inputs: tuple[str, ...]
    # Attention implementation used for tracing. "eager" traces to plain MatMul/Softmax, which
    # onnxruntime's optimizer recognises; it is numerically equivalent to SDPA.
    attn_implementation: str | None = "eager"
    # model_type for onnxruntime.transformers.optimizer, None if it has no fusion for it.
    ort_optimizer_type: str | None = None
    examples: tuple[str, ...] = ()
    # sentence-transformers input module (class name) this family is read through. "Transformer" covers
    # every Hugging Face model (including the legacy CLIPModel module, a Transformer subclass); other input
    # modules (WordEmbeddings) have no config.json and are registered by module name instead of model_type.
    input_module: str = "Transformer"
    # The graphs to export. Empty: one text tower "text" -> model.onnx taking ``inputs``.
    towers: tuple[TowerSpec, ...] = ()
    # False when the input module itself yields sentence_embedding (CLIP's projection heads).
    needs_pooling: bool = True
    # "hf": Hugging Face fast tokenizer (tokenizer.json); "whitespace": sentence-transformers' WhitespaceTokenizer.
    tokenizer_kind: str = "hf"
    # Whether sentence-transformers accepts [text, text_pair] inputs for this family (validated at export).
    text_pairs: bool = True
    # Our own fusion pass (exporters.fusions) run before onnxruntime's optimizer, for attention blocks it
    # does not recognise: "relative_bias" (MPNet's position bias added to the attention scores).
    attention_fusion: str | None = None
    # Graph variants besides fp32 this family can get (exporters.variants.PLANS); each is still validated.
    variants: tuple[str, ...] = ("opt", "int8", "int8-dynamic", "fp16")
    # Position slots the model reserves before the first token (RoBERTa-style models start at padding_idx + 1):
    # a tokenizer that declares no length limit is capped at max_position_embeddings minus this.
    position_offset: int = 0
    # Which side batches are padded on (decoder models pool their last token and pad on the left); recorded in
    # the manifest for the runtime. None: the side the model's own tokenizer pads on (what sentence-transformers
    # does); a side named here is set on the loaded tokenizer, so the reference pads on it too.
    padding_side: str | None = None
    # (variant, reason) for variants this family is not given, said in the log and the manifest when asked for.
    variants_left_out: tuple[tuple[str, str], ...] = ()
    # Called with the loaded sentence-transformers model before tracing, for families whose modules need
    # adjusting to trace (None: none do yet).
    patcher: Callable[[Any], None] | None = None
    # Where the sentence embedding comes from: "modules" (the model's own Pooling/Dense/Normalize modules,
    # traced into the graph, which is every family so far); decoder families will name a fixed pooling here.
    pooling: str = "modules"

    # Whether the input module's tokenizer adds the special tokens ([CLS] ... [SEP]); StaticEmbedding tokenizes
    # with add_special_tokens=False. Recorded in the manifest when False, and the runtime tokenizes the same way.
    add_special_tokens: bool = True
    # For an input module whose forward takes its input in another form than the graph's padded [batch, sequence]
    # input_ids and attention_mask (StaticEmbedding: flat ids + offsets into an EmbeddingBag): called with the
    # loaded module, returns the torch module traced in its place, which takes the features dict with the padded
    # inputs and adds what the module adds. The trace samples are then built as the runtime builds its batches,
    # and validation runs the real module as the reference, so the replacement is checked against it.
    traced_input_module: Callable[[Any], Any] | None = None

    def position_limit(self, hf_config) -> int | None:
        """The most tokens the model's position table holds (None: no such table, e.g. word embeddings)."""
        for cfg in (hf_config, getattr(hf_config, "text_config", None)):
            n = getattr(cfg, "max_position_embeddings", None)
            if isinstance(n, int) and not isinstance(n, bool):
                return n - self.position_offset
        return None

    def tower_specs(self) -> tuple[TowerSpec, ...]:
        return self.towers or (TowerSpec("text", "text", self.inputs, "model.onnx"),)


_REGISTRY: dict[str, TextEncoderSpec] = {}
_BY_INPUT_MODULE: dict[str, TextEncoderSpec] = {}


def register(spec: TextEncoderSpec) -> TextEncoderSpec:
    if not spec.model_types and spec.input_module == "Transformer":
        raise ValueError(f"spec {spec.family!r} names no model_types; a Transformer family needs at least one")
    if not spec.model_types and spec.input_module in _BY_INPUT_MODULE:
        raise ValueError(
            f"input module {spec.input_module!r} is registered twice "
            f"({_BY_INPUT_MODULE[spec.input_module].family} and {spec.family})"
        )
    for mt in spec.model_types:
        if mt in _REGISTRY:
            raise ValueError(f"model_type {mt!r} is registered twice ({_REGISTRY[mt].family} and {spec.family})")
    for mt in spec.model_types:
        _REGISTRY[mt] = spec
    if not spec.model_types:
        _BY_INPUT_MODULE[spec.input_module] = spec
    return spec


def registry() -> Mapping[str, TextEncoderSpec]:
    """Read-only view of the registered Hugging Face architectures, keyed by model_type."""
    return MappingProxyType(_REGISTRY)


def module_registry() -> Mapping[str, TextEncoderSpec]:
    """Read-only view of the families read through a non-transformer input module, keyed by module name."""
    return MappingProxyType(_BY_INPUT_MODULE)


def all_specs() -> tuple[TextEncoderSpec, ...]:
    """Every registered family once."""
    seen: dict[str, TextEncoderSpec] = {}
    for spec in [*_REGISTRY.values(), *_BY_INPUT_MODULE.values()]:
        seen.setdefault(spec.family, spec)
    return tuple(seen.values())


def supported_summary() -> str:
    return (
        f"Supported model types: {sorted(_REGISTRY)}; supported input modules without a transformer: "
        f"{sorted(_BY_INPUT_MODULE)}"
    )


def spec_for(model_type: str) -> TextEncoderSpec:
    """The spec of a Hugging Face model_type, or of a non-transformer input module name (WordEmbeddings)."""
    try:
        return _REGISTRY[model_type] if model_type in _REGISTRY else _BY_INPUT_MODULE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported by st-export. {supported_summary()}."
        ) from None


def spec_for_input_module(name: str) -> TextEncoderSpec | None:
    """The spec of a non-transformer input module (by class name), or None."""
    return _BY_INPUT_MODULE.get(name)


register(
    TextEncoderSpec(
        family="bert",
        model_types=("bert",),
        inputs=("input_ids", "attention_mask", "token_type_ids"),
        ort_optimizer_type="bert",
        examples=("all-MiniLM-L6-v2", "multi-qa-MiniLM-L6-cos-v1", "LaBSE", "allenai-specter"),
    )
)
register(
    TextEncoderSpec(
        family="mpnet",
        position_offset=2,
        attention_fusion="relative_bias",
        model_types=("mpnet",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=("all-mpnet-base-v2", "multi-qa-mpnet-base-dot-v1"),
    )
)
register(
    TextEncoderSpec(
        family="distilbert",
        model_types=("distilbert",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type="bert",
        examples=("msmarco-distilbert-base-tas-b", "distiluse-base-multilingual-cased-v2"),
    )
)
register(
    TextEncoderSpec(
        family="xlm-roberta",
        position_offset=2,
        model_types=("xlm-roberta",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type="bert",
        examples=("paraphrase-multilingual-mpnet-base-v2",),
    )
)
register(
    TextEncoderSpec(
        family="roberta",
        position_offset=2,
        model_types=("roberta",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type="bert",
        examples=("all-distilroberta-v1",),
    )
)
register(
    TextEncoderSpec(
        family="albert",
        model_types=("albert",),
        inputs=("input_ids", "attention_mask", "token_type_ids"),
        ort_optimizer_type=None,
        examples=("paraphrase-albert-small-v2",),
    )
)
register(
    TextEncoderSpec(
        family="clip",
        variants=(),
        model_types=("clip",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=("clip-ViT-B-32", "clip-ViT-B-16", "clip-ViT-L-14"),
        towers=(
            TowerSpec("text", "text", ("input_ids", "attention_mask"), "text.onnx", (("modality", "text"),)),
            TowerSpec("image", "image", ("pixel_values",), "image.onnx", (("modality", "image"),)),
        ),
        needs_pooling=False,
        text_pairs=False,
    )
)
register(
    TextEncoderSpec(
        family="word-embeddings",
        variants=(),
        model_types=(),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=(
            "average_word_embeddings_glove.6B.300d",
            "average_word_embeddings_komninos",
            "average_word_embeddings_levy_dependency",
            "average_word_embeddings_glove.840B.300d",
        ),
        input_module="WordEmbeddings",
        attn_implementation=None,
        tokenizer_kind="whitespace",
        text_pairs=False,
    )
)
# ModernBERT: rotary positions, no token_type_ids, global attention every few layers and a sliding window
# (local_attention tokens) in the others. Traced with eager attention, transformers builds both masks from the
# sequence length and the attention mask in the graph (Range, |q - k| <= window // 2, And with the padding), so
# no patcher is needed. onnxruntime's optimizer has no ModernBERT type: "opt" (the bert fusions) gets
# SkipLayerNormalization and Gelu but no Attention (the rotary Q/K and the window mask are not its BERT pattern).
register(
    TextEncoderSpec(
        family="modernbert",
        model_types=("modernbert",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=("Alibaba-NLP/gte-modernbert-base", "nomic-ai/modernbert-embed-base"),
    )
)


def _static_embedding_as_padded_mean(module):
    """StaticEmbedding's ``EmbeddingBag(mode="mean")`` over flat ids + offsets, as a mean over the unmasked rows of
    padded ids: the same rows summed (padding adds exact zeros) and divided by the same count, and zeros for an empty
    text (as an empty bag gives). Refuses bag settings that compute something else (max_norm rescales rows,
    padding_idx drops them)."""
    import torch

    bag = getattr(module, "embedding", None)
    if not isinstance(bag, torch.nn.EmbeddingBag):
        raise UnsupportedModelError(
            f"the StaticEmbedding module holds {type(bag).__name__}, not an nn.EmbeddingBag; st-export exports "
            "StaticEmbedding as sentence-transformers builds it."
        )
    settings = {
        "mode": (bag.mode, "mean"),
        "max_norm": (bag.max_norm, None),
        "padding_idx": (bag.padding_idx, None),
        "include_last_offset": (bag.include_last_offset, False),
    }
    odd = {k: have for k, (have, want) in settings.items() if have != want}
    if odd:
        raise UnsupportedModelError(
            f"the StaticEmbedding's EmbeddingBag has {odd}; st-export exports the mean of the token rows (mode "
            "'mean', no max_norm, no padding_idx, as sentence-transformers builds it)."
        )

    class PaddedBagMean(torch.nn.Module):
        # Padded positions look up an all-zero row put first (token id i is row i + 1), so the sum runs over the
        # gathered rows as they are: masking the [batch, sequence, dim] rows with Where is far slower in
        # onnxruntime (docs/speed.md). An id past the table still fails the lookup, as in the EmbeddingBag.
        def __init__(self):
            super().__init__()
            weight = bag.weight.detach().float()
            self.weight = torch.nn.Parameter(torch.cat([weight.new_zeros(1, weight.shape[1]), weight]), False)

        def forward(self, features):
            keep = features["attention_mask"] > 0
            ids = torch.where(keep, features["input_ids"] + 1, torch.zeros((), dtype=torch.long))
            total = torch.nn.functional.embedding(ids, self.weight).sum(1)  # [batch, dim]
            count = keep.sum(1, keepdim=True).clamp(min=1).to(total.dtype)
            return {**features, "sentence_embedding": total / count}

    return PaddedBagMean().eval()


register(
    TextEncoderSpec(
        family="static-embedding",
        # The graph is one Gather and a masked mean (plus any Dense/Normalize): onnxruntime's optimizer has nothing
        # to fuse (opt), and dynamic int8 quantizes MatMuls, of which a lookup has none; fp16 would only halve the
        # table. So the fp32 graph is the only one, as for word embeddings.
        variants=(),
        model_types=(),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=(
            "static-retrieval-mrl-en-v1",
            "static-similarity-mrl-multilingual-v1",
            "minishlab/potion-base-8M",
        ),
        input_module="StaticEmbedding",
        attn_implementation=None,
        needs_pooling=False,  # the module itself gives sentence_embedding
        add_special_tokens=False,
        traced_input_module=_static_embedding_as_padded_mean,
    )
)
register(
    TextEncoderSpec(
        family="qwen3",
        model_types=("qwen3",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=("Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-8B"),
        # pooling (lasttoken) and Normalize are the model's own modules; its tokenizer pads on the left and
        # appends <|endoftext|>, both recorded in the manifest and tokenizer.json
        padding_side="left",
        variants=("int8", "int8-dynamic", "fp16"),
        variants_left_out=(
            (
                "opt",
                "onnxruntime's transformer optimizer has no Qwen3 fusion (onnxruntime issue 25083): it fuses none of "
                "its attention (grouped-query heads, q/k RMSNorm, rotary positions), so an opt graph would be the "
                "fp32 graph again",
            ),
        ),
    )
)


def _gemma3_masks_for_tracing(st_model) -> None:
    """Gemma 3 with bidirectional attention (EmbeddingGemma) builds its attention masks with torch.vmap over
    custom mask functions, which the TorchScript tracer cannot follow. While tracing (only then), the masks are
    built here from the 2-D attention mask with plain index arithmetic and handed to the model as the per-layer-type
    dict its forward accepts: full attention sees every real token, sliding attention the real tokens less than
    ``config.sliding_window`` positions away (transformers' bidirectional window, already halved by the config).
    Outside tracing the model runs as loaded, so validation compares the traced masks with transformers' own."""
    import torch

    auto = st_model[0].auto_model
    config = auto.config
    if not getattr(config, "use_bidirectional_attention", False):
        return  # causal Gemma 3 masks trace as they are
    original = auto.forward

    def forward(*args, attention_mask=None, **kwargs):
        if torch.jit.is_tracing() and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            keep = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, kv]
            pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
            near = ((pos[:, None] - pos[None, :]).abs() < config.sliding_window)[None, None]  # [1, 1, q, kv]
            lowest = torch.finfo(auto.dtype).min
            zero = torch.zeros((), dtype=auto.dtype)
            everywhere = keep & torch.ones_like(near)
            attention_mask = {
                "full_attention": torch.where(everywhere, zero, lowest),
                "sliding_attention": torch.where(keep & near, zero, lowest),
            }
        return original(*args, attention_mask=attention_mask, **kwargs)

    auto.forward = forward


register(
    TextEncoderSpec(
        family="gemma3",
        patcher=_gemma3_masks_for_tracing,
        model_types=("gemma3_text",),
        inputs=("input_ids", "attention_mask"),
        ort_optimizer_type=None,
        examples=("google/embeddinggemma-300m",),
        variants=("int8", "int8-dynamic"),
        variants_left_out=(
            (
                "opt",
                "onnxruntime's transformer optimizer has no Gemma 3 fusion (it fuses none of its attention: "
                "grouped-query heads, q/k RMSNorm, rotary positions, sliding windows)",
            ),
            (
                "fp16",
                "Gemma 3's activations overflow float16 (its model card: EmbeddingGemma does not support float16, "
                "use float32 or bfloat16; other runtimes report NaN); an overflow depends on the text, so passing the "
                "battery would not show that a graph is safe",
            ),
        ),
    )
)
