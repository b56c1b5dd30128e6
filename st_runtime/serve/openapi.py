"""st-serve's OpenAPI 3.1 document, generated from the route table and the typed request objects' field
declarations (st_runtime.serve.wire): ``GET /openapi.json``, and ``GET /docs`` (Swagger UI on it).

Each route's request body schema comes from the request class its handler declares (``@wire.api``), its 200
response from the schema declared beside the handler, its errors from its dialect's error shape. A route is
listed when some served model answers it, with ``model`` naming those models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from .. import __version__
from . import wire
from .dialect_requests import VertexRequest
from .registry import kind_routes
from .wire import INTEGER, STRING, Api

if TYPE_CHECKING:
    from .app import RouteEntry
    from .registry import ServerState

HEALTH = Api(None, {}, "health: 200 once the models are loaded, 503 before")
METRICS = Api(None, {"type": "string"}, "Prometheus metrics")
INFO = Api(None, {"type": "object"}, "the model's description (TEI's /info); ?model= picks one")
MODELS = Api(
    None,
    wire.obj({"object": STRING, "data": wire.array(wire.obj({"id": STRING, "object": STRING}, ("id",)))}),
    "the served models (OpenAI's)",
)
VERTEX = Api(VertexRequest, wire.obj({"predictions": wire.array({})}, ("predictions",)), "Vertex AI's predictions")

ERRORS = {
    "openai": wire.obj(
        {
            "error": wire.obj(
                {"message": STRING, "type": STRING, "param": {"type": ["string", "null"]}, "code": INTEGER},
                ("message", "type"),
            )
        },
        ("error",),
    ),
    "tei": wire.obj({"error": STRING, "error_type": STRING}, ("error", "error_type")),
    "cohere": wire.obj({"message": STRING}, ("message",)),
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _request_schema(api: Api, names: list[str]) -> dict[str, Any] | None:
    if api.request is None:
        return None
    classes = api.request if isinstance(api.request, tuple) else (api.request,)
    schemas = [wire.request_schema(c, names) for c in classes]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _operation(entry: RouteEntry, method: str, apis: tuple, names: list[str]) -> dict[str, Any]:
    error = {"description": "refused (the message names the field)", "content": _json(ERRORS[entry.dialect])}
    ok: dict[str, Any] = {"description": "OK"}  # health: no body
    if apis and apis[0] is METRICS:
        ok["content"] = {"text/plain": {"schema": METRICS.response}}
    elif apis and apis[0] is not HEALTH:
        responses = [a.response for a in apis]
        ok["content"] = _json(responses[0] if len(responses) == 1 else {"anyOf": responses})
    op: dict[str, Any] = {
        "summary": " / ".join(dict.fromkeys(a.summary for a in apis)) or entry.path,
        "operationId": f"{method}_{entry.path.strip('/').replace('/', '_') or 'root'}",
        "tags": [entry.dialect],
        "responses": {"200": ok, "4XX": error, "503": error},
    }
    bodies = [s for s in (_request_schema(a, names) for a in apis) if s is not None]
    if bodies and method == "post":
        schema = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
        op["requestBody"] = {"required": True, "content": _json(schema)}
    if entry.path == "/info":
        op["parameters"] = [
            {"name": "model", "in": "query", "required": False, "schema": {"type": "string", "enum": names}}
        ]
    return op


class Document:
    """The document for a route table, made once the models are loaded (the served names and kinds decide what
    it lists)."""

    def __init__(self, table: list[RouteEntry]):
        self.table = table
        self._doc: dict[str, Any] | None = None

    def build(self, state: ServerState) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        everyone = list(state.models)
        kind_paths = set(kind_routes())
        for entry in self.table:
            if not entry.api:  # this document and its page
                continue
            handler_path = "/" if entry.path in ("/invocations", "/vertex") else entry.path
            names = [n for n, m in state.models.items() if handler_path in m.handlers]
            if handler_path in kind_paths and not names:  # no served model answers it
                continue
            names = names if handler_path in kind_paths else everyone
            item: dict[str, Any] = {}
            for method in sorted(entry.methods):
                apis = (HEALTH,) if entry.path == "/" and method == "GET" else entry.api
                item[method.lower()] = _operation(entry, method.lower(), apis, names)
            paths[entry.path] = item
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "st-serve",
                "version": __version__,
                "description": "sentence-transformers models served over OpenAI's, text-embeddings-inference's, "
                "Cohere's, Jina's, SageMaker's and Vertex AI's APIs (docs/serving-dialects.md).",
            },
            "paths": paths,
        }

    async def work(self, request: Request, state: ServerState) -> Any:
        state.require_ready()
        if self._doc is None:
            self._doc = self.build(state)
        return self._doc


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>st-serve API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


async def docs_page(request: Request, state: ServerState) -> Any:
    """Swagger UI on /openapi.json (the browser loads Swagger UI itself from jsDelivr)."""
    return HTMLResponse(_PAGE)
