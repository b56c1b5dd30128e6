"""The ASGI app of st-serve (on uvicorn, with Starlette's request and response objects): OpenAI's and
text-embeddings-inference's routes over one cross-request batcher per model.

Routes (request and response shapes as the peers define them, so that their clients work unchanged):

* ``POST /v1/embeddings`` (and ``/embeddings``): OpenAI. ``input`` (a string or a list of strings; for a CLIP
  model also ``data:image/...;base64,`` images), ``model``, ``encoding_format`` ("float" or "base64"),
  ``dimensions``; st-serve extensions: ``prompt_name``, ``truncate``. Errors in OpenAI's shape.
* ``GET /v1/models`` (and ``/models``).
* ``POST /embed``: TEI. ``inputs``, ``normalize`` (default true), ``truncate`` (default true),
  ``truncation_direction`` ("Right" or "Left"), ``prompt_name``, ``dimensions``; ``model`` when several
  models are served (default: the first). ``POST /tokenize``, ``GET /info``, ``GET /health``. Errors in
  TEI's shape (``{"error": ..., "error_type": ...}``).
* ``GET /metrics``: Prometheus.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..inputs import LongTextCutter, prepare
from ..util import normalize_embeddings
from .batcher import Batcher, Job, RequestError
from .guards import check_sizes, prepare_texts  # st-serve guards (hostile clients, huge texts)
from .guards import client_left as _client_gone  # a 499, logged at INFO
from .guards import read_json as _read_json  # the body: read once, with --body-timeout, before the slot
from .limits import Limits
from .metrics import Metrics

logger = logging.getLogger("st_runtime.serve")

OPENAI, TEI = "openai", "tei"
# warm-up texts: one short, one at the model's length limit (allocates the largest buffers once)
_WARMUP = ["warm up", "word " * 600]


@dataclass
class ServeConfig:
    """What the command line sets (see ``st-serve --help``)."""

    folders: list[Path]
    names: list[str] | None = None
    providers: str | None = None
    threads: int | None = None
    variant: str | None = None
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 256
    payload_limit: int = 2_000_000
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)  # timeouts, connection and text limits (serve/limits.py)


@dataclass
class ServedModel:
    name: str
    encoder: Any
    batcher: Batcher
    cutter: LongTextCutter
    revision: str | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.encoder.manifest

    @property
    def task(self) -> str:
        return self.manifest.get("task", "embedding")

    @property
    def dim(self) -> int:
        return self.batcher.dim

    @property
    def normalized(self) -> bool:
        return bool((self.manifest.get("embedding") or {}).get("normalized"))

    @property
    def max_seq_length(self) -> int | None:
        return self.encoder.text_tower.max_seq_length

    @property
    def takes_images(self) -> bool:
        return self.task == "embedding" and "image" in self.encoder.modalities

    @property
    def prompts(self) -> dict[str, str]:
        return dict(getattr(self.encoder, "prompts", None) or {})

    def require(self, task: str, route: str) -> None:
        if self.task != task:
            other = {"cross-encoder": "/rerank", "sparse-embedding": "/embed_sparse"}.get(
                self.task, "/embed or /v1/embeddings"
            )
            raise RequestError(
                422,
                f"model {self.name!r} is a {self.task} model: {route} needs a {task} model; use {other}",
                param="model",
            )


@dataclass
class ServerState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    load_error: str | None = None
    in_flight: int = 0
    on_load_failure: Callable[[str], None] | None = None

    def model(self, name: Any, flavor: str) -> ServedModel:
        if not self.ready:
            raise RequestError(503, self.load_error or "the model is loading; retry shortly", "Unhealthy")
        if name is None:
            if flavor == OPENAI and len(self.models) > 1:
                raise RequestError(422, f"'model' is required: this server serves {list(self.models)}", param="model")
            return next(iter(self.models.values()))
        if not isinstance(name, str):
            raise RequestError(422, f"'model' must be a string, got {type(name).__name__}", param="model")
        found = self.models.get(name)
        if found is None:
            raise RequestError(
                404, f"model {name!r} is not served here; served models: {list(self.models)}", "NotFound", "model"
            )
        return found


# ---------------------------------------------------------------------------------------------------- loading
def load_models(state: ServerState) -> None:
    """Load every model, warm it up, start its batcher; then mark the server ready (``/health`` 200)."""
    import st_runtime

    from ..cross_encoder import CrossEncoder
    from ..manifest import CLASS_FOR_TASK, load_manifest
    from ..providers import physical_cores
    from ..session import session_options_for

    cfg = state.config
    try:
        for i, folder in enumerate(cfg.folders):
            t0 = time.perf_counter()
            threads = cfg.threads or physical_cores()
            # onnxruntime's threads sleep between runs instead of spinning: the event loop needs the cores then
            cls = getattr(st_runtime, CLASS_FOR_TASK[load_manifest(folder).get("task", "embedding")])
            encoder = cls(
                folder,
                providers=cfg.providers,
                threads=threads,
                variant=cfg.variant,
                session_options=session_options_for(threads, spinning=False),
            )
            name = cfg.names[i] if cfg.names else encoder.manifest.get("name") or Path(folder).name
            if cls is CrossEncoder:
                encoder.predict([(w, w) for w in _WARMUP])
            else:
                encoder.encode(_WARMUP)
            batcher = Batcher(encoder, name, cfg.max_batch_tokens, on_batch=state.metrics.batch_observer(name))
            state.metrics.track_queue(name, lambda b=batcher: b.queue_size)
            revision = (encoder.manifest.get("source") or {}).get("revision")
            state.models[name] = ServedModel(
                name,
                encoder,
                batcher,
                LongTextCutter(encoder.tokenizer, encoder.text_tower.add_special_tokens),
                revision,
            )
            logger.info(
                "loaded %s from %s (variant %s, %s) in %.1f s",
                name,
                folder,
                encoder.variant,
                encoder.providers[0],
                time.perf_counter() - t0,
            )
    except Exception as exc:
        state.load_error = f"loading the models failed: {type(exc).__name__}: {exc}"
        logger.error("%s", state.load_error)
        if state.on_load_failure is not None:
            state.on_load_failure(state.load_error)
        return
    state.ready = True
    logger.info("ready: serving %s", list(state.models))


# ---------------------------------------------------------------------------------------------------- helpers
def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _error_response(flavor: str, err: RequestError) -> Response:
    if flavor == OPENAI:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            err.status, "server_error" if err.status >= 500 else "invalid_request_error"
        )
        body = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.status}}
    else:
        body = {"error": err.message, "error_type": err.error_type}
    return _json(body, err.status, err.headers)


def _field(data: dict, name: str, kinds: type | tuple, default: Any = None, what: str = "") -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise RequestError(
            422, f"'{name}' must be {what or _kind_names(kinds)}, got {type(value).__name__}", param=name
        )
    return value


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_names(kinds) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


def _inputs(data: dict, key: str, max_items: int) -> tuple[list[Any], bool]:
    """The request's inputs as a list (and whether one bare string was sent)."""
    if key not in data:
        raise RequestError(422, f"'{key}' is required: a string or a list of strings", param=key)
    value = data[key]
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list):
        raise RequestError(422, f"'{key}' must be a string or a list of strings, got {type(value).__name__}", param=key)
    if not value:
        raise RequestError(422, f"'{key}' is an empty list; send at least one input", param=key)
    if len(value) > max_items:
        raise RequestError(
            413,
            f"'{key}' has {len(value)} items, over this server's --max-client-batch-size of {max_items}; "
            "split the request",
            "Validation",
            key,
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = " (token arrays are not accepted: send the text)" if isinstance(item, (int, list)) else ""
            raise RequestError(422, f"'{key}[{i}]' must be a string, got {type(item).__name__}{hint}", param=key)
    return value, False


def _dimensions(data: dict, model: ServedModel) -> int | None:
    dims = _field(data, "dimensions", int)
    if dims is not None and not 0 < dims <= model.dim:
        raise RequestError(
            422,
            f"'dimensions' must be between 1 and {model.dim} (the model's dimension), got {dims}",
            param="dimensions",
        )
    return dims


def _prompt(data: dict, model: ServedModel) -> str:
    name = _field(data, "prompt_name", str)
    prompts = model.prompts
    if name is None:
        default = getattr(model.encoder, "default_prompt_name", None)
        return prompts.get(default, "") if default else ""
    if name not in prompts:
        raise RequestError(
            422, f"'prompt_name' {name!r} is not one of the model's prompts {sorted(prompts)}", param="prompt_name"
        )
    return prompts[name]


def _decode_image(uri: str, index: int, key: str):
    header, _, payload = uri.partition(",")
    if ";base64" not in header:
        raise RequestError(
            422, f"'{key}[{index}]': an image must be a base64 data URI (data:image/png;base64,...)", param=key
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(422, f"'{key}[{index}]': the image's base64 does not decode ({exc})", param=key) from None
    try:
        from PIL import Image
    except ImportError:
        raise RequestError(
            422,
            "this server cannot decode images: Pillow is not installed (pip install 'st-runtime[image]')",
            param=key,
        ) from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except Exception as exc:  # Pillow raises many types for a broken file
        raise RequestError(422, f"'{key}[{index}]' is not an image Pillow can read: {exc}", param=key) from None
    return image


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _run(request: Request, model: ServedModel, job: Job) -> tuple[np.ndarray, np.ndarray]:
    """Queue ``job`` and wait for its rows; a client that disconnects meanwhile has its items dropped."""
    model.batcher.submit(job)
    watcher = asyncio.ensure_future(_wait_disconnect(request))

    def client_left(task: asyncio.Task) -> None:
        if not task.cancelled() and not job.future.done():
            job.cancelled = True  # the batcher skips it wherever it is
            job.future.cancel()

    watcher.add_done_callback(client_left)
    try:
        return await job.future
    except asyncio.CancelledError:
        if job.cancelled:
            raise _client_gone(request, "while its request was queued") from None  # guards: a 499, logged
        job.cancelled = True  # the handler itself was cancelled (server shutting down)
        raise
    finally:
        watcher.cancel()


async def _embed(
    request: Request, state: ServerState, model: ServedModel, items: list[str], data: dict, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Embed text (and, for an image tower, data-URI images) items; rows in input order, tokens per item."""
    truncate = _field(data, "truncate", bool, True)
    direction = _field(data, "truncation_direction", str)
    if direction is not None:
        if direction.lower() not in ("right", "left"):
            raise RequestError(
                422,
                f"'truncation_direction' must be 'Right' or 'Left', got {direction!r}",
                param="truncation_direction",
            )
        direction = direction.lower()
    prompt = _prompt(data, model)
    check_sizes(items, state.config.limits.max_input_chars, key)  # guards: --max-input-chars
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    image_idx = [i for i, t in enumerate(items) if t.startswith("data:image/")] if model.takes_images else []
    images_at = set(image_idx)
    text_idx = [i for i in range(len(items)) if i not in images_at] if image_idx else None
    pairs = bool(items) and isinstance(items[0], tuple)
    jobs = []
    if len(image_idx) < len(items):
        texts = [prompt + t for t in items] if prompt and not pairs else items
        if text_idx is not None:
            texts = [texts[i] for i in text_idx]
        texts = await prepare_texts(texts, model.cutter, truncate, direction)  # guards: exact cuts, early 413
        jobs.append(Job(texts, loop, loop.create_future(), direction=direction, strict=not truncate, pairs=pairs))
    if image_idx:
        images = [_decode_image(items[i], i, key) for i in image_idx]
        jobs.append(Job([], loop, loop.create_future(), images=images))
    results = [await _run(request, model, job) for job in jobs]
    total = time.perf_counter() - t0
    for job in jobs:
        state.metrics.observe_job(model.name, job, total)
    if len(jobs) == 1:
        return results[0]
    out = np.empty((len(items), model.dim), dtype=np.float32)
    tokens = np.zeros(len(items), dtype=np.int64)
    out[text_idx], tokens[text_idx] = results[0]
    out[image_idx] = results[1][0]
    return out, tokens


def _finish(emb: np.ndarray, dims: int | None, normalize: bool) -> np.ndarray:
    if dims is not None:
        emb = emb[:, :dims]
    if normalize:
        emb = normalize_embeddings(emb)
    return np.ascontiguousarray(emb, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- routes
async def openai_embeddings(request: Request, state: ServerState) -> Response:
    data = await _read_json(request, state.config.payload_limit)
    model = state.model(data.get("model"), OPENAI)
    model.require("embedding", "/v1/embeddings")
    items, _ = _inputs(data, "input", state.config.max_client_batch_size)
    fmt = _field(data, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise RequestError(422, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
    dims = _dimensions(data, model)
    emb, tokens = await _embed(request, state, model, items, data, "input")
    # the model's own output is normalized when the model normalizes; a Matryoshka cut is normalized again then
    emb = _finish(emb, dims, normalize=dims is not None and model.normalized)
    if fmt == "base64":
        vectors: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
    else:
        vectors = list(emb)
    n_tokens = int(tokens.sum())
    return _json(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


async def openai_models(request: Request, state: ServerState) -> Response:
    if not state.ready:
        raise RequestError(503, state.load_error or "the model is loading; retry shortly", "Unhealthy")
    return _json(
        {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "st-runtime"} for name in state.models],
        }
    )


async def tei_embed(request: Request, state: ServerState) -> Response:
    data = await _read_json(request, state.config.payload_limit)
    model = state.model(data.get("model"), TEI)
    model.require("embedding", "/embed")
    items, _ = _inputs(data, "inputs", state.config.max_client_batch_size)
    normalize = _field(data, "normalize", bool, True)
    dims = _dimensions(data, model)
    emb, _tokens = await _embed(request, state, model, items, data, "inputs")
    emb = _finish(emb, dims, normalize=normalize and (dims is not None or not model.normalized))
    return _json(list(emb))


async def tei_tokenize(request: Request, state: ServerState) -> Response:
    data = await _read_json(request, state.config.payload_limit)
    model = state.model(data.get("model"), TEI)
    items, _ = _inputs(data, "inputs", state.config.max_client_batch_size)
    special = _field(data, "add_special_tokens", bool, model.encoder.text_tower.add_special_tokens)
    prompt = _prompt(data, model)
    check_sizes(items, state.config.limits.max_input_chars)  # guards: --max-input-chars
    texts = prepare([prompt + t for t in items] if prompt else items, None)
    tokenizer = model.encoder.text_tower.tokenizer_for(None)
    if not hasattr(tokenizer, "get_vocab_size"):
        raise RequestError(422, f"model {model.name!r} has a word tokenizer without token offsets", "Tokenizer")
    encodings = await asyncio.get_running_loop().run_in_executor(
        None, lambda: tokenizer.encode_batch(texts, add_special_tokens=special)
    )
    out = []
    for text, enc in zip(texts, encodings):
        out.append(
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
        )
    return _json(out)


def _model_type(model: ServedModel) -> dict[str, Any]:
    """TEI's model_type: {"embedding": {"pooling": ...}} or {"reranker": {"id2label": ...}}."""
    if model.task == "cross-encoder":
        labels = model.manifest["scores"].get("labels") or []
        return {"reranker": {"id2label": {str(i): label for i, label in enumerate(labels)}}}
    if model.task == "sparse-embedding":
        return {"embedding": {"pooling": "splade"}}
    pooling = (model.manifest["embedding"].get("pooling") or {}).get("modes") or ["none"]
    return {"embedding": {"pooling": "+".join(pooling)}}


async def tei_rerank(request: Request, state: ServerState) -> Response:
    """TEI's /rerank: {"query", "texts", "raw_scores"=false, "return_text"=false, "truncate"=true,
    "truncation_direction"} -> [{"index", "score"(, "text")}] by decreasing score."""
    data = await _read_json(request, state.config.payload_limit)
    model = state.model(data.get("model"), TEI)
    model.require("cross-encoder", "/rerank")
    query = data.get("query")
    if not isinstance(query, str):
        raise RequestError(422, f"'query' must be a string, got {type(query).__name__}", param="query")
    texts, _ = _inputs(data, "texts", state.config.max_client_batch_size)
    raw = _field(data, "raw_scores", bool, False)
    return_text = _field(data, "return_text", bool, False)
    if model.encoder.num_labels != 1:
        raise RequestError(422, f"model {model.name!r} has {model.encoder.num_labels} labels; /rerank needs one")
    logits, _tokens = await _embed(request, state, model, [(query, t) for t in texts], data, "texts")
    scores = logits[:, 0] if raw else model.encoder.predict_activation(logits)[:, 0]
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order:
        entry: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
        if return_text:
            entry["text"] = texts[i]
        out.append(entry)
    return _json(out)


async def tei_embed_sparse(request: Request, state: ServerState) -> Response:
    """TEI's /embed_sparse: {"inputs", "truncate"=true, "truncation_direction", "prompt_name"} -> per input, its
    active entries [{"index", "value"}] in increasing index order (the model's own max_active_dims applies)."""
    from ..sparse import sparsify

    data = await _read_json(request, state.config.payload_limit)
    model = state.model(data.get("model"), TEI)
    model.require("sparse-embedding", "/embed_sparse")
    items, _ = _inputs(data, "inputs", state.config.max_client_batch_size)
    rows, _tokens = await _embed(request, state, model, items, data, "inputs")
    return _json(
        [
            [{"index": int(i), "value": float(v)} for i, v in zip(e.indices, e.values)]
            for e in sparsify(rows, model.encoder.max_active_dims)
        ]
    )


async def tei_info(request: Request, state: ServerState) -> Response:
    model = state.model(request.query_params.get("model"), TEI)
    cfg = state.config
    vspec = model.manifest["towers"]["text"]["variants"][model.encoder.variant]
    return _json(
        {
            "model_id": model.name,
            "model_sha": model.revision,
            "model_dtype": vspec.get("precision", "fp32"),
            "model_type": _model_type(model),
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
                "variant": model.encoder.variant,
                "providers": [p[0] if isinstance(p, tuple) else p for p in model.encoder.providers],
                "dimension": model.dim,
                "normalized": model.normalized,
                "prompts": model.prompts,
                "task": model.task,
                "served_models": list(state.models),
            },
        }
    )


async def health(request: Request, state: ServerState) -> Response:
    if state.ready:
        return Response(b"", status_code=200)
    raise RequestError(503, state.load_error or "the model is loading", "Unhealthy")


async def metrics(request: Request, state: ServerState) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


# ---------------------------------------------------------------------------------------------------- the app
Handler = Callable[[Request, ServerState], Awaitable[Response]]


def _endpoint(state: ServerState, handler: Handler, route: str, flavor: str, limited: bool, auth: bool):
    cfg = state.config
    expected = f"Bearer {cfg.api_key}" if cfg.api_key else None
    counter = state.metrics.requests

    async def endpoint(request: Request) -> Response:
        status = 500
        counted = False
        try:
            if auth and expected is not None and request.headers.get("authorization") != expected:
                raise RequestError(
                    401,
                    "a valid API key is required: send 'Authorization: Bearer KEY'",
                    "Unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if limited:
                # guards: the body is read (--body-timeout) and parsed before the request takes a slot
                await _read_json(request, cfg.payload_limit, cfg.limits.body_timeout)
                if state.in_flight >= cfg.max_concurrent_requests:
                    raise RequestError(
                        429,
                        f"the server has {cfg.max_concurrent_requests} requests in flight "
                        "(--max-concurrent-requests); retry shortly",
                        "Overloaded",
                        headers={"Retry-After": "1"},
                    )
                state.in_flight += 1
                state.metrics.in_flight.inc()
                counted = True
            response = await handler(request, state)
            status = response.status_code
            return response
        except RequestError as err:
            status = err.status
            return _error_response(flavor, err)
        except Exception as exc:  # a bug: answer 500 and keep serving
            logger.exception("error in %s", route)
            return _error_response(flavor, RequestError(500, f"internal error: {type(exc).__name__}: {exc}", "Backend"))
        finally:
            if counted:
                state.in_flight -= 1
                state.metrics.in_flight.dec()
            counter.labels(route=route, status=str(status)).inc()

    return endpoint


class ServeApp:
    """The ASGI application: a table from path to endpoint. Requests and responses are Starlette's objects;
    its router and middleware stack are left out (they took about 40% of the event loop's time per request in
    a profile of st-serve at 1,000 requests/s), since every error is answered by the endpoints themselves."""

    def __init__(self, state: ServerState, routes: dict[str, tuple[frozenset[str], Callable]]):
        self.state = state
        self.routes = routes
        self._loader: threading.Thread | None = None

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = self.routes.get(scope["path"])
            if route is None:
                response = _json(
                    {"error": f"no route {scope['path']}; routes: {sorted(self.routes)}", "error_type": "NotFound"},
                    404,
                )
            elif scope["method"] not in route[0]:
                allowed = ", ".join(sorted(route[0]))
                response = _json(
                    {"error": f"{scope['path']} takes {allowed}, not {scope['method']}", "error_type": "Validation"},
                    405,
                    {"Allow": allowed},
                )
            else:
                response = await route[1](Request(scope, receive))
            await response(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loader = threading.Thread(
                    target=load_models, args=(self.state,), name="st-serve-load", daemon=True
                )
                self._loader.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # the server has stopped accepting and finished the requests in flight: stop the workers
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _stop(self) -> None:
        if self._loader is not None:
            self._loader.join(timeout=30)
        for model in self.state.models.values():
            model.batcher.close(timeout=30)


def create_app(config: ServeConfig, on_load_failure: Callable[[str], None] | None = None) -> ServeApp:
    """The st-serve ASGI app. Models load in a background thread once the app starts (``/health`` answers
    503 until they are loaded and warmed up); ``on_load_failure(message)`` is called if loading fails."""
    state = ServerState(config, on_load_failure=on_load_failure)
    table = [
        ("/v1/embeddings", openai_embeddings, ["POST"], OPENAI, True, True),
        ("/embeddings", openai_embeddings, ["POST"], OPENAI, True, True),
        ("/v1/models", openai_models, ["GET"], OPENAI, False, True),
        ("/models", openai_models, ["GET"], OPENAI, False, True),
        ("/embed", tei_embed, ["POST"], TEI, True, True),
        ("/rerank", tei_rerank, ["POST"], TEI, True, True),
        ("/embed_sparse", tei_embed_sparse, ["POST"], TEI, True, True),
        ("/tokenize", tei_tokenize, ["POST"], TEI, True, True),
        ("/info", tei_info, ["GET"], TEI, False, True),
        ("/health", health, ["GET"], TEI, False, False),
        ("/metrics", metrics, ["GET"], TEI, False, True),
    ]
    routes = {
        path: (frozenset(methods), _endpoint(state, fn, path, flavor, limited, auth))
        for path, fn, methods, flavor, limited, auth in table
    }
    return ServeApp(state, routes)
