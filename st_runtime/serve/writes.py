"""How st-serve's responses are written: what ``guard_send`` puts under each request/response cycle of uvicorn's
httptools protocol (st_runtime.serve.limits calls it for each request).

* One write per small response: uvicorn writes a response's head (at ``http.response.start``) and its body (at
  ``http.response.body``) in two ``transport.write`` calls, so each response cost two ``send`` calls and two
  TCP segments, and the client was woken twice. :class:`HeldHead` holds the head until the body's first write
  and sends both together.
* Close after an unread body: a response that starts before the request's body was read whole ends the
  connection, with a lingering close (:class:`LingeringClose`; the client is likely still sending).
"""

from __future__ import annotations

from typing import Any

# a body at least this large goes in a write of its own (joining would copy it; the second send is cheap then)
JOIN_BELOW = 65536


class HeldHead:
    """The transport as a request/response cycle sees it, holding the first write (the response head) until the
    next (the body's first chunk): both go out in one write. ``flush()`` writes a head still held and returns the
    transport beneath; ``close()`` and ``write_eof()`` flush first. Everything else is the transport's."""

    def __init__(self, transport: Any):
        self._transport = transport
        self._head: bytes | None = None
        self._holding = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        if self._holding:
            if self._head is None:
                self._head = bytes(data)
                return
            head, self._head, self._holding = self._head, None, False
            if len(data) < JOIN_BELOW:
                self._transport.write(head + bytes(data))
                return
            self._transport.write(head)
        self._transport.write(data)

    def flush(self) -> Any:
        self._holding = False
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():  # the client left before the body was sent: nothing to send
                self._transport.write(head)
        return self._transport

    def close(self) -> None:
        self.flush().close()

    def write_eof(self) -> None:
        self.flush().write_eof()


def guard_send(cycle: Any, protocol: Any) -> None:
    """A response that starts before the request's body was read whole ends the connection, with a lingering
    close (the client is likely still sending). And its head goes out with its body, in one write (writes.py)."""
    send = cycle.send

    async def guarded_send(message: Any, cycle: Any = cycle, send: Any = send) -> None:
        start = message["type"] == "http.response.start"
        if start and cycle.more_body:
            cycle.keep_alive = False
            cycle.transport = LingeringClose(cycle.transport, protocol)
        if start and cycle.scope["method"] != "HEAD":  # a HEAD response has no body write to join
            cycle.transport = HeldHead(cycle.transport)
        await send(message)
        if not start and isinstance(cycle.transport, HeldHead):
            cycle.transport = cycle.transport.flush()

    cycle.send = guarded_send


class LingeringClose:
    """The transport as a request/response cycle sees it, with close() made a lingering close."""

    def __init__(self, transport: Any, protocol: Any):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._linger()
