"""Read a sentence-transformers model into a description the exporter can act on.

sentence-transformers itself reads the folder (so every legacy form it accepts, such as
``sentence_transformers.models.Pooling`` type paths, ``pooling_mode_*_tokens`` keys or a
``2_Normalize`` entry without a folder, is read exactly as it reads it); this module checks
the loaded pipeline against what st-export can put into a graph and describes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelKindError, RemoteCodeError, UnsupportedModelError
from .specs import TextEncoderSpec, spec_for, spec_for_input_module, supported_summary
from .tasks import BASE_MODEL_TASK, EXPORTABLE_KINDS, MODULE_ALIASES, TASKS

SUPPORTED_MODULES = (
    "Transformer",
    "Pooling",
    "Dense",
    "Normalize",
    "CLIPModel",
    "WordEmbeddings",
    "StaticEmbedding",
)


@dataclass
class ModelDescription:
    model_type: str
    spec: TextEncoderSpec
    modules: list[dict[str, Any]]  # modules.json entries, as written
    task: str = BASE_MODEL_TASK  # the manifest task (exporters.tasks.TASKS)
    pooling: dict[str, Any] | None = None
    dense: list[dict[str, Any]] = field(default_factory=list)
    normalized: bool = False
    # the manifest block of the task (Task.block): one of
    embedding: dict[str, Any] | None = None  # SentenceTransformer: dimension, pooling, dense, normalized, similarity
    scores: dict[str, Any] | None = None  # CrossEncoder: num_labels, labels, activation
    sparse: dict[str, Any] | None = None  # SparseEncoder: dimension, pooling, activation, max_active_dims
    multi_vector: dict[str, Any] | None = None  # MultiVectorEncoder: dimension, lengths, expansion, skiplist


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def saved_class(folder: Path) -> str | None:
    """The sentence-transformers class ``folder`` was saved as: config_sentence_transformers.json's "model_type"
    (written by sentence-transformers 5 and later), SentenceTransformer for an older folder with a modules.json,
    None for a plain Hugging Face folder (no sentence-transformers files)."""
    st_config = folder / "config_sentence_transformers.json"
    kind = _read_json(st_config).get("model_type") if st_config.is_file() else None
    if kind is None and (folder / "modules.json").is_file():
        kind = "SentenceTransformer"
    return kind


def choose_task(folder: Path, requested: str | None = None) -> str:
    """The manifest task ``folder`` is exported as (a key of exporters.tasks.TASKS): the one place the kind of
    model is chosen. ``requested``: st-export --kind.

    A folder saved by sentence-transformers keeps the class it was saved as, and a --kind that contradicts it is
    refused (ModelKindError). sentence-transformers does load such a folder as another class, but by converting
    it into a model that was never trained (a CrossEncoder or SparseEncoder loaded as a SentenceTransformer is
    mean-pooled; a SentenceTransformer loaded as a SparseEncoder gains a randomly initialised SparseAutoEncoder),
    and the export would then "pass" validation against that same converted reference. A plain Hugging Face
    folder is read by its architectures (:func:`_plain_folder_task`)."""
    if requested is not None and requested not in TASKS:
        raise ModelKindError(f"unknown kind {requested!r}; choose from {', '.join(TASKS)}.")
    saved = saved_class(folder)
    if saved is None:
        return _plain_folder_task(folder, requested)
    if saved not in EXPORTABLE_KINDS:
        raise UnsupportedModelError(
            f"{folder} was saved as a sentence-transformers {saved}, which st-export does not export: it exports "
            f"{', '.join(EXPORTABLE_KINDS)} models. Exporting it as one of those would give outputs the model never "
            f"computes. Load it with sentence_transformers.{saved} in the meantime."
        )
    task = EXPORTABLE_KINDS[saved]
    if requested not in (None, task):
        raise ModelKindError(
            f"{folder} was saved by sentence-transformers as a {saved}, which st-export exports as --kind {task}. "
            f"--kind {requested} would load it as a {TASKS[requested].st_class}, which sentence-transformers does "
            f"by converting it into a pipeline the model was not trained as, so the export would compute outputs "
            f"the model never gives. Leave out --kind (or pass --kind {task})."
        )
    return task


def _plain_folder_task(folder: Path, requested: str | None) -> str:
    """A plain Hugging Face folder is exported as sentence-transformers loads it as the class of ``requested``,
    or unasked where its architectures leave no doubt: a task's head (a sequence classifier: cross-encoder), or no
    task's head (a base model: embedding, as SentenceTransformer mean-pools it). A head that a base model also
    carries (ForMaskedLM: a SPLADE model, or a pretrained checkpoint such as bert-base-uncased) is refused
    naming each --kind it could be. A --kind whose class needs a head the folder lacks is refused too: its
    class would start from a randomly initialised head."""
    config = folder / "config.json"
    archs = [str(a) for a in (_read_json(config).get("architectures") or [])] if config.is_file() else []
    heads = [t for t in TASKS.values() if t.head is not None and any(a.endswith(t.head) for a in archs)]
    choices = " or ".join(f"--kind {t.name} ({t.loads_as})" for t in [*heads, TASKS[BASE_MODEL_TASK]])
    if requested is not None:
        task = TASKS[requested]
        if task.head is not None and task not in heads:
            raise ModelKindError(
                f"{folder} is a plain Hugging Face folder whose architectures ({', '.join(archs) or 'none named'}) "
                f"have no {task.head} head, so sentence_transformers.{task.st_class} would put a randomly "
                f"initialised one on it and the export would compute nothing the model learned. Export it with "
                f"{choices}."
            )
        return requested
    if not heads:
        return BASE_MODEL_TASK
    if len(heads) == 1 and heads[0].plain_default:
        return heads[0].name
    raise ModelKindError(
        f"{folder} is a plain Hugging Face {', '.join(archs)} folder without sentence-transformers' files, so it "
        f"does not say which kind of model it is, and the kinds give different outputs. Choose the one it was "
        f"trained as: {choices}."
    )


def inspect_folder(folder: Path, trust_remote_code: bool) -> tuple[str, list[dict[str, Any]]]:
    """model_type of the transformer and the modules.json entries, without loading weights."""
    modules_file = folder / "modules.json"
    modules = (
        _read_json(modules_file)
        if modules_file.is_file()
        else [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    )
    custom = [
        m["type"]
        for m in modules
        if not str(m.get("type", "")).startswith("sentence_transformers.") and m.get("type") not in MODULE_ALIASES
    ]
    if custom and not trust_remote_code:
        raise RemoteCodeError(
            f"{folder} uses custom module code {custom}. Running it executes code from the model repository; "
            "if you trust it, pass --trust-remote-code."
        )
    first = modules[0]
    input_spec = spec_for_input_module(str(first.get("type", "")).rsplit(".", 1)[-1])
    if input_spec is not None:  # a non-transformer input module (WordEmbeddings): no config.json to read
        return input_spec.input_module, modules
    cfg_path = folder / first.get("path", "") / "config.json"
    if not cfg_path.is_file():
        raise UnsupportedModelError(
            f"{folder}: the first module ({first.get('type')}) has no config.json at {cfg_path}, so it is not a "
            f"Hugging Face transformer. st-export supports pipelines of {', '.join(SUPPORTED_MODULES)}. "
            f"{supported_summary()}."
        )
    config = _read_json(cfg_path)
    if config.get("auto_map") and not trust_remote_code:
        raise RemoteCodeError(
            f"{cfg_path} maps to custom model code ({sorted(config['auto_map'])}). Running it executes code from "
            "the model repository; if you trust it, pass --trust-remote-code."
        )
    model_type = config.get("model_type")
    if not model_type:
        raise UnsupportedModelError(
            f"{cfg_path} names no model_type, so the first module ({first.get('type')}) is not a Hugging Face "
            f"transformer. st-export supports pipelines of {', '.join(SUPPORTED_MODULES)}. {supported_summary()}."
        )
    spec_for(model_type)  # raises with the list of supported architectures
    return model_type, modules


def describe_cross_encoder(st_model, desc: ModelDescription) -> ModelDescription:
    """A CrossEncoder: one Transformer module with a sequence-classification head; its scores are the logits."""
    mods = list(st_model)
    if len(mods) != 1 or getattr(mods[0], "transformer_task", None) != "sequence-classification":
        raise UnsupportedModelError(
            f"the CrossEncoder's modules are {[type(m).__name__ for m in mods]}; st-export exports cross-encoders "
            "made of one Transformer with a sequence-classification head."
        )
    act = st_model.activation_fn
    name = type(act).__name__.lower()
    if name not in ("identity", "sigmoid", "softmax"):
        raise UnsupportedModelError(
            f"the CrossEncoder's activation_fn is {type(act).__module__}.{type(act).__name__}; st_runtime applies "
            "Identity, Sigmoid or Softmax."
        )
    config = st_model.config
    labels = [str(config.id2label[i]) for i in range(config.num_labels)] if getattr(config, "id2label", None) else []
    desc.scores = {"num_labels": int(config.num_labels), "labels": labels, "activation": name}
    return desc


SPARSE_MODULES = ("Transformer (fill-mask) or MLMTransformer", "SpladePooling")


def describe_sparse(st_model, desc: ModelDescription) -> ModelDescription:
    """A SPLADE SparseEncoder: a masked-language-model Transformer, then SpladePooling (max or sum; relu or
    log1p_relu). Other sparse modules (SparseStaticEmbedding, SparseAutoEncoder, a Router between query and
    document paths) are refused by name."""
    mods = list(st_model)
    names = [type(m).__name__ for m in mods]
    first, pool = [*mods, None, None][:2]
    if (
        len(mods) != 2
        or getattr(first, "transformer_task", None) != "fill-mask"
        or type(pool).__name__ != "SpladePooling"
    ):
        raise UnsupportedModelError(
            f"the SparseEncoder's modules are {names}; st-export exports SPLADE sparse encoders made of "
            f"{' + '.join(SPARSE_MODULES)}. Load this one with sentence_transformers.SparseEncoder."
        )
    if pool.pooling_strategy not in ("max", "sum") or pool.activation_function not in ("relu", "log1p_relu"):
        raise UnsupportedModelError(
            f"SpladePooling({pool.pooling_strategy!r}, {pool.activation_function!r}) is not supported; st-export "
            "exports max or sum pooling with relu or log1p_relu."
        )
    head = first.auto_model.get_output_embeddings()  # the vocabulary-sized projection the pooling runs over
    desc.sparse = {
        "dimension": int(pool.embedding_dimension or head.out_features),
        "pooling": pool.pooling_strategy,
        "activation": pool.activation_function,
        "max_active_dims": st_model.max_active_dims,
        "similarity_fn_name": st_model.similarity_fn_name or "dot",
    }
    return desc


def prepare_for_tracing(st_model, desc: ModelDescription) -> None:
    """Settings that change how a module computes, not what: SpladePooling's chunk_size loops over the sequence in
    Python, which the tracer would bake into the graph at the traced length; one chunk gives the same result."""
    for mod in st_model:
        if hasattr(mod, "chunk_size") and type(mod).__name__ == "SpladePooling":
            mod.chunk_size = None


def describe(st_model, model_type: str, modules_json: list[dict[str, Any]], task: str = BASE_MODEL_TASK):
    """Check the loaded model's modules against what st-export can put into a graph for ``task``, and describe
    them (the task's manifest block among them)."""
    desc = ModelDescription(model_type=model_type, spec=spec_for(model_type), modules=modules_json, task=task)
    return TASKS[task].describe(st_model, desc)


def describe_embedding(st_model, desc: ModelDescription) -> ModelDescription:
    """A SentenceTransformer: the family's input module, then Pooling (where the input module gives token
    embeddings), Dense and Normalize modules."""
    import sentence_transformers.models as st_models

    spec = desc.spec
    mods = list(st_model)
    input_cls = getattr(st_models, spec.input_module)
    if not mods or not isinstance(mods[0], input_cls):
        raise UnsupportedModelError(
            f"the first module is {type(mods[0]).__name__ if mods else 'missing'}; st-export needs a "
            f"{spec.input_module} first for {spec.family} models. Supported modules: {', '.join(SUPPORTED_MODULES)}."
        )
    from .towers import check_input_module

    check_input_module(mods[0], spec)
    for mod in mods[1:]:
        _read_embedding_module(mod, desc)
    if desc.pooling is None and spec.needs_pooling:
        raise UnsupportedModelError(
            "the model has no Pooling module, so it gives token embeddings, not sentence embeddings; "
            "st-export exports sentence embedding models only."
        )
    desc.embedding = {
        "dimension": int(st_model.get_embedding_dimension()),
        "pooling": desc.pooling,
        "dense": desc.dense,
        "normalized": desc.normalized,
        "similarity_fn_name": st_model.similarity_fn_name or "cosine",
    }
    return desc


def _read_embedding_module(mod, desc: ModelDescription) -> None:
    """One module after the input module of a SentenceTransformer, into ``desc``."""
    from sentence_transformers.models import Dense, Normalize, Pooling

    if isinstance(mod, Pooling):
        desc.pooling = _read_pooling(mod, desc)
    elif isinstance(mod, Dense):
        act = mod.activation_function
        desc.dense.append(
            {
                "in_features": int(mod.linear.in_features),
                "out_features": int(mod.linear.out_features),
                "bias": mod.linear.bias is not None,
                "activation": f"{type(act).__module__}.{type(act).__name__}",
            }
        )
    elif isinstance(mod, Normalize):
        desc.normalized = True
    else:
        raise UnsupportedModelError(
            f"module {type(mod).__module__}.{type(mod).__name__} is not supported by st-export. Supported "
            f"modules: {', '.join(SUPPORTED_MODULES)}."
        )


def _read_pooling(mod, desc: ModelDescription) -> dict[str, Any]:
    if not desc.spec.needs_pooling:
        raise UnsupportedModelError(
            f"the model has a Pooling module after its {desc.spec.input_module}, which gives the sentence "
            "embedding itself (no token embeddings to pool), so sentence-transformers cannot run this "
            "pipeline either. Remove the Pooling module from modules.json."
        )
    if desc.pooling is not None:
        raise UnsupportedModelError("the model has two Pooling modules; st-export supports one.")
    if not mod.include_prompt:
        raise UnsupportedModelError(
            "Pooling with include_prompt=False (prompt tokens excluded from pooling) is not supported by st-export yet."
        )
    modes = (mod.pooling_mode,) if isinstance(mod.pooling_mode, str) else tuple(mod.pooling_mode)
    return {"modes": list(modes), "include_prompt": bool(mod.include_prompt)}
