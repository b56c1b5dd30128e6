"""Cohere's and Jina's shapes: ``POST /v1/rerank`` and ``/v2/rerank`` (query, documents, top_n,
return_documents -> results by relevance), ``POST /v2/embed`` (texts, input_type, embedding_types, truncate,
output_dimension). Each a thin call into the model's kind protocol, as the TEI and OpenAI routes are."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from . import wire
from .context import Call
from .dialect_requests import CohereEmbedRequest, CohereRerankRequest
from .errors import RequestError
from .wire import INTEGER, NUMBER, STRING, api

_META = wire.obj(
    {
        "api_version": wire.obj({"version": STRING}),
        "billed_units": wire.obj({"input_tokens": INTEGER, "search_units": INTEGER}),
    }
)
RERANK_RESPONSE = wire.obj(
    {
        "id": STRING,
        "model": STRING,
        "results": wire.array(
            wire.obj(
                {"index": INTEGER, "relevance_score": NUMBER, "document": wire.obj({"text": STRING}, ("text",))},
                ("index", "relevance_score"),
            )
        ),
        "usage": wire.obj({"total_tokens": INTEGER}),
        "meta": _META,
    },
    ("id", "results"),
)
_INT_ROWS = wire.array(wire.array(INTEGER))
EMBED_RESPONSE = wire.obj(
    {
        "id": STRING,
        "response_type": wire.choice("embeddings_by_type"),
        "embeddings": wire.obj(
            {
                "float": wire.array(wire.array(NUMBER)),
                "int8": _INT_ROWS,
                "uint8": _INT_ROWS,
                "binary": _INT_ROWS,
                "ubinary": _INT_ROWS,
                "base64": wire.array(STRING),
            }
        ),
        "texts": wire.array(STRING),
        "meta": _META,
    },
    ("id", "embeddings"),
)


def _meta(tokens: int, search: bool = False) -> dict[str, Any]:
    units = {"search_units": 1} if search else {"input_tokens": tokens}
    return {"api_version": {"version": "2"}, "billed_units": units}


@api(CohereRerankRequest, RERANK_RESPONSE, "rank documents by relevance to a query (Cohere's and Jina's shape)")
async def cohere_rerank(call: Call) -> Any:
    """{"results": [{"index", "relevance_score"(, "document": {"text"})}]} by decreasing score, at most top_n: the
    scores CrossEncoder.rank gives (the model's activation)."""
    from ..cross_encoder import ranking

    req = call.parse(CohereRerankRequest)
    if call.model.dim != 1:
        raise RequestError(422, f"model {call.model.name!r} has {call.model.dim} labels; rerank needs one")
    logits, tokens = await call.run(await call.prepare([(req.query, d) for d in req.documents]))
    scores = call.finish(logits)[:, 0]
    results = ranking(scores, req.documents if req.return_documents else None, req.top_n, "index", "relevance_score")
    for r in results:
        if "text" in r:
            r["document"] = {"text": r.pop("text")}
    n_tokens = int(tokens.sum())
    return {
        "id": str(uuid.uuid4()),
        "model": call.model.name,
        "results": results,
        "usage": {"total_tokens": n_tokens},
        "meta": _meta(n_tokens, search=True),
    }


def _formats(call: Call, req: CohereEmbedRequest, rows: Any) -> dict[str, Any]:
    """Each asked embedding type, as sentence-transformers' quantize_embeddings computes it from this call's rows."""
    normalize = req.dimensions is not None and call.kind.normalized(call.model.model)
    out: dict[str, Any] = {}
    floats = call.finish(rows, truncate_dim=req.dimensions, normalize=normalize)
    for t in req.types:
        if t == "float":
            out[t] = floats
        elif t == "base64":
            out[t] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in floats]
        else:
            out[t] = call.finish(rows, truncate_dim=req.dimensions, normalize=normalize, precision=t)
    return out


@api(CohereEmbedRequest, EMBED_RESPONSE, "embed texts, in several formats at once (Cohere's v2 shape)")
async def cohere_embed(call: Call) -> Any:
    req = call.parse(CohereEmbedRequest)
    rows, tokens = await call.run(await call.prepare(req.inputs, prompt=req.text.prompt, **req.text.prepare_args()))
    return {
        "id": str(uuid.uuid4()),
        "response_type": "embeddings_by_type",
        "embeddings": _formats(call, req, rows),
        "texts": [t for t in req.inputs if isinstance(t, str)],
        "meta": _meta(int(tokens.sum())),
    }
