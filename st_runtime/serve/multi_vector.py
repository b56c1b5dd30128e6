"""The routes of multi-vector (late-interaction, ColBERT) models, declared by their kind
(st_runtime.kinds.multi_vector): each input gets a list of vectors, one per token that counts.

- ``/v1/embeddings``, ``/embeddings``: OpenAI's body and response (infinity's shape for ColBERT models): each item's
  ``embedding`` is a list of token vectors ([tokens][dim]; with ``encoding_format: "base64"`` the little-endian
  float32 bytes of the [tokens, dim] array, its rows in order).
- ``/embed``, ``/embed_all``: text-embeddings-inference's bodies; per input a list of token vectors (TEI's
  ``/embed_all`` shape).
- ``/rerank``: TEI's body; each text scored by MaxSim against the query (the model's similarity), by decreasing
  score.

Every embedding route takes ``task``: "document" (the default: the document prompt, length and skiplist) or
"query" (the query prompt, length and [MASK] expansion); ``dimensions`` cuts each token vector (then normalized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .context import Call
from .errors import RequestError
from .handlers import openai_list
from .requests import Body, RerankRequest, TextOptions

TASKS = ("document", "query")


def _dimensions(body: Body, call_dim: int) -> int | None:
    dims = body.get("dimensions", int)
    if dims is not None and not 0 < dims <= call_dim:
        raise RequestError(
            422,
            f"'dimensions' must be between 1 and {call_dim} (the model's dimension), got {dims}",
            param="dimensions",
        )
    return dims


@dataclass(frozen=True)
class MultiVectorRequest:
    """The embedding routes' body: the inputs (``input`` for OpenAI's routes, ``inputs`` for TEI's), ``task``,
    ``dimensions``, ``encoding_format`` (OpenAI's routes), ``normalize`` (TEI's), and the text options."""

    inputs: list[str]
    task: str
    dimensions: int | None
    encoding_format: str
    normalize: bool
    text: TextOptions

    @classmethod
    def parse_with(cls, body: Body, model, key: str) -> MultiVectorRequest:
        items, _ = body.inputs(key)
        task = body.choice("task", TASKS, "document") or "document"
        dims = _dimensions(body, model.model.get_embedding_dimension())
        fmt = body.choice("encoding_format", ("float", "base64"), "float") or "float"
        normalize = body.get("normalize", bool, True)
        return cls(items, task, dims, fmt, normalize, TextOptions.parse(body, model))


class OpenAIBody(MultiVectorRequest):
    @classmethod
    def parse(cls, body: Body, model) -> MultiVectorRequest:
        return cls.parse_with(body, model, "input")


class TEIBody(MultiVectorRequest):
    @classmethod
    def parse(cls, body: Body, model) -> MultiVectorRequest:
        return cls.parse_with(body, model, "inputs")


async def _vectors(call: Call, req: MultiVectorRequest) -> tuple[list[np.ndarray], np.ndarray]:
    prepared = await call.prepare(req.inputs, task=req.task, prompt=req.text.prompt, **req.text.prepare_args())
    rows, tokens = await call.run(prepared)
    normalize = req.normalize and not call.model.model.spec.output.get("normalized")
    return call.finish(rows, task=req.task, truncate_dim=req.dimensions, normalize=normalize), tokens


async def openai_embeddings(call: Call) -> Any:
    """Per input, its token vectors (infinity's ColBERT shape: ``embedding`` is [tokens][dim])."""
    req = call.parse(OpenAIBody)
    emb, tokens = await _vectors(call, req)
    return openai_list(call, emb, tokens, req.encoding_format)


async def tei_embed(call: Call) -> Any:
    """TEI's /embed body; per input its token vectors ([inputs][tokens][dim])."""
    emb, _tokens = await _vectors(call, call.parse(TEIBody))
    return [v.tolist() for v in emb]


tei_embed_all = tei_embed  # TEI's /embed_all: the same per-token vectors


async def tei_rerank(call: Call) -> Any:
    """TEI's /rerank: [{"index", "score"(, "text")}] by decreasing MaxSim score."""
    from ..cross_encoder import ranking

    req = call.parse(RerankRequest)
    model = call.model.model
    args = req.text.prepare_args()
    query_rows, _ = await call.run(await call.prepare([req.query], task="query", **args))
    doc_rows, _ = await call.run(await call.prepare(req.texts, task="document", **args))
    queries = call.finish(query_rows, task="query")
    documents = call.finish(doc_rows, task="document")
    scores = model.similarity(queries, documents)[0]
    return ranking(scores, req.texts if req.return_text else None, None, "index", "score")
