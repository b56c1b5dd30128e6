"""The manifest's schema: every key st-export writes and st_runtime reads, at every depth, with its type.

One schema serves both sides: ``dump_manifest`` checks a manifest against it before writing, and
``load_manifest`` before the runtime reads a key, so a misspelt, missing or mistyped key is an error naming
its path (``towers.text.tokenizer.max_seq_lenght: unknown key``), never a silent default. Parts that are
records for people (a variant's build details, the model's modules.json) are free-form JSON.

Format 1 (one Hugging Face text tower) and format 2 (image towers, tokenizer "kind" and "pairs") share this
schema: what format 2 added is optional. A model ``task`` (embedding, cross-encoder, sparse-embedding) names
the key that describes its output; a runtime that predates a task refuses it by this schema. A tokenizer
``padding_side`` says where batches are padded (decoder models such as Qwen3-Embedding pad on the left).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NUMBER = (int, float)


class SchemaError(ValueError):
    """A manifest that does not fit the schema: ``path`` names the key, the message what was expected."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path or 'the manifest'}: {message}")
        self.path = path


@dataclass(frozen=True)
class Obj:
    """A JSON object with these keys (every other key is refused)."""

    required: dict[str, Any] = field(default_factory=dict)
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Map:
    """A JSON object with any keys, each value of one spec."""

    value: Any
    nonempty: bool = False


@dataclass(frozen=True)
class List:
    item: Any


@dataclass(frozen=True)
class OneOf:
    """One of these JSON values."""

    values: tuple


@dataclass(frozen=True)
class Nullable:
    spec: Any


class FreeForm:
    """Any JSON value: a record for people, which no code reads."""


FREE = FreeForm()

FILE = Obj(required={"size": int, "sha256": str})

TOKENIZER = Obj(
    required={"file": str},
    optional={
        "kind": OneOf(("hf", "whitespace")),
        "max_seq_length": Nullable(int),
        "do_lower_case": bool,
        "truncation_side": OneOf(("left", "right")),
        "padding_side": OneOf(("left", "right")),
        "capped_at_positions": int,  # the tokenizer declared no limit: max_seq_length is the position table's
        "pad_token_id": Nullable(int),
        "model_input_names": List(str),
        "pairs": bool,
        "add_special_tokens": bool,  # absent: true; StaticEmbedding models tokenize without [CLS]/[SEP]
        "vocab_size": int,  # whitespace
        "stop_words": List(str),  # whitespace
    },
)

PREPROCESSOR = Obj(
    required={"kind": str, "image_size": List(int)},
    optional={
        "processor_class": str,
        "do_convert_rgb": Nullable(bool),
        "do_resize": Nullable(bool),
        "size": Nullable(Map(int)),
        "resample": Nullable(int),
        "do_center_crop": Nullable(bool),
        "crop_size": Nullable(Map(int)),
        "do_rescale": Nullable(bool),
        "rescale_factor": Nullable(NUMBER),
        "do_normalize": Nullable(bool),
        "image_mean": Nullable(List(NUMBER)),
        "image_std": Nullable(List(NUMBER)),
    },
)

VALIDATION = Obj(
    optional={
        "passed": bool,
        "summary": str,
        "provider": str,
        "items": int,
        "runs": List(str),
        "tags": List(str),
        "min_cosine": NUMBER,
        "mean_cosine": NUMBER,
        "max_abs_diff": NUMBER,
        "gate_min_cosine": NUMBER,
        "gate_mean_cosine": Nullable(NUMBER),
        "gate_max_abs_diff": NUMBER,  # cross-encoders: scores after the activation; sparse encoders: weights
        "active_set_mismatches": int,  # sparse encoders: entries active on one side only (all below the gate)
        "mean_active_dims": NUMBER,
        "ranking_identical": bool,
        # how far an item's output moves with the other items of its batch (st-export's batch-company check)
        "batch_company": FREE,
        "failures": List(FREE),
        # the pre-Normalize output (unnormalized_output), checked against sentence-transformers without its Normalize
        "unnormalized": FREE,
    }
)

CPU_TIMING = Obj(
    required={"median_s": NUMBER},
    optional={
        "items": int,
        "threads": int,
        "rounds": int,
        "short_items_per_s": NUMBER,  # short queries, and long passages (st-export's length routing)
        "long_items_per_s": NUMBER,
    },
)

_VARIANT_FIELDS = {
    "precision": OneOf(("fp32", "fp16", "int8")),
    "exact": bool,
    "external_data": bool,
    "external_data_files": List(str),
    "build": FREE,
    "validation": VALIDATION,
    "cpu_timing": CPU_TIMING,
    # the CPU batch budgets st-export measured for this variant (padded tokens per batch, short and long texts)
    "cpu_batching": Obj(
        optional={"short_tokens": int, "long_tokens": int, "long_from": int, "measured_items_per_s": FREE}
    ),
}
VARIANT = Obj(
    required={"file": str, "status": OneOf(("passed", "failed", "pending")), "providers": List(str), "rank": int},
    optional=_VARIANT_FIELDS,
)
# a variant st-export built and left out (its gate failed, or it could not be built)
REJECTED = Obj(
    required={"status": OneOf(("failed",))},
    optional={**_VARIANT_FIELDS, "file": str, "providers": List(str), "rank": int, "error": str},
)

TOWER = Obj(
    required={
        "modality": OneOf(("text", "image")),
        "inputs": List(str),
        "output": str,
        "variants": Map(VARIANT, nonempty=True),
    },
    # token_output: the graph's per-token output (token_embeddings [batch, sequence, hidden]), where it has one
    optional={
        "tokenizer": TOKENIZER,
        "preprocessor": PREPROCESSOR,
        "token_output": str,
        # the sentence embedding before the model's final Normalize ([batch, dim]), where the model ends in one
        "unnormalized_output": str,
        # the CPU default by width: batches narrower than long_from tokens on "short", wider ones on "long"
        "cpu_routing": Obj(required={"short": str, "long": str, "long_from": int}),
    },
)

EMBEDDING = Obj(
    required={"dimension": int},
    optional={
        "pooling": Nullable(Obj(optional={"modes": List(str), "include_prompt": bool})),
        "dense": List(Obj(optional={"in_features": int, "out_features": int, "bias": bool, "activation": str})),
        "normalized": bool,
        "similarity_fn_name": Nullable(str),
    },
)

# the task of a manifest without "task" (formats 1 and 2 held embedding models only)
DEFAULT_TASK = "embedding"

SCORES = Obj(
    required={"num_labels": int, "activation": OneOf(("identity", "sigmoid", "softmax"))},
    optional={"labels": List(str)},
)

# sparse encoders (SPLADE): the vocabulary-sized output and how sentence-transformers pooled it
SPARSE = Obj(
    required={"dimension": int},
    optional={
        "pooling": OneOf(("max", "sum")),
        "activation": OneOf(("relu", "log1p_relu")),
        "max_active_dims": Nullable(int),
        "similarity_fn_name": Nullable(str),
    },
)

MANIFEST = Obj(
    required={
        "format_version": int,
        "name": str,
        "towers": Map(TOWER, nonempty=True),
        "files": Map(FILE),
    },
    optional={
        "task": str,  # one of the registered kinds (st_runtime.kinds); absent: DEFAULT_TASK
        # the output blocks: each kind requires its own (st_runtime.kinds declares which)
        "embedding": EMBEDDING,
        "scores": SCORES,
        "sparse": SPARSE,
        "source": Obj(optional={"model": str, "revision": Nullable(str), "origin": str, "modules": List(FREE)}),
        "architecture": Obj(optional={"model_type": str, "family": str}),
        "prompts": Map(str),
        "default_prompt_name": Nullable(str),
        "export": Obj(
            optional={
                "exporter": str,
                "dynamo": bool,
                "opset": int,
                "attn_implementation": Nullable(str),
                "versions": Map(str),
                "created_utc": str,
                "rejected_variants": Map(REJECTED),
            }
        ),
    },
)


def _type_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_type_name(s) for s in spec)
    if isinstance(spec, type):
        return {
            str: "a string",
            int: "an integer",
            float: "a number",
            bool: "true or false",
            dict: "an object",
            list: "a list",
        }.get(spec, spec.__name__)
    if isinstance(spec, (Obj, Map)):
        return "an object"
    if isinstance(spec, List):
        return "a list"
    if isinstance(spec, OneOf):
        return "one of " + ", ".join(repr(v) for v in spec.values)
    if isinstance(spec, Nullable):
        return _type_name(spec.spec) + " or null"
    return "JSON"


def _found(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{type(value).__name__} {value!r:.40}"


def _is(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):  # JSON true/false is not a number
        return bool in types
    return isinstance(value, types)


def _check_nullable(spec: Nullable, value: Any, path: str) -> None:
    if value is None:
        return
    try:
        check(spec.spec, value, path)
    except SchemaError as exc:
        if exc.path != path:
            raise
        raise SchemaError(path, f"expected {_type_name(spec)}, found {_found(value)}") from None


def _check_one_of(spec: OneOf, value: Any, path: str) -> None:
    if value not in spec.values or isinstance(value, bool) != any(isinstance(v, bool) for v in spec.values):
        raise SchemaError(path, f"expected {_type_name(spec)}, found {_found(value)}")


def _check_type(spec: type | tuple, value: Any, path: str) -> None:
    if not _is(value, spec):
        raise SchemaError(path, f"expected {_type_name(spec)}, found {_found(value)}")


def _check_list(spec: List, value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise SchemaError(path, f"expected a list, found {_found(value)}")
    for i, item in enumerate(value):
        check(spec.item, item, f"{path}[{i}]")


def _check_map(spec: Map, value: dict, path: str) -> None:
    if spec.nonempty and not value:
        raise SchemaError(path, "expected at least one entry, found none")
    prefix = f"{path}." if path else ""
    for key, item in value.items():
        check(spec.value, item, f"{prefix}{key}")


def _check_obj(spec: Obj, value: dict, path: str) -> None:
    prefix = f"{path}." if path else ""
    for key, sub in spec.required.items():
        if key not in value:
            raise SchemaError(f"{prefix}{key}", "missing (a required key)")
        check(sub, value[key], f"{prefix}{key}")
    for key, item in value.items():
        if key in spec.required:
            continue
        if key not in spec.optional:
            known = sorted({*spec.required, *spec.optional})
            raise SchemaError(f"{prefix}{key}", f"unknown key (known here: {', '.join(known)})")
        check(spec.optional[key], item, f"{prefix}{key}")


def check(spec: Any, value: Any, path: str = "") -> None:
    """Raise SchemaError at the first part of ``value`` that does not fit ``spec``."""
    if isinstance(spec, FreeForm):
        return
    if isinstance(spec, Nullable):
        return _check_nullable(spec, value, path)
    if isinstance(spec, OneOf):
        return _check_one_of(spec, value, path)
    if isinstance(spec, (type, tuple)):
        return _check_type(spec, value, path)
    if isinstance(spec, List):
        return _check_list(spec, value, path)
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected an object, found {_found(value)}")
    if isinstance(spec, Map):
        return _check_map(spec, value, path)
    return _check_obj(spec, value, path)


def check_manifest(manifest: Any, kinds: Mapping[str, tuple[str, Any]] | None = None) -> None:
    """The whole manifest against the schema, then what one key's value says about another's. ``kinds``: each
    task's output block key and its schema (default: the kinds registered in :mod:`st_runtime.kinds`)."""
    if kinds is None:
        from .kinds import output_blocks  # the registry imports this module's block schemas

        kinds = output_blocks()
    blocks = {key: spec for key, spec in kinds.values()}
    top = Obj(MANIFEST.required, {**MANIFEST.optional, **blocks})
    check(top, manifest)
    task = manifest.get("task", DEFAULT_TASK)
    if task not in kinds:
        raise SchemaError("task", f"{task!r} is not a model kind this st-runtime knows ({', '.join(sorted(kinds))})")
    needed = kinds[task][0]
    if needed not in manifest:
        raise SchemaError(needed, f"missing (a required key for the {task} task)")
    files = manifest["files"]
    for tname, tower in manifest["towers"].items():
        if tower["modality"] == "text" and "tokenizer" not in tower:
            raise SchemaError(f"towers.{tname}.tokenizer", "missing (a text tower needs its tokenizer)")
        if tower["modality"] == "image" and "preprocessor" not in tower:
            raise SchemaError(f"towers.{tname}.preprocessor", "missing (an image tower needs its preprocessor)")
        for vname, variant in tower["variants"].items():
            if variant["file"] not in files:
                raise SchemaError(
                    f"towers.{tname}.variants.{vname}.file", f"{variant['file']!r} is not listed under 'files'"
                )
