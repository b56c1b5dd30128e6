"""What the typed request objects (st_runtime.serve.requests, .dialect_requests) declare about their JSON bodies:
each dataclass field's body key, JSON schema and description. ``st_runtime.serve.openapi`` generates the API's
OpenAPI document from these declarations, so the parser and the schema are written once, side by side.

A field declared with :func:`wired` is read from the body key it names; one declared with :func:`nested` is an
object whose own fields are read from the same body (TextOptions' ``truncate``, ``truncation_direction``, ...);
fields without either are derived and take no part in the schema.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING
from typing import Any

WIRE = "st_serve.wire"

STRING: dict[str, Any] = {"type": "string"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
POSITIVE: dict[str, Any] = {"type": "integer", "minimum": 1}
TOKEN_IDS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
    "description": "one input already tokenized: ids of the model's vocabulary, special tokens as sent",
}
STRINGS: dict[str, Any] = {"type": "array", "items": STRING, "minItems": 1}


def texts(ids: bool = False) -> dict[str, Any]:
    """A string or a non-empty list of them (``ids``: each may also be a list of token ids, and one list of ids
    is one input)."""
    if not ids:
        return {"oneOf": [STRING, STRINGS]}
    item = {"oneOf": [STRING, TOKEN_IDS]}
    return {"oneOf": [STRING, TOKEN_IDS, {"type": "array", "items": item, "minItems": 1}]}


def choice(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def array(items: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    return out


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


@dataclasses.dataclass(frozen=True)
class Wire:
    key: str
    schema: dict[str, Any]
    doc: str
    required: bool = False
    default: Any = None


def wired(
    key: str, schema: dict[str, Any], doc: str, *, required: bool = False, default: Any = MISSING, wire_default=None
) -> Any:
    """A dataclass field read from body key ``key`` (``wire_default``: the default the schema shows)."""
    wire = Wire(key, schema, doc, required, wire_default)
    if default is MISSING:
        return dataclasses.field(metadata={WIRE: wire})
    return dataclasses.field(default=default, metadata={WIRE: wire})


def nested() -> Any:
    """A field whose type is another declared object, read from the same body."""
    return dataclasses.field(metadata={WIRE: "nested"})


def declared(cls: type) -> list[Wire]:
    """The body fields ``cls`` declares, nested objects flattened (a key declared twice: the first wins)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Wire] = {}
    for f in dataclasses.fields(cls):
        wire = f.metadata.get(WIRE)
        if wire == "nested":
            for w in declared(hints[f.name]):
                out.setdefault(w.key, w)
        elif isinstance(wire, Wire):
            out.setdefault(wire.key, wire)
    for w in getattr(cls, "EXTRA_WIRE", ()):
        out.setdefault(w.key, w)
    return [w for w in out.values() if w.key not in getattr(cls, "UNREAD", ())]


@dataclasses.dataclass(frozen=True)
class Api:
    """What a route handler declares for the OpenAPI document: the typed request it parses (None: no body),
    its 200 response's schema, and a one-line summary."""

    request: type | tuple[type, ...] | None  # several: the body is any one of them
    response: dict[str, Any]
    summary: str


def api(request: type | tuple[type, ...] | None, response: dict[str, Any], summary: str):
    """Decorator: attach an :class:`Api` to a route handler (``handler.api``)."""

    def mark(fn):
        fn.api = Api(request, response, summary)
        return fn

    return mark


def request_schema(cls: type, model_names: list[str]) -> dict[str, Any]:
    """The JSON schema of ``cls``'s body: its declared fields, and ``model`` (one of the served names)."""
    props: dict[str, Any] = {}
    required = []
    for w in declared(cls):
        prop = dict(w.schema)
        prop["description"] = w.doc
        if w.default is not None:
            prop["default"] = w.default
        props[w.key] = prop
        if w.required:
            required.append(w.key)
    if getattr(cls, "MODEL_FIELD", True):
        props["model"] = {"type": "string", "enum": model_names, "description": "the served model (default: the first)"}
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema
