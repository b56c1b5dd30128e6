"""The ASGI app of st-serve (on uvicorn, with Starlette's request and response objects): OpenAI's and
text-embeddings-inference's routes over one cross-request batcher per model.

Routes (request and response shapes as the peers define them, so that their clients work unchanged; the table
by dialect is docs/serving-dialects.md):

* the routes each model kind declares (st_runtime.kinds): ``POST /v1/embeddings`` (and ``/embeddings``,
  OpenAI's), ``POST /embed``, ``/embed_all``, ``/similarity`` (TEI's), ``/v2/embed`` (Cohere's) for embedding
  models, ``POST /rerank``, ``/predict`` (TEI's), ``/v1/rerank``, ``/v2/rerank`` (Cohere's, Jina's) for
  cross-encoders, ``POST /embed_sparse`` for sparse encoders, and each kind's ``POST /`` (TEI's, which
  SageMaker's ``/invocations`` and Vertex AI's ``/vertex`` also reach). ``model`` picks among several served
  models (default: the first). A route asked of a model whose kind does not answer it is a 422 naming the
  model's routes.
* for every model: ``POST /tokenize``, ``/decode``, ``GET /info``, ``GET /v1/models`` (and ``/models``); and
  ``GET /health`` (also ``GET /`` and ``/ping``), ``GET /metrics`` (Prometheus), ``GET /openapi.json`` (the
  OpenAPI document, generated from the typed requests) and ``/docs`` (its interactive page).

Errors come in the shape of the route's API: OpenAI's ``{"error": {"message", "type", "param", "code"}}``,
TEI's ``{"error": ..., "error_type": ...}`` or Cohere's ``{"message": ...}``. Request bodies are parsed in
st_runtime.serve.requests and .dialect_requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import StRuntimeError
from ..kinds import all_kinds
from . import handlers, openapi, tei_more
from .context import Call
from .dialect_requests import VertexRequest
from .errors import RequestError
from .guards import read_json
from .registry import COHERE, OPENAI, TEI, ServeConfig, ServerState, kind_routes, load_models
from .requests import Body

__all__ = ["ServeApp", "ServeConfig", "create_app"]

logger = logging.getLogger("st_runtime.serve")


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(dialect: str, err: RequestError) -> Response:
    if dialect == OPENAI:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            err.status, "server_error" if err.status >= 500 else "invalid_request_error"
        )
        body: dict[str, Any] = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.status}}
    elif dialect == COHERE:
        body = {"message": err.message, "error_type": err.error_type}
    else:
        body = {"error": err.message, "error_type": err.error_type}
    return _json(body, err.status, err.headers)


async def _body(request: Request, state: ServerState) -> dict[str, Any]:
    """The request's JSON object, read with --payload-limit and --body-timeout (guards.read_json) before the
    request takes a concurrency slot."""
    return await read_json(request, state.config.payload_limit, state.config.limits.body_timeout)


# ---------------------------------------------------------------------------------------------------- routes
# A route's work once the request is authorized: the response body (or a Response), given the request.
Work = Callable[[Request, ServerState], Awaitable[Any]]


@dataclass(frozen=True)
class RouteEntry:
    path: str
    methods: frozenset[str]
    dialect: str
    work: Work
    auth: bool = True
    api: tuple = ()  # the handlers' wire.Api declarations, for the OpenAPI document
    open_methods: frozenset[str] = frozenset()  # methods answered without the API key (GET / is a health check)


def _model_route(path: str, dialect: str) -> Work:
    """A kind's route: the body names the model, the model's kind has the handler."""

    async def work(request: Request, state: ServerState) -> Any:
        data = await _body(request, state)
        model = state.model(data.get("model"), dialect)
        handler = model.handler(path)
        body = Body(data, state.config)
        async with _slot(state):
            return await handler(Call(request, state, model, body))

    return work


def _any_model(handler: Callable[[Call], Awaitable[Any]]) -> Work:
    """A route every model answers (its tokenizer's)."""

    async def work(request: Request, state: ServerState) -> Any:
        data = await _body(request, state)
        model = state.model(data.get("model"), TEI)
        async with _slot(state):
            return await handler(Call(request, state, model, Body(data, state.config)))

    return work


_post_root = _model_route("/", TEI)


async def _root(request: Request, state: ServerState) -> Any:
    """TEI's ``/``: GET is the health check, POST what the model's kind answers there."""
    return await (_health if request.method == "GET" else _post_root)(request, state)


async def _vertex(request: Request, state: ServerState) -> Any:
    """Vertex AI's ``{"instances": [body, ...]}``: each instance answered as ``POST /`` answers it, in
    ``{"predictions": [...]}``."""
    state.require_ready()
    body = Body(await _body(request, state), state.config)
    req = VertexRequest.parse(body)
    async with _slot(state):
        predictions = []
        for instance in req.instances:
            model = state.model(instance.get("model"), TEI)
            call = Call(request, state, model, body.with_data(instance))
            predictions.append(await model.handler("/")(call))
    return {"predictions": predictions}


async def _info(request: Request, state: ServerState) -> Any:
    return handlers.info(state, state.model(request.query_params.get("model"), TEI))


async def _models(request: Request, state: ServerState) -> Any:
    return handlers.models(state)


async def _health(request: Request, state: ServerState) -> Any:
    if state.ready:
        return Response(b"", status_code=200)
    raise RequestError(503, state.load_error or "the model is loading", "Unhealthy")


async def _metrics(request: Request, state: ServerState) -> Any:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _apis(path: str) -> tuple:
    """The API declarations of every kind's handler of ``path`` (wire.api)."""
    found = []
    for kind in all_kinds().values():
        for route in kind.routes:
            api = getattr(route.resolve(), "api", None) if route.path == path else None
            if api is not None and api not in found:
                found.append(api)
    return tuple(found)


def route_table() -> list[RouteEntry]:
    """Every route: the kinds' routes, then those every model answers."""
    table = []
    get, post = frozenset({"GET"}), frozenset({"POST"})
    for path, route in kind_routes().items():
        if path == "/":
            table.append(RouteEntry("/", get | post, TEI, _root, api=_apis("/"), open_methods=get))
            table.append(RouteEntry("/invocations", post, TEI, _post_root, api=_apis("/")))
        else:
            work = _model_route(path, route.dialect)
            table.append(RouteEntry(path, frozenset(route.methods), route.dialect, work, api=_apis(path)))
    table += [
        RouteEntry("/vertex", post, TEI, _vertex, api=(openapi.VERTEX,)),
        RouteEntry("/v1/models", get, OPENAI, _models, api=(openapi.MODELS,)),
        RouteEntry("/models", get, OPENAI, _models, api=(openapi.MODELS,)),
        RouteEntry("/tokenize", post, TEI, _any_model(handlers.tokenize), api=(handlers.tokenize.api,)),
        RouteEntry("/decode", post, TEI, _any_model(tei_more.tei_decode), api=(tei_more.tei_decode.api,)),
        RouteEntry("/info", get, TEI, _info, api=(openapi.INFO,)),
        RouteEntry("/health", get, TEI, _health, auth=False, api=(openapi.HEALTH,)),
        RouteEntry("/ping", get, TEI, _health, auth=False, api=(openapi.HEALTH,)),
        RouteEntry("/metrics", get, TEI, _metrics, api=(openapi.METRICS,)),
    ]
    document = openapi.Document(table)
    table += [
        RouteEntry("/openapi.json", get, TEI, document.work, auth=False),
        RouteEntry("/docs", get, TEI, openapi.docs_page, auth=False),
    ]
    return table


class _slot:
    """One of --max-concurrent-requests, taken once the body is read and parsed (a stalled upload holds none),
    for the time the request's work runs; none left: 429."""

    def __init__(self, state: ServerState):
        self.state = state

    async def __aenter__(self) -> None:
        state = self.state
        limit = state.config.max_concurrent_requests
        if state.in_flight >= limit:
            raise RequestError(
                429,
                f"the server has {limit} requests in flight (--max-concurrent-requests); retry shortly",
                "Overloaded",
                headers={"Retry-After": "1"},
            )
        state.in_flight += 1
        state.metrics.in_flight.inc()

    async def __aexit__(self, *exc: Any) -> None:
        self.state.in_flight -= 1
        self.state.metrics.in_flight.dec()


def _endpoint(state: ServerState, entry: RouteEntry) -> Callable[[Request], Awaitable[Response]]:
    expected = f"Bearer {state.config.api_key}" if state.config.api_key else None
    count = state.metrics.count_request

    async def endpoint(request: Request) -> Response:
        status = 500
        span = state.tracing.start(request, entry.path) if state.tracing is not None else None
        try:
            if (
                entry.auth
                and expected is not None
                and request.method not in entry.open_methods
                and request.headers.get("authorization") != expected
            ):
                raise RequestError(
                    401,
                    "a valid API key is required: send 'Authorization: Bearer KEY'",
                    "Unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            result = await entry.work(request, state)
            response = result if isinstance(result, Response) else _json(result)
            status = response.status_code
            return response
        except RequestError as err:
            status = err.status
            return error_response(entry.dialect, err)
        except StRuntimeError as err:  # the model refused the inputs
            status = 422
            return error_response(entry.dialect, RequestError(422, str(err)))
        except Exception as exc:  # a bug: answer 500 and keep serving
            logger.exception("error in %s", entry.path)
            bug = RequestError(500, f"internal error: {type(exc).__name__}: {exc}", "Backend")
            return error_response(entry.dialect, bug)
        finally:
            count(entry.path, status)
            if span is not None:
                state.tracing.end(span, request, status)

    return endpoint


class ServeApp:
    """The ASGI application: a table from path to endpoint. Requests and responses are Starlette's objects;
    its router and middleware stack are left out (a dictionary lookup costs the event loop far less per
    request), since every error is answered by the endpoints themselves."""

    def __init__(self, state: ServerState, table: list[RouteEntry]):
        self.state = state
        self.routes = {e.path: (e.methods, _endpoint(state, e)) for e in table}
        self._loader: threading.Thread | None = None

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope, receive, send) -> None:
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
        if self.state.tracing is not None:
            self.state.tracing.shutdown()


def create_app(config: ServeConfig, on_load_failure: Callable[[str], None] | None = None) -> ServeApp:
    """The st-serve ASGI app. Models load in a background thread once the app starts (``/health`` answers
    503 until they are loaded and warmed up); ``on_load_failure(message)`` is called if loading fails."""
    state = ServerState(config, on_load_failure=on_load_failure)
    if config.otlp_endpoint:
        from .tracing import Tracing

        state.tracing = Tracing(config.otlp_endpoint, service_name=config.otlp_service_name)
    return ServeApp(state, route_table())
