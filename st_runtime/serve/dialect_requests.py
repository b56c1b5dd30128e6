"""Typed request bodies of the routes beyond OpenAI's embeddings and TEI's embed/rerank/embed_sparse/tokenize:
TEI's /predict, /similarity, /embed_all, /decode, /vertex; Cohere's and Jina's /v1/rerank, /v2/rerank and
/v2/embed. Parsed field by field (every 422 made here) and declared for the OpenAPI document (st_runtime.serve.wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import wire
from .errors import RequestError
from .guards import check_sizes
from .requests import Body, SparseRequest, TextOptions, with_images
from .wire import BOOLEAN, POSITIVE, STRING, nested, wired

if TYPE_CHECKING:
    from .registry import ServedModel

_PAIR = {"type": "array", "items": STRING, "minItems": 1, "maxItems": 2}


def _strings(body: Body, key: str, value: Any, allow_objects: bool = False) -> list[str]:
    """A non-empty list of strings (``allow_objects``: or {"text": ...} objects, Cohere's and Jina's documents),
    within --max-client-batch-size and --max-input-chars."""
    if not isinstance(value, list) or not value:
        raise RequestError(422, f"'{key}' must be a non-empty list of strings", param=key)
    if len(value) > body.max_items:
        raise RequestError(
            413, f"'{key}' has {len(value)} items, over --max-client-batch-size {body.max_items}", param=key
        )
    out = []
    for i, item in enumerate(value):
        if allow_objects and isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            what = "a string or an object with a string 'text'" if allow_objects else "a string"
            raise RequestError(422, f"'{key}[{i}]' must be {what}", param=key)
        out.append(item)
    check_sizes(out, body.max_chars, key)
    return out


@dataclass(frozen=True)
class PredictRequest:
    """TEI's ``POST /predict``: a text, a [text, text_pair] pair, or a list of them; each gets every label's
    score (the model's activation, softmax over several labels; ``raw_scores``: the logits)."""

    inputs: list[Any] = wired(
        "inputs",
        {"oneOf": [STRING, _PAIR, wire.array(_PAIR, 1)]},
        "a text, a [text, text_pair] pair, or a list of [text] / [text, text_pair]",
        required=True,
    )
    text: TextOptions = nested()
    singular: bool = False
    raw_scores: bool = wired("raw_scores", BOOLEAN, "the logits, before the activation", default=False)
    UNREAD = ("prompt_name",)

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> PredictRequest:
        value = body.data.get("inputs")
        if isinstance(value, str):
            items: list[Any] = [value]
            singular = True
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value) and len(value) <= 2:
            items, singular = [value[0] if len(value) == 1 else (value[0], value[1])], True
        elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            if len(value) > body.max_items:
                raise RequestError(413, f"'inputs' has {len(value)} items, over --max-client-batch-size", "Validation")
            items, singular = [], False
            for i, v in enumerate(value):
                if not (1 <= len(v) <= 2 and all(isinstance(s, str) for s in v)):
                    raise RequestError(422, f"'inputs[{i}]' must be [text] or [text, text_pair]", param="inputs")
                items.append(v[0] if len(v) == 1 else (v[0], v[1]))
        else:
            raise RequestError(
                422, "'inputs' must be a text, a [text, text_pair] pair, or a list of [text] / [text, text_pair]",
                param="inputs",
            )  # fmt: skip
        check_sizes(items, body.max_chars, "inputs")
        raw = body.get("raw_scores", bool, False)
        return cls(items, TextOptions.parse(body, model, prompts=False), singular, raw)


@dataclass(frozen=True)
class SimilarityRequest:
    """TEI's ``POST /similarity``: the similarity of ``source_sentence`` to each of ``sentences`` (the model's
    similarity function, cosine unless it says otherwise)."""

    sentences: list[str]  # read with source_sentence, from "inputs"
    source: str = wired(
        "inputs",
        wire.obj({"source_sentence": STRING, "sentences": wire.STRINGS}, ("source_sentence", "sentences")),
        "the source sentence and the sentences to compare it with",
        required=True,
    )
    text: TextOptions = nested()

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> SimilarityRequest:
        value = body.data.get("inputs")
        if not isinstance(value, dict) or not isinstance(value.get("source_sentence"), str):
            raise RequestError(
                422, '\'inputs\' must be {"source_sentence": text, "sentences": [texts]}', param="inputs"
            )
        source = value["source_sentence"]
        check_sizes([source], body.max_chars, "inputs.source_sentence")
        sentences = _strings(body, "inputs.sentences", value.get("sentences"))
        params = body.data.get("parameters")
        merged = body.with_data({**body.data, **params}) if isinstance(params, dict) else body
        return cls(sentences, source, TextOptions.parse(merged, model))


@dataclass(frozen=True)
class EmbedAllRequest(SparseRequest):
    """TEI's ``POST /embed_all``: each input's token embeddings [tokens, hidden] (the transformer's output that
    pooling reads): inputs, truncate, truncation_direction, prompt_name."""


@dataclass(frozen=True)
class DecodeRequest:
    """TEI's ``POST /decode``: token ids back to text."""

    ids: list[list[int]] = wired(
        "ids", {"oneOf": [wire.TOKEN_IDS, wire.array(wire.TOKEN_IDS, 1)]}, "one or several lists of ids", required=True
    )
    skip_special_tokens: bool = wired("skip_special_tokens", BOOLEAN, "leave special tokens out", default=True)

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> DecodeRequest:
        value = body.data.get("ids")
        batch = value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
        if len(batch) > body.max_items:
            raise RequestError(413, f"'ids' has {len(batch)} lists, over --max-client-batch-size", param="ids")
        vocab = model.vocab_size
        for i, ids in enumerate(batch):
            if not isinstance(ids, list) or not ids or not all(type(t) is int for t in ids):
                raise RequestError(422, "'ids' must be a list of token ids, or a list of such lists", param="ids")
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise RequestError(
                    422, f"'ids[{i}]' has {bad}, not an id of the model's vocabulary (0..{vocab - 1})", param="ids"
                )
        return cls(list(batch), body.get("skip_special_tokens", bool, True))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- Cohere, Jina
@dataclass(frozen=True)
class CohereRerankRequest:
    """Cohere's and Jina's ``POST /v1/rerank``, ``/v2/rerank``: query, documents (strings or {"text"}), top_n,
    return_documents (default true)."""

    query: str = wired("query", STRING, "the query", required=True)
    documents: list[str] = wired(
        "documents",
        wire.array({"oneOf": [STRING, wire.obj({"text": STRING}, ("text",))]}, 1),
        "the documents to rank: strings, or objects with a 'text'",
        required=True,
    )
    top_n: int | None = wired("top_n", POSITIVE, "return the best N (default: all)")
    return_documents: bool = wired("return_documents", BOOLEAN, "include each document", default=True)

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> CohereRerankRequest:
        query = body.required_text("query")
        documents = _strings(body, "documents", body.data.get("documents"), allow_objects=True)
        top_n = body.get("top_n", int)
        if top_n is not None and top_n < 1:
            raise RequestError(422, f"'top_n' must be at least 1, got {top_n}", param="top_n")
        return cls(query, documents, top_n, body.get("return_documents", bool, True))


INPUT_TYPES = ("search_query", "search_document", "classification", "clustering", "image")
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
# the model's prompt names tried for each input_type, in order (none found: the model's default prompt applies)
PROMPTS_FOR = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage", "corpus"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


@dataclass(frozen=True)
class CohereEmbedRequest:
    """Cohere's ``POST /v2/embed``: texts (or images, data URIs, for a model with an image tower), input_type
    (mapped to the model's prompts), embedding_types (several in one call), truncate (NONE, START, END),
    output_dimension."""

    text: TextOptions  # from truncate (EXTRA_WIRE) and input_type
    inputs: list[Any] = wired("texts", wire.STRINGS, "the texts (or 'images')")
    input_type: str | None = wired("input_type", wire.choice(*INPUT_TYPES), "picks the model's prompt")
    dimensions: int | None = wired("output_dimension", POSITIVE, "keep the first N dimensions (Matryoshka)")
    types: tuple[str, ...] = wired(
        "embedding_types", wire.array(wire.choice(*EMBEDDING_TYPES), 1), "the formats returned", default=("float",)
    )
    EXTRA_WIRE = (
        wire.Wire("truncate", wire.choice("NONE", "START", "END"), "which end an over-long text loses", False, "END"),
        wire.Wire("images", wire.STRINGS, "images as data URIs (a model with an image tower)"),
    )

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> CohereEmbedRequest:
        key = "images" if "images" in body.data and "texts" not in body.data else "texts"
        items = _strings(body, key, body.data.get(key))
        if key == "images":
            if not model.model.takes_images:
                raise RequestError(422, f"model {model.name!r} embeds texts only; send 'texts'", param=key)
            bad = next((i for i, t in enumerate(items) if not t.startswith("data:image/")), None)
            if bad is not None:
                raise RequestError(422, f"'images[{bad}]' must be a data URI (data:image/png;base64,...)", param=key)
        input_type = body.choice("input_type", INPUT_TYPES, None)
        types = body.get("embedding_types", list, ["float"])
        if not types or any(t not in EMBEDDING_TYPES for t in types):
            raise RequestError(
                422, f"'embedding_types' must be a non-empty list of {list(EMBEDDING_TYPES)}", param="embedding_types"
            )
        dims = body.get("output_dimension", int)
        if dims is not None and not 0 < dims <= model.dim:
            raise RequestError(422, f"'output_dimension' must be in 1..{model.dim}", param="output_dimension")
        truncate = body.choice("truncate", ("none", "start", "end"), "end", fold_case=True)
        prompt = None
        for name in PROMPTS_FOR.get(input_type or "", ()):
            if name in model.prompts:
                prompt = model.prompts[name]
                break
        text = TextOptions(truncate == "none", "left" if truncate == "start" else "right", prompt)
        inputs = with_images(items, model, key)
        return cls(text, inputs, input_type, dims, tuple(dict.fromkeys(types)))


@dataclass(frozen=True)
class VertexRequest:
    """Vertex AI's prediction body: ``instances``, each a request body of the model's ``POST /`` route."""

    instances: list[dict[str, Any]] = wired(
        "instances", wire.array({"type": "object"}, 1), "request bodies of POST /", required=True
    )
    MODEL_FIELD = False

    @classmethod
    def parse(cls, body: Body, model: ServedModel | None = None) -> VertexRequest:
        value = body.data.get("instances")
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise RequestError(422, "'instances' must be a non-empty list of request objects", param="instances")
        if len(value) > body.max_items:
            raise RequestError(413, f"'instances' has {len(value)} items, over --max-client-batch-size", "Validation")
        return cls(value)
