# mypy: disable-error-code="attr-defined,misc"
# (the mixins below take their attributes from uvicorn's HttpToolsProtocol, which mypy cannot see through them)
"""Connection limits of st-serve: what a client that misbehaves on purpose can hold, and for how long.

uvicorn times out only idle keep-alive connections (``timeout_keep_alive``, after a response), and its
httptools parser takes request heads of any size. :class:`GuardedHttpToolsProtocol` (uvicorn's httptools
protocol with a few more timers and counters) adds, per connection:

* a **head timeout**: from the connection's opening, or from the first byte of a request's head, the head
  must be complete within ``header_timeout`` seconds; otherwise the connection is closed (with 408 when some
  of a head had arrived). This closes connections that never send anything and "slowloris" clients that
  trickle a head a byte at a time;
* a **head size limit**: a request line and headers over ``max_header_bytes`` get 431 and the connection is
  closed (also while the head is still arriving, so no unbounded head is buffered);
* a **write timeout**: a client that reads nothing of its response for ``write_timeout`` seconds (the
  transport's buffer stays full) is dropped;
* **close after an unread body**: a response sent before the request's body was read whole (413 from the
  declared length, 408, 401, ...) closes the connection, so the rest of the body is never parsed
  (``st_runtime.serve.writes``, which also sends each response's head and body in one write);
* a **connection cap**: past ``max_connections`` open connections, a new connection closes an idle one (no
  request being handled): one that never completed a request (nothing sent yet, or a head still arriving)
  if there is one, else the keep-alive connection idle for longest. So idle connections can never keep the
  server from answering, ``/health`` included, and clients that were served keep their connections longest;
  only when every connection has a request in flight is the new one refused (503, ``Retry-After``).

The body timeout (``body_timeout``, 408) is the ASGI app's (``st_runtime.serve.guards``): a request takes its
``--max-concurrent-requests`` slot only once its body has arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .writes import guard_send

logger = logging.getLogger("st_runtime.serve")
LINGER_S = 2.0  # after a reply to a client that may still be sending, what it sends is read and dropped this long


@dataclass(frozen=True)
class Limits:
    """What ``st-serve --help`` lists under these names (seconds and bytes)."""

    body_timeout: float = 30.0  # to receive a request's body, once its head is complete (408)
    header_timeout: float = 10.0  # to receive a request's head, from the connection's opening or its first byte
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this (uvicorn's)
    max_header_bytes: int = 16384  # request line and headers (431)
    max_connections: int = 1024  # open connections; past it the longest idle one is closed
    write_timeout: float = 30.0  # a client that reads none of its response for this long is dropped
    max_input_chars: int = 1_000_000  # characters per input text (413)


class Throttled:
    """Logs one line per reason and second at most, with the count of the lines it held back."""

    def __init__(self, level: int = logging.INFO):
        self.level = level
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, reason: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < 1.0:
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        held = self._held.pop(reason, 0)
        self._last[reason] = now
        suffix = f" (and {held} more in the last second)" if held else ""
        logger.log(self.level, message + suffix, *args)


_log = Throttled()  # connection events; guards.py has its own for requests


def _reply(status: int, reason: bytes, message: str, extra: bytes = b"") -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n" % (status, reason, len(body), extra) + body
    )


class _HeadTooLarge(Exception):
    pass


def protocol_class(limits: Limits, observe: Callable[[str], None] | None = None) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with ``limits`` applied, or None without httptools (uvicorn's h11
    protocol then applies only ``keep_alive_timeout`` and, through ``h11_max_incomplete_event_size``,
    ``max_header_bytes``). ``observe(reason)`` is called for each connection closed or refused by a limit:
    "head_timeout", "head_too_large", "write_timeout", "evicted", "refused"."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    return type(
        "GuardedHttpToolsProtocol",
        (_Guards, HttpToolsProtocol),
        {"limits": limits, "observe": staticmethod(observe or (lambda _reason: None))},
    )


class _Guards:
    """The limits of the module docstring, mixed into uvicorn's HttpToolsProtocol (which uses its attributes
    ``parser``, ``cycle``, ``connections``, ``transport``, ``flow``, ``url``, ``headers``)."""

    limits: Limits
    observe: Callable[[str], None]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the head being received (an upper bound)
        self._body_bytes = 0  # body bytes the parser passed on during the current data_received
        self._heads_done = 0  # heads completed during the current data_received
        self._idle_since = time.monotonic()
        self._served = 0  # responses completed on this connection
        self._closing = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ state
    def _busy(self) -> bool:
        """A request is being handled (its head arrived, its response is not complete)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def _between_messages(self) -> bool:
        """The next bytes belong to a request head: no request is being handled, or its body has arrived."""
        return not self._busy() or not self.cycle.more_body

    def _close(self, reason: str, reply: bytes = b"") -> None:
        if self._closing:
            return
        self.observe(reason)
        if reply and not self._busy():  # never in the middle of another response
            self.transport.write(reply)
            self._linger()
        else:
            self._closing = True
            self.transport.close()

    def _linger(self) -> None:
        """Close after a reply to a client that may still be sending: stop writing, read and drop what comes for
        up to LINGER_S seconds (so that the reply is not lost to a reset), then close."""
        self._closing = True
        transport = self.transport
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def eof_received(self) -> bool | None:
        if self._linger_timer is not None:  # the client is done: close now
            self._linger_timer.cancel()
            self._linger_timer = None
        return None  # asyncio closes the transport

    # ------------------------------------------------------------------ timers
    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.limits.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._closing or not self._between_messages():
            return
        if self._busy() and not self._head_bytes:  # waiting on our own response, not on the client
            return
        peer = self.client[0] if self.client else "?"
        if self._head_bytes:
            _log(
                "head_timeout",
                "closed a connection from %s: its request head took over %g s",
                peer,
                self.limits.header_timeout,
            )
            message = f"the request head did not arrive within {self.limits.header_timeout:g} s"
            self._close("head_timeout", _reply(408, b"Request Timeout", message))
        else:
            self._close("head_timeout")  # opened, nothing sent: no reply owed

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self._closing and self.flow.write_paused:
            peer = self.client[0] if self.client else "?"
            _log("write_timeout", "dropped %s: it read none of its response for %g s", peer, self.limits.write_timeout)
            self._closing = True
            self.observe("write_timeout")
            self.transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()
        self._make_room()

    def connection_lost(self, exc) -> None:
        self._disarm_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._closing = True
        super().connection_lost(exc)

    def _make_room(self) -> None:
        """Past max_connections: close the connection idle for longest, or refuse this one."""
        if len(self.connections) <= self.limits.max_connections:
            return
        open_ = [c for c in self.connections if isinstance(c, _Guards) and not c._closing]
        if len(open_) <= self.limits.max_connections:
            return
        idle = [c for c in open_ if c is not self and not c._busy()]
        if idle:  # first those that never completed a request, then the keep-alive ones, longest idle first
            victim = min(idle, key=lambda c: (c._served > 0, c._idle_since))
            _log("evicted", "%d connections open (--max-connections): closed the one idle longest", len(open_))
            victim._close("evicted")
            return
        _log("refused", "%d connections open, each with a request in flight: refused a new one", len(open_))
        message = f"the server has {len(open_) - 1} connections with requests in flight; retry shortly"
        self._close("refused", _reply(503, b"Service Unavailable", message, b"retry-after: 1\r\n"))

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._body_bytes = self._heads_done = 0
        in_head = self._between_messages()
        if in_head:
            self._arm_head_timer()
        if not self._feed(data):
            return
        if self._heads_done:
            self._head_bytes = 0  # what follows the head in this chunk is its body or the next head
        elif in_head and not self._closing:
            self._head_bytes += len(data) - self._body_bytes
            if self._head_bytes > self.limits.max_header_bytes:
                self._too_large()

    def _feed(self, data: bytes) -> bool:
        """uvicorn's data_received, with a head over the limit answered 431 (False: the connection is closing)."""
        import httptools

        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._too_large()
            else:
                self._bad_request()
            return False
        except httptools.HttpParserError:
            self._bad_request()
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return True

    def _bad_request(self) -> None:
        peer = self.client[0] if self.client else "?"
        _log("bad_request", "invalid HTTP request from %s", peer)
        self._closing = True
        self.send_400_response("Invalid HTTP request received.")

    def _too_large(self) -> None:
        peer = self.client[0] if self.client else "?"
        limit = self.limits.max_header_bytes
        _log("head_too_large", "refused a request head over %d bytes from %s", limit, peer)
        message = f"the request line and headers are over {limit} bytes"
        self._close("head_too_large", _reply(431, b"Request Header Fields Too Large", message))

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None and self.limits.write_timeout > 0:
            self._write_timer = self.loop.call_later(self.limits.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # ------------------------------------------------------------------ parser callbacks
    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            raise _HeadTooLarge
        previous = self.cycle
        super().on_headers_complete()
        self._heads_done += 1
        self._head_bytes = 0
        self._disarm_head_timer()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:
            guard_send(cycle, self)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        self._served += 1
        super().on_response_complete()


# ---------------------------------------------------------------------------------------------- uvicorn
def uvicorn_settings(limits: Limits, observe: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits``."""
    protocol = protocol_class(limits, observe)
    return {
        "http": protocol if protocol is not None else "h11",
        "ws": "none",
        "timeout_keep_alive": limits.keep_alive_timeout,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }


def steady_memory(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (its default start), so that large allocations (request
    bodies and texts of megabytes) always get their own mappings and go back to the system when freed. Without
    it glibc raises the threshold after the first such free, later ones stay in the heap, and resident memory
    ratchets under large bodies (benchmarks/soak.py shows it; docs/speed.md has the figures).
    False where this is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def ensure_file_descriptors(max_connections: int, spare: int = 128) -> int:
    """Raise the soft RLIMIT_NOFILE (within the hard limit) so ``max_connections`` sockets and ``spare`` other
    files fit; returns the number of connections that fit (``max_connections`` unless the hard limit is lower)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + spare
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - spare))
