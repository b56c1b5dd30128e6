"""What differs between the kinds of model st-export exports, keyed by the manifest's ``task`` (which is also
``st-export --kind``): the sentence-transformers class a model is loaded, traced and validated as, how a plain
Hugging Face folder is recognised as that kind, the manifest block that describes the output, how
sentence-transformers' reference outputs are computed, which st_runtime class checks the graph against them and
with which gate, what int8 is calibrated on and scored by, and the workload the variants are timed on. Export steps
look the task up here instead of branching on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .int8.build import Agreement


@dataclass(frozen=True)
class Task:
    name: str  # the manifest's task, and st-export --kind
    st_class: str  # the sentence-transformers class the model is loaded, traced and validated as
    output: str  # the graph's output name
    block: str  # the manifest entry describing the output, filled by ``describe`` (the same name on the description)
    describe: Callable[[Any, Any], Any]  # (sentence-transformers model, ModelDescription) -> ModelDescription
    reference: Callable[[Any, list[Any]], np.ndarray]  # (sentence-transformers model, battery inputs) -> outputs
    # (reference, folder, providers, variant, plan, items, manifest, unnormalized reference or None) -> report
    check: Callable[..., dict[str, Any]]
    timing: Callable[[Path, str], tuple[Any, Callable[[], Any]]]  # (folder, variant) -> (items, run once)
    calibration: Callable[[], list[Any]]  # int8's calibration inputs
    int8_gate: Callable[[Any, dict[str, Any]], tuple[Agreement | None, float, float]]  # (plan, manifest) ->
    # (agreement, default: cosine; target of its minimum; target of its mean)
    loads_as: str  # how sentence-transformers loads a plain Hugging Face folder as st_class (for messages)
    # The head a plain Hugging Face folder's architectures (config.json) name when its trained weights are this
    # kind's: st_class put on any other folder starts from a randomly initialised head. None: any transformer.
    head: str | None = None
    # a plain folder with that head is exported as this kind unasked; otherwise --kind must say (the folder could
    # also be a base model that SentenceTransformer mean-pools)
    plain_default: bool = False
    pairs: bool = False  # takes (query, document) pairs: traced, validated, calibrated and timed on them
    text_pairs: bool = True  # the tokenizer is recorded as taking text pairs where the family does
    # (folder, variant) -> the st_runtime model whose CPU batch-token budgets the export measures (batch_policy:
    # its encode() and text_tower's policy); None: the runtime's default budget stays
    batch_grid: Callable[[Path, str], Any] | None = None
    variants_left_out: dict[str, str] = field(default_factory=dict)  # variant -> why it is not built
    # (sentence-transformers model, battery inputs) -> the outputs before the model's final Normalize, for a tower
    # whose graph also returns them (manifest: unnormalized_output); None: the task's graphs never do
    unnormalized_reference: Callable[[Any, list[Any]], np.ndarray] | None = None
    # (sentence-transformers model, description, graph input names, constant features) -> the torch module traced
    # for the text tower; None: every module of the model in order, returning ``output`` (towers._graph_module)
    graph: Callable[[Any, Any, list[str], dict[str, Any]], Any] | None = None
    per_token: bool = False  # the output is [batch, tokens, ...] (its token axis is dynamic too)
    saved_as: tuple[str, ...] = ()  # other "model_type"s of config_sentence_transformers.json saved as st_class
    # module types outside sentence_transformers.* that sentence-transformers maps onto its own when it loads st_class
    module_aliases: tuple[str, ...] = ()


def _check_embedding(ref, folder, providers, variant, plan, items, manifest, unnormalized=None):
    from st_runtime import SentenceEncoder

    from .validate import validate, validate_unnormalized

    encoder = SentenceEncoder(folder, providers=providers, variant=variant)
    report = validate(ref, encoder, plan.min_cosine, items, plan.mean_cosine, plan.company_max_abs)
    if unnormalized is not None:
        validate_unnormalized(report, unnormalized, encoder, plan.min_cosine, items, plan.mean_cosine)
    return report


def _check_cross_encoder(ref, folder, providers, variant, plan, items, manifest, unnormalized=None):
    from st_runtime import CrossEncoder
    from st_runtime.cross_encoder import ACTIVATIONS

    from .validate import validate_scores

    runtime = CrossEncoder(folder, providers=providers, variant=variant)
    activation = ACTIVATIONS[manifest["scores"]["activation"]]
    return validate_scores(
        ref, runtime, plan.max_score_diff, items, activation, plan.top_k_identical, company_gate=plan.company_max_abs
    )


def _check_sparse(ref, folder, providers, variant, plan, items, manifest, unnormalized=None):
    from st_runtime import SparseEncoder

    from .validate import validate_sparse

    return validate_sparse(ref, SparseEncoder(folder, providers=providers, variant=variant), plan.max_score_diff, items)


def _texts():
    from .battery import PASSAGES, SHORT_QUERIES

    return SHORT_QUERIES * 16 + PASSAGES * 4


def _time_embedding(folder: Path, variant: str):
    enc, texts = _embedding_on_cpu(folder, variant), _texts()
    return len(texts), lambda: enc.encode(texts)


def _embedding_on_cpu(folder: Path, variant: str):
    from st_runtime import SentenceEncoder

    return SentenceEncoder(folder, providers="cpu", variant=variant)


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


def _calibration_texts() -> list[Any]:
    from .battery import CALIBRATION

    return list(CALIBRATION)


def _calibration_pairs() -> list[Any]:
    """Short calibration texts as queries, each with an eighth of the calibration texts as documents."""
    from .battery import CALIBRATION

    queries = [t for t in CALIBRATION if len(t) < 60][:6]
    return [(q, d) for q in queries for d in CALIBRATION[:: max(1, len(CALIBRATION) // 8)]]


def _cosine_gate(plan, manifest):
    """Cosine similarity to fp32, a little above the variant's own gate, and the mean at least the plan's
    calibration_mean_cosine (what real text's worst needs)."""
    return None, plan.min_cosine + 0.003, max(plan.mean_cosine + 0.002, plan.calibration_mean_cosine or 0.0)


def score_agreement(activation_name: str) -> Agreement:
    """1 - |score difference| after the model's activation, per row (the cross-encoder int8 gate's measure)."""
    from st_runtime.cross_encoder import ACTIVATIONS

    activation = ACTIVATIONS[activation_name]

    def agreement(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
        diff = np.abs(activation(ref).astype(np.float64) - activation(got)).max(axis=1)
        return 1.0 - diff

    agreement.__doc__ = f"1 - |score difference| after {activation_name}"
    return agreement


def _score_gate(plan, manifest):
    """Scores within the variant's max_score_diff, with the same margins as the cosine targets."""
    return (
        score_agreement(manifest["scores"]["activation"]),
        1 - 0.7 * plan.max_score_diff,
        1 - 0.2 * plan.max_score_diff,
    )


def _by_name(module: str, name: str):
    """A function of ``module`` looked up when called (the modules import this one)."""

    def call(*args):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), name)(*args)

    return call


TASKS = {
    t.name: t
    for t in (
        Task(
            name="embedding",
            st_class="SentenceTransformer",
            output="sentence_embedding",
            block="embedding",
            describe=_by_name("st_model", "describe_embedding"),
            reference=_by_name("validate", "reference_outputs"),
            check=_check_embedding,
            timing=_time_embedding,
            calibration=_calibration_texts,
            int8_gate=_cosine_gate,
            loads_as="mean pooling, as sentence_transformers.SentenceTransformer loads it",
            batch_grid=_embedding_on_cpu,
            unnormalized_reference=_by_name("validate", "reference_unnormalized"),
        ),
        Task(
            name="cross-encoder",
            st_class="CrossEncoder",
            output="scores",
            block="scores",
            describe=_by_name("st_model", "describe_cross_encoder"),
            reference=_by_name("validate", "reference_scores"),
            check=_check_cross_encoder,
            timing=_time_cross_encoder,
            calibration=_calibration_pairs,
            int8_gate=_score_gate,
            loads_as="the classifier's scores, as sentence_transformers.CrossEncoder loads it",
            head="ForSequenceClassification",
            plain_default=True,  # cross-encoder/ms-marco-* are saved so
            pairs=True,
        ),
        Task(
            name="sparse-embedding",
            st_class="SparseEncoder",
            output="sentence_embedding",
            block="sparse",
            describe=_by_name("st_model", "describe_sparse"),
            reference=_by_name("validate", "reference_sparse"),
            check=_check_sparse,
            timing=_time_sparse,
            calibration=_calibration_texts,
            int8_gate=_cosine_gate,
            loads_as="SPLADE, as sentence_transformers.SparseEncoder loads it: MLMTransformer + SpladePooling",
            head="ForMaskedLM",
            text_pairs=False,  # sentence-transformers' SparseEncoder is validated on single texts only
            variants_left_out={
                v: "quantization noise moves weights across zero, so the active set changes"
                for v in ("int8", "int8-dynamic")
            },
        ),
        Task(
            name="multi-vector",
            st_class="MultiVectorEncoder",
            output="token_vectors",  # exporters.multi_vector.OUTPUT
            block="multi_vector",
            describe=_by_name("multi_vector", "describe_multi_vector"),
            reference=_by_name("multi_vector", "reference_multi_vector"),
            check=_by_name("multi_vector", "check_multi_vector"),
            timing=_by_name("multi_vector", "time_multi_vector"),
            calibration=_calibration_texts,
            int8_gate=_by_name("multi_vector", "int8_gate"),
            loads_as="late interaction (ColBERT), as sentence_transformers.MultiVectorEncoder loads it",
            head="HF_ColBERT",  # Stanford-NLP ColBERT checkpoints (colbert-ir/colbertv2.0) are plain folders so
            plain_default=True,
            text_pairs=False,
            graph=_by_name("multi_vector", "multi_vector_graph"),
            per_token=True,
            saved_as=("ColBERT",),  # PyLate <= 3
            module_aliases=("pylate.models.Dense.Dense",),
        ),
    )
}

# What a plain Hugging Face folder whose architectures name no other task's head is exported as: SentenceTransformer
# loads any transformer and mean-pools its tokens.
BASE_MODEL_TASK = "embedding"

# The sentence-transformers class a folder may declare it was saved as, and the task each is exported as.
EXPORTABLE_KINDS = {name: t.name for t in TASKS.values() for name in (t.st_class, *t.saved_as)}
# module types outside sentence_transformers.* that the classes above load as their own modules (no remote code)
MODULE_ALIASES = frozenset(a for t in TASKS.values() for a in t.module_aliases)
