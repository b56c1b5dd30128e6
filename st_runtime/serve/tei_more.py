"""text-embeddings-inference's other routes: ``/predict`` (a classifier's labels), ``/similarity``,
``/embed_all`` (token embeddings), ``/decode``, and ``POST /`` of a cross-encoder (rerank or predict, by the
body). Thin calls into the model's kind protocol and towers, as the routes of st_runtime.serve.handlers are."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np

from . import handlers, wire
from .context import Call
from .dialect_requests import DecodeRequest, EmbedAllRequest, PredictRequest, SimilarityRequest
from .errors import RequestError
from .requests import RerankRequest
from .wire import NUMBER, STRING, api

_LABEL_SCORES = wire.array(wire.obj({"score": NUMBER, "label": STRING}, ("score", "label")))
PREDICT_RESPONSE = {"oneOf": [_LABEL_SCORES, wire.array(_LABEL_SCORES)]}


def _labels(call: Call) -> list[str]:
    labels = call.model.model.spec.output.get("labels") or []
    return [labels[i] if i < len(labels) else f"LABEL_{i}" for i in range(call.model.dim)]


@api(PredictRequest, PREDICT_RESPONSE, "a classifier's label scores for a text or a pair, or a list of them")
async def tei_predict(call: Call) -> Any:
    """Per input, every label's score by decreasing score: the model's activation (and softmax over several
    labels), as CrossEncoder.predict(apply_softmax=True) gives; ``raw_scores``: the logits."""
    req = call.parse(PredictRequest)
    logits, _tokens = await call.run(await call.prepare(req.inputs, texts_alone=True, **req.text.prepare_args()))
    scores = logits if req.raw_scores else call.finish(logits, apply_softmax=True)
    labels = _labels(call)
    out = []
    for row in np.atleast_2d(scores):
        order = np.argsort(-row, kind="stable")
        out.append([{"score": float(row[i]), "label": labels[i]} for i in order])
    return out[0] if req.singular else out


async def tei_cross_encoder_root(call: Call) -> Any:
    """TEI's ``POST /`` for a cross-encoder: a body with a ``query`` is a rerank, any other a predict."""
    if "query" in call.body.data:
        return await handlers.tei_rerank(call)
    return await tei_predict(call)


tei_cross_encoder_root.api = wire.Api(  # type: ignore[attr-defined]
    (RerankRequest, PredictRequest),
    {"anyOf": [handlers.RERANK_RESPONSE, PREDICT_RESPONSE]},
    "rerank (a body with 'query') or predict",
)


@api(SimilarityRequest, wire.array(NUMBER), "the similarity of a source sentence to each of several sentences")
async def tei_similarity(call: Call) -> Any:
    """The model's similarity function (cosine unless it says otherwise) between the source sentence's
    embedding and each sentence's: SentenceEncoder.similarity on the embeddings /embed gives."""
    req = call.parse(SimilarityRequest)
    texts = [req.source, *req.sentences]
    rows, _tokens = await call.run(await call.prepare(texts, prompt=req.text.prompt, **req.text.prepare_args()))
    emb = call.finish(rows)
    return [float(x) for x in call.model.model.similarity(emb[:1], emb[1:])[0]]


@api(EmbedAllRequest, wire.array(wire.array(wire.array(NUMBER))), "each input's token embeddings")
async def tei_embed_all(call: Call) -> Any:
    """Each input's token embeddings [tokens, hidden] (what pooling reads), without padding; run off the event
    loop beside the batcher (the graph's per-token output)."""
    req = call.parse(EmbedAllRequest)
    prepared = await call.prepare(req.inputs, prompt=req.text.prompt, **req.text.prepare_args())
    tower = call.model.model.text_tower
    if prepared.images:
        raise RequestError(422, "/embed_all takes texts only; images have no tokens", param="inputs")
    if tower.spec.token_output is None:
        raise RequestError(
            422, f"model {call.model.name!r} was exported without its token output; export it again with this st-export"
        )
    loop = asyncio.get_running_loop()
    limit = tower.max_seq_length
    if req.text.strict and limit is not None:
        lengths = [len(e) for e in await loop.run_in_executor(None, tower.tokenize, prepared.texts, None, None, False)]
        over = next((i for i, n in enumerate(lengths) if n > limit), None)
        if over is not None:
            raise RequestError(
                413, f"input {over} has {lengths[over]} tokens, over the limit of {limit} tokens", param="inputs"
            )
    run = functools.partial(tower.embed_tokens, prepared.texts, None, None, prepared.direction)
    outputs = await loop.run_in_executor(None, run)
    return [o["token_embeddings"] for o in outputs]


@api(DecodeRequest, wire.array(STRING), "token ids back to text")
async def tei_decode(call: Call) -> Any:
    req = call.parse(DecodeRequest)
    tokenizer = call.model.model.text_tower.tokenizer_for(None)
    if not hasattr(tokenizer, "decode_batch"):
        raise RequestError(422, f"model {call.model.name!r} has a word tokenizer, which does not decode", "Tokenizer")
    return tokenizer.decode_batch(req.ids, skip_special_tokens=req.skip_special_tokens)
