"""The HTTP edge: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds neither the size of a request head nor the time it may take to arrive,
and its `limit_concurrency` counts idle connections too and answers every request on
every connection with a plain-text 503 once reached. This protocol (one object per
connection, passed to uvicorn as `http=`) adds:

- a head (request line + headers) larger than `max_head_bytes` gets 431 and a close,
  with at most one socket read (≤256 KiB) beyond the limit ever buffered;
- a head not complete `head_timeout` seconds after the connection opened or the head
  began closes the connection (slowloris, idle sockets that never send a request);
- a body not complete `body_timeout` seconds after its head gets 408 (if no answer has
  started) and a close;
- at most `max_connections` connections are served. At the bound a new connection takes
  the place of the oldest idle one (no request in progress: waiting for a head or for
  the next keep-alive request; nginx does the same), so idle sockets can never lock
  valid clients out. Only when every connection has a request in progress does a new
  request get 503, and existing connections carry on.

Errors are the OpenAI envelope with an `x-request-id` like every other answer (the
client's own, where its head was read, else a new one) and a log line naming it (debug
for 503s, which come in floods). Per request only `data_received` runs: a few attribute
checks on uvicorn's own parser state (~0.3 µs); timers are armed only for heads and
bodies that do not arrive within one read, and the bookkeeping of the bound runs once
per connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshgate.protocol.errors import error_body
from meshgate.server.http import Receive, Scope, Send, header
from meshgate.server.logs import client_request_id, new_request_id

log = logging.getLogger("meshgate.edge")

_FD_RESERVE = 80  # descriptors besides connections: database, logs, local workers' pipes, waiting sockets
# After a 431 the rest of what the client is sending is read and dropped for a moment
# (nginx's lingering close): closing with unread data would reset the connection, and
# the client would never see the answer.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024
_EVICTION_LOOKS = 64  # connections looked at to find an idle one to close; O(1) per new connection


@dataclass(slots=True, eq=False)
class EdgeLimits:
    """The limits, and the connection bookkeeping all connections of one server share."""

    max_head_bytes: int = 64 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 4096
    admitted: int = 0  # connections being served (idle or busy)
    # The admitted connections, roughly oldest first: where an idle one to evict is looked for.
    open: OrderedDict[EdgeProtocol, None] = field(default_factory=OrderedDict)
    # Connections beyond the bound, waiting for their head to be answered with 503.
    waiting: OrderedDict[EdgeProtocol, None] = field(default_factory=OrderedDict)

    @property
    def max_waiting(self) -> int:
        return max(16, self.max_connections // 4)


def connection_bound(configured: int) -> int:
    """`configured`, or less if the open-file limit cannot be raised to serve that many.

    Each connection may hold two descriptors (the client's and an engine's), plus one for
    each of a quarter as many waiting ones; the soft limit is raised towards the hard one
    as far as that needs (child processes inherit it, which is harmless).
    """
    needed = configured * 9 // 4 + _FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return configured
    bound = max(1, (soft - _FD_RESERVE) * 4 // 9)
    log.warning(
        "serving at most %d connections: the open-file limit is %d (`ulimit -n`; MESHGATE_MAX_CONNECTIONS=%d needs %d)",
        bound,
        soft,
        configured,
        needed,
    )
    return bound


@dataclass(frozen=True, slots=True)
class RawError:
    """An error answer written straight to the socket (no ASGI cycle to answer it), built once."""

    status: int
    head: bytes  # the status line and headers but the request id, each ending in CRLF
    body: bytes

    @classmethod
    def of(cls, status: int, reason: str, message: str, type: str, code: str) -> RawError:
        body = error_body(message, type, code)
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        )
        return cls(status, head.encode("ascii"), body)

    def answer(self, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """The bytes to send, with the client's `x-request-id` if its head was read, else a new one."""
        sent = next((value for name, value in headers if name == b"x-request-id"), None)
        request_id = client_request_id(sent) or new_request_id()
        log.info("refused at the edge with %d", self.status, extra={"request_id": request_id})
        return b"%sx-request-id: %s\r\n\r\n%s" % (self.head, request_id.encode(), self.body)


_OVER_CAPACITY_BODY = error_body(
    "the gateway is serving as many connections as it may; please retry", "server_error", "server_overloaded"
)
_OVER_CAPACITY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_OVER_CAPACITY_BODY)).encode()),
    (b"connection", b"close"),
    (b"retry-after", b"1"),
]


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    request_id = client_request_id(header(scope, b"x-request-id")) or new_request_id()
    # debug: at the bound these come in floods, and logging each would cost the most then
    log.debug("refused at the edge with 503", extra={"request_id": request_id})
    headers = [*_OVER_CAPACITY_HEADERS, (b"x-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _OVER_CAPACITY_BODY})


class EdgeProtocol(HttpToolsProtocol):
    """One connection. Only `data_received` runs per request; the rest runs per connection."""

    # Slots, not the instance dict: uvicorn's protocol already has ~28 attributes, and
    # past 30 CPython stops sharing the dict's keys, which slows every attribute access
    # in uvicorn's own per-request code (measured: ~1.5 µs a request).
    __slots__ = ("_admitted", "_deadline", "_deadline_is_body", "_head_bytes", "_linger", "_serve")

    limits: ClassVar[EdgeLimits]
    _too_large: ClassVar[RawError]
    _too_slow: ClassVar[RawError]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admitted = False
        self._head_bytes = 0  # of the head being received
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_is_body = False
        self._linger = -1  # bytes still to drop after a refusal; -1: not refused
        self._serve = self.app

    # ---------------------------------------------------------------- connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._admit():
            self._wait()
        self._arm(self.limits.head_timeout, body=False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._disarm()
        limits = self.limits
        if self._admitted:
            self._admitted = False
            limits.admitted -= 1
            limits.open.pop(self, None)
        else:
            limits.waiting.pop(self, None)

    def _admit(self) -> bool:
        """Serve this connection if the bound allows, making room by closing an idle one."""
        limits = self.limits
        if limits.admitted >= limits.max_connections and not self._evict_one():
            return False
        limits.admitted += 1
        limits.open[self] = None
        self._admitted = True
        return True

    def _evict_one(self) -> bool:
        """Close the oldest connection with no request in progress, looking at a bounded number.

        Busy ones looked at move to the back, so repeated looks do not see them again soon.
        """
        open_ = self.limits.open
        for _ in range(min(_EVICTION_LOOKS, len(open_))):
            oldest, _ = open_.popitem(last=False)
            cycle = oldest.cycle
            if cycle is None or cycle.response_complete:
                oldest._admitted = False
                self.limits.admitted -= 1
                oldest.transport.close()
                return True
            open_[oldest] = None
        return False

    def _wait(self) -> None:
        """Over the bound: the request this connection sends is admitted then, or gets 503."""
        waiting = self.limits.waiting
        if len(waiting) >= self.limits.max_waiting:
            waiting.popitem(last=False)[0].transport.close()
        waiting[self] = None
        self.app = self._admit_or_refuse

    async def _admit_or_refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits.waiting.pop(self, None)
        if self._admit():
            self.app = self._serve
            await self._serve(scope, receive, send)
        else:
            await _over_capacity(scope, receive, send)

    # ---------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        if self._linger >= 0:
            self._linger -= len(data)
            if self._linger < 0:
                self.transport.close()
            return
        scope, cycle = self.scope, self.cycle
        body_was_pending = cycle is not None and cycle.more_body
        HttpToolsProtocol.data_received(self, data)
        # uvicorn's own state tells where the parser is: a head in progress has a scope
        # without a method yet; a body in progress has a cycle that wants more.
        head, cycle_now = self.scope, self.cycle
        if head is not None and "method" not in head:
            if head is scope:
                self._head_bytes += len(data)
            else:  # it began in this read, all of which is its own unless a request ended in it too
                self._head_bytes = 0 if cycle_now is not cycle or body_was_pending else len(data)
            if self.transport.is_closing():
                return
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(self._too_large)
            elif self._deadline is None or self._deadline_is_body:
                self._arm(self.limits.head_timeout, body=False)
        elif cycle_now is not None and cycle_now.more_body:
            if not self._deadline_is_body:
                self._arm(self.limits.body_timeout, body=True)
        elif cycle_now is not None and not cycle_now.response_complete:
            if self._deadline is not None:  # the request is all here; the handler's own timeouts apply
                self._disarm()
        elif self._deadline is None and self.timeout_keep_alive_task is None:
            # Between requests, bytes that began none (blank lines) cancelled uvicorn's keep-alive timer.
            self._arm(self.limits.head_timeout, body=False)

    # ---------------------------------------------------------------- limits

    def _arm(self, seconds: float, *, body: bool) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._body_timed_out if body else self.transport.close)
        self._deadline_is_body = body

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_is_body = False

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_started:
                self.transport.write(self._too_slow.answer(self.scope.get("headers", ()) if self.scope else ()))
            # The handler waiting for the body learns it will not come (http.disconnect).
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _refuse(self, response: RawError) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # never in the middle of another answer (pipelining)
            return
        self.transport.write(response.answer())  # a head too large was never parsed
        self.transport.write_eof()
        self._linger = _LINGER_BYTES
        self._deadline = self.loop.call_later(_LINGER_SECONDS, self.transport.close)


def protocol_class(edge_limits: EdgeLimits) -> type[EdgeProtocol]:
    """An `EdgeProtocol` bound to one server's limits, for `uvicorn.run(http=...)`."""

    class BoundEdgeProtocol(EdgeProtocol):
        limits = edge_limits
        _too_large = RawError.of(
            431,
            "Request Header Fields Too Large",
            f"the request line and headers are larger than the limit of {edge_limits.max_head_bytes} bytes",
            "invalid_request_error",
            "request_header_too_large",
        )
        _too_slow = RawError.of(
            408,
            "Request Timeout",
            f"the request body did not arrive within {edge_limits.body_timeout:g} seconds",
            "invalid_request_error",
            "request_timeout",
        )

    return BoundEdgeProtocol
