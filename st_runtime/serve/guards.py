"""Request-level guards of st-serve against clients that misbehave: the body is read with a deadline before
the request takes a concurrency slot, a client that leaves is a 499 (never a 500), only JSON is parsed, and
the texts are bounded (and shortened exactly) before they reach the tokenizer.

* :func:`read_json`: the body, read once (``--payload-limit`` from the declared length and while reading:
  413; ``--body-timeout``: 408; a client that disconnects: 499, logged at INFO), parsed, and cached on the
  request so that the route handlers read the same object. A ``Content-Type`` other than JSON is 415 (a
  request without one is read as JSON).
* :func:`check_sizes`: texts over ``--max-input-chars`` are a 413 (the typed requests call it). The texts
  themselves are prepared by the model's kind (``Call.prepare``: off the event loop for large requests; very
  long texts shortened exactly, or with ``truncate: false`` refused early when provably over the limit).

Connection-level limits (head timeout and size, idle and open connections) are ``st_runtime.serve.limits``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from .errors import RequestError
from .limits import Throttled

logger = logging.getLogger("st_runtime.serve")

_PARSED = "st_serve.json"  # the parsed body, in the request's scope
_log = Throttled()  # one INFO line per kind of event and second at most
_INLINE_CHARS = 65536  # requests with more characters of text are prepared in a worker thread


def _peer(request: Request) -> str:
    client = request.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


def _check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").strip()
    if not ctype:
        return
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise RequestError(
        415,
        f"the body must be JSON, sent with 'Content-Type: application/json' (got {ctype!r})",
        "Validation",
    )


async def _within(work: Coroutine[Any, Any, None], timeout: float | None) -> None:
    """``await work`` with a deadline: asyncio.timeout where there is one (Python 3.11+: no extra task per
    request), else asyncio.wait_for."""
    if timeout is None:
        return await work
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout):
            return await work
    return await asyncio.wait_for(work, timeout)


async def read_body(request: Request, limit: int, timeout: float | None) -> bytes:
    """The request's body: at most ``limit`` bytes (413), within ``timeout`` seconds (408); a client that
    leaves meanwhile is a 499."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {declared} bytes, over the payload limit of {limit}", "PayloadTooLarge")
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise RequestError(413, f"the body is over the payload limit of {limit} bytes", "PayloadTooLarge")

    try:
        await _within(receive(), None if _arrived(request) or not timeout or timeout <= 0 else timeout)
    except (TimeoutError, asyncio.TimeoutError):
        _log(
            "body_timeout",
            "%s sent %d bytes of a body in %g s (--body-timeout): 408",
            _peer(request),
            len(body),
            timeout,
        )
        raise RequestError(
            408,
            f"the request body did not arrive within {timeout:g} s (--body-timeout); {len(body)} bytes came",
            "Timeout",
        ) from None
    except ClientDisconnect:
        raise client_left(request, f"after sending {len(body)} bytes of its body") from None
    return bytes(body)


def _arrived(request: Request) -> bool:
    """Whether uvicorn already holds the whole body (its request cycle's ``more_body`` is false: the usual case of
    a small body that came with its head), so that reading it cannot wait and needs no deadline (a timer less
    per request). Elsewhere (another server, a body still arriving): False."""
    cycle = getattr(request.receive, "__self__", None)
    return cycle is not None and getattr(cycle, "more_body", True) is False


def client_left(request: Request, when: str) -> RequestError:
    """The 499 for a client that closed its connection ``when``: logged at INFO (one line), never a 500."""
    _log("client_left", "%s left %s to %s: 499", _peer(request), when, request.url.path)
    return RequestError(499, "the client closed the connection", "Cancelled")


async def read_json(request: Request, limit: int, timeout: float | None = None) -> dict[str, Any]:
    """The request's JSON object, read (see :func:`read_body`) and parsed once; later calls return it."""
    parsed = request.scope.get(_PARSED)
    if parsed is not None:
        return parsed
    _check_content_type(request)
    body = await read_body(request, limit, timeout)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(422, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(data).__name__}")
    request.scope[_PARSED] = data
    return data


def check_sizes(items: list[Any], max_chars: int, key: str = "inputs") -> None:
    """413 for a text (or either text of a pair) over ``max_chars`` characters."""
    for i, item in enumerate(items):
        longest = len(item) if isinstance(item, str) else max(map(len, item))
        if longest > max_chars:
            raise RequestError(
                413,
                f"'{key}[{i}]' has {longest} characters, over this server's --max-input-chars of {max_chars}",
                "Validation",
                key,
            )
