"""The routes' handlers: each parses its typed request, then calls the model's kind protocol (prepare, run,
finish) and shapes the response as the API it speaks (OpenAI's, text-embeddings-inference's). None of them
knows a kind: a kind lists the routes it answers (st_runtime.kinds)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from .. import __version__
from ..inputs import prepare
from . import wire
from .context import Call
from .errors import RequestError
from .registry import ServedModel, ServerState
from .requests import EmbeddingsRequest, EmbedRequest, RerankRequest, SparseRequest, TokenizeRequest
from .wire import BOOLEAN, INTEGER, NUMBER, STRING, api

OPENAI_OBJECT = "embedding"  # the "object" of each item of OpenAI's embeddings response

# the 200 responses' schemas, for the OpenAPI document (st_runtime.serve.openapi)
VECTORS = wire.array(wire.array(NUMBER))
_VECTOR_KEY = "embedding"  # OpenAI's field of each item's vector
_OPENAI_ITEM = wire.obj(
    {"object": STRING, "index": INTEGER, _VECTOR_KEY: {"oneOf": [wire.array(NUMBER), STRING]}},
    ("object", "index", _VECTOR_KEY),
)
OPENAI_RESPONSE = wire.obj(
    {
        "object": STRING,
        "data": wire.array(_OPENAI_ITEM),
        "model": STRING,
        "usage": wire.obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER}),
    },
    ("object", "data", "model", "usage"),
)
RERANK_RESPONSE = wire.array(wire.obj({"index": INTEGER, "score": NUMBER, "text": STRING}, ("index", "score")))
SPARSE_RESPONSE = wire.array(wire.array(wire.obj({"index": INTEGER, "value": NUMBER}, ("index", "value"))))
_OFFSET = {"type": ["integer", "null"]}
TOKENIZE_RESPONSE = wire.array(
    wire.array(
        wire.obj(
            {"id": INTEGER, "text": STRING, "special": BOOLEAN, "start": _OFFSET, "stop": _OFFSET},
            ("id", "text", "special", "start", "stop"),
        )
    )
)


@api(EmbeddingsRequest, OPENAI_RESPONSE, "embed texts (OpenAI's shape)")
async def openai_embeddings(call: Call) -> Any:
    req = call.parse(EmbeddingsRequest)
    rows, tokens = await call.run(await call.prepare(req.inputs, prompt=req.text.prompt, **req.text.prepare_args()))
    # the model's own output is normalized when the model normalizes; a Matryoshka cut is normalized again then
    normalize = req.dimensions is not None and call.kind.normalized(call.model.model)
    emb = call.finish(rows, truncate_dim=req.dimensions, normalize=normalize)
    return openai_list(call, list(emb), tokens, req.encoding_format)


def openai_list(call: Call, emb: list, tokens, encoding_format: str) -> dict[str, Any]:
    """OpenAI's embeddings response: one entry per input (``emb[i]``: a vector, or a multi-vector model's
    [tokens, dim] array), as float lists or, for ``encoding_format="base64"``, its little-endian float32 bytes."""
    if encoding_format == "base64":
        vectors: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in emb]
    else:
        vectors = [v.tolist() if v.ndim > 1 else v for v in emb]
    n_tokens = int(tokens.sum())
    return {
        "object": "list",
        "data": [dict(object=OPENAI_OBJECT, index=i, embedding=v) for i, v in enumerate(vectors)],
        "model": call.model.name,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


@api(EmbedRequest, VECTORS, "embed texts (TEI's shape)")
async def tei_embed(call: Call) -> Any:
    """``normalize: false``: the embedding before the model's Normalize (the graph's second output), as TEI
    gives it; true: unit vectors (the model's own, or normalized here for a model without Normalize)."""
    req = call.parse(EmbedRequest)
    prepared = await call.prepare(
        req.inputs, prompt=req.text.prompt, unnormalized=not req.normalize, **req.text.prepare_args()
    )
    rows, _tokens = await call.run(prepared)
    normalized = call.kind.normalized(call.model.model)
    emb = call.finish(
        rows, truncate_dim=req.dimensions, normalize=req.normalize and (req.dimensions is not None or not normalized)
    )
    return list(emb)


@api(RerankRequest, RERANK_RESPONSE, "rank texts by relevance to a query (TEI's shape)")
async def tei_rerank(call: Call) -> Any:
    """TEI's /rerank: [{"index", "score"(, "text")}] by decreasing score."""
    from ..cross_encoder import ranking

    req = call.parse(RerankRequest)
    model = call.model
    if model.dim != 1:
        raise RequestError(422, f"model {model.name!r} has {model.dim} labels; /rerank needs one")
    logits, _tokens = await call.run(await call.prepare([(req.query, t) for t in req.texts], **req.text.prepare_args()))
    scores = logits[:, 0] if req.raw_scores else call.finish(logits)[:, 0]
    return ranking(scores, req.texts if req.return_text else None, None, "index", "score")


@api(SparseRequest, SPARSE_RESPONSE, "sparse embeddings: each text's active vocabulary entries")
async def tei_embed_sparse(call: Call) -> Any:
    """TEI's /embed_sparse: per input, its active entries [{"index", "value"}] in increasing index order (the
    model's own max_active_dims applies)."""
    req = call.parse(SparseRequest)
    rows, _tokens = await call.run(await call.prepare(req.inputs, prompt=req.text.prompt, **req.text.prepare_args()))
    return [[{"index": int(i), "value": float(v)} for i, v in zip(e.indices, e.values)] for e in call.finish(rows)]


# ---------------------------------------------------------------------------------------------------- any kind
@api(TokenizeRequest, TOKENIZE_RESPONSE, "the tokens of each text")
async def tokenize(call: Call) -> Any:
    req = call.parse(TokenizeRequest)
    model = call.model
    texts = prepare([req.prompt + t for t in req.inputs] if req.prompt else req.inputs, None)
    tokenizer = model.model.text_tower.tokenizer_for(None)
    if not hasattr(tokenizer, "get_vocab_size"):
        raise RequestError(422, f"model {model.name!r} has a word tokenizer without token offsets", "Tokenizer")
    encodings = await asyncio.get_running_loop().run_in_executor(
        None, lambda: tokenizer.encode_batch(texts, add_special_tokens=req.add_special_tokens)
    )
    return [
        [
            {
                "id": int(tid),
                "text": text[a:b] if b > a else tok,
                "special": bool(sp),
                "start": None if sp else int(a),
                "stop": None if sp else int(b),
            }
            for tid, tok, sp, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)
        ]
        for text, enc in zip(texts, encodings)
    ]


def _unnormalized(m: Any) -> str | None:
    if "normalized" not in m.spec.output:  # a kind whose rows are not embeddings to normalize
        return None
    if not m.spec.output["normalized"]:
        return "unnormalized"
    return "before_normalize" if m.spec.towers["text"].unnormalized_output else "unavailable"


def models(state: ServerState) -> Any:
    state.require_ready()
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "st-runtime"} for name in state.models],
    }


def info(state: ServerState, model: ServedModel) -> Any:
    cfg = state.config
    m = model.model
    vspec = m.spec.towers["text"].variants[m.variant]
    return {
        "model_id": model.name,
        "model_sha": m.spec.revision,
        "model_dtype": vspec.get("precision", "fp32"),
        "model_type": model.kind.describe(m),
        "max_concurrent_requests": cfg.max_concurrent_requests,
        "max_input_length": model.max_seq_length,
        "max_batch_tokens": cfg.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": cfg.max_client_batch_size,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "st_runtime": {
            "variant": m.variant,
            "providers": [p[0] if isinstance(p, tuple) else p for p in m.providers],
            "dimension": model.dim,
            "normalized": bool(m.spec.output.get("normalized")),
            # what /embed's normalize=false gives: "before_normalize" (the graph's pre-Normalize output),
            # "unnormalized" (the model does not normalize), or "unavailable" (an export without that output)
            "normalize_false": _unnormalized(m),
            "prompts": model.prompts,
            "task": model.kind.task,
            "routes": sorted(model.handlers),
            "served_models": list(state.models),
        },
    }
