"""A lean pooled HTTP/1.1 client for talking to upstream engines.

Why not aiohttp/httpx: on the gateway's hot path they cost 100–300 µs of CPU per
request; this client is an asyncio Protocol over httptools' C parser with keep-alive
pools per origin, and costs a fraction of that. It does exactly what the gateway
needs: send one request with a ready body, get status + headers, then the body either
whole or chunk by chunk as it arrives (chunked transfer decoded), and abort a request
by closing its connection so the engine sees the client go away and stops generating.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_MAX_BUFFERED = 1 << 20  # pause reading from the upstream beyond this many unread bytes


class UpstreamError(Exception):
    """Base of the errors the client raises."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made: nothing was sent, so another replica may be tried."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamClosed(UpstreamError):
    """The connection ended before the response was complete."""


class UpstreamTooLarge(UpstreamError):
    """The answer is larger than the caller's limit (the connection is dropped, not drained)."""


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    base_path: str  # e.g. "/v1", no trailing slash

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// upstreams are supported, got {url!r}")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"))


class UpstreamResponse:
    """Status and headers of an upstream response; its body is read with `read()` or `async for`."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_waiter", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # -- fed by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the caller
    async def next_chunk(self, timeout: float) -> bytes | None:
        """The body received since the last call (waiting for some if there is none), or None at its end."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            await self._conn.wait(self, timeout)
        chunks = self._chunks
        # Everything that has arrived goes on at once: a chunked body comes in one piece per
        # chunk (an SSE event each), and one write per piece would cost a syscall per event.
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._conn.consumed(len(data))
        return data

    async def read(self, timeout: float = 600.0, limit: int | None = None) -> bytes:
        """The whole body within `timeout` seconds in all (a trickle cannot stretch it), at most `limit` bytes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        parts = []
        size = 0
        while (chunk := await self.next_chunk(max(deadline - loop.time(), 0.0))) is not None:
            size += len(chunk)
            if limit is not None and size > limit:
                raise UpstreamTooLarge(f"the upstream's answer is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self, timeout: float = 600.0) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk(timeout)) is not None:
            yield chunk

    def close(self) -> None:
        """Give the connection back to the pool if the body was read, else abort the request.

        Aborting closes the connection: the engine sees its client go away and stops generating.
        """
        if not self._done:
            self._finish(UpstreamClosed("request aborted by the gateway"))
        self._conn.release(self)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._headers_waiter: asyncio.Future[None] | None = None
        self._got_bytes = False
        self._buffered = 0
        self._paused = False
        self.closed = False
        self.keep_alive = True

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"malformed response from upstream: {exc}"))
            self._abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._response is not None and not self._response._done:
            self._fail(UpstreamClosed("upstream closed the connection mid-response"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            self._response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._response is not None:
            self._response.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._buffered += len(body)
            if self._buffered > _MAX_BUFFERED and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None:
            self._response._finish()

    # -- used by the pool and the response
    def _fail(self, error: BaseException) -> None:
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self._response is not None and not self._response._done:
            self._response._finish(error)

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def send(self, head: bytes, body: bytes, timeout: float) -> UpstreamResponse:
        assert self.transport is not None
        response = UpstreamResponse(self)
        self._response = response
        self._got_bytes = False
        self._buffered = 0
        waiter = self._loop.create_future()
        self._headers_waiter = waiter
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        try:
            await self._await(waiter, timeout, "upstream sent no response headers in time")
        finally:
            self._headers_waiter = None
        return response

    async def wait(self, response: UpstreamResponse, timeout: float) -> None:
        waiter = self._loop.create_future()
        response._waiter = waiter
        try:
            await self._await(waiter, timeout, "upstream stalled mid-response")
        finally:
            response._waiter = None

    async def _await(self, waiter: asyncio.Future[None], timeout: float, message: str) -> None:
        """Wait for `waiter`; a timeout or a cancellation aborts the connection (the engine sees it)."""
        timer = self._loop.call_later(timeout, _expire, waiter, message)
        try:
            await waiter
        except BaseException:
            self._abort()
            raise
        finally:
            timer.cancel()

    def consumed(self, size: int) -> None:
        self._buffered -= size
        if self._paused and self._buffered < _MAX_BUFFERED // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def release(self, response: UpstreamResponse) -> None:
        if self._response is not response:
            return
        self._response = None
        if response._error is None and self.keep_alive and not self.closed:
            self._pool.put_back(self)
        else:
            self._abort()


def _expire(waiter: asyncio.Future[None], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(message))


class _OriginPool:
    def __init__(self, origin: Origin, max_idle: int) -> None:
        self.origin = origin
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        host = origin.host.encode()
        self.host_header = host if origin.port == 80 else host + b":" + str(origin.port).encode()

    async def connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.origin.host, self.origin.port),
                timeout,
            )
        except (TimeoutError, OSError) as exc:
            raise UpstreamConnectError(f"cannot connect to upstream {self.origin.host}:{self.origin.port}") from exc
        return conn

    def put_back(self, conn: _Connection) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn._abort()

    def forget(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)


class HttpClient:
    """Keep-alive connection pools per upstream origin."""

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 512,
        connect_timeout: float = 5.0,
        response_timeout: float = 600.0,
    ) -> None:
        self._pools: dict[Origin, _OriginPool] = {}
        self.max_idle = max_idle_per_origin
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout

    def _pool(self, origin: Origin) -> _OriginPool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _OriginPool(origin, self.max_idle)
        return pool

    async def request(
        self,
        method: bytes,
        origin: Origin,
        path: bytes,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | tuple[()] = (),
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request; returns once the status line and headers are in (within `timeout` seconds).

        The caller must `close()` the response (after reading it or to abort it).
        """
        timeout = self.response_timeout if timeout is None else timeout
        pool = self._pool(origin)
        head = b"".join(
            (
                method,
                b" ",
                origin.base_path.encode(),
                path,
                b" HTTP/1.1\r\nHost: ",
                pool.host_header,
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                *(b"%s: %s\r\n" % pair for pair in headers),
                b"\r\n",
            )
        )
        while pool.idle:
            conn = pool.idle.pop()
            if conn.closed:
                continue
            try:
                return await conn.send(head, body, timeout)
            except UpstreamClosed:
                # A kept-alive connection the upstream had already closed: nothing was
                # processed, so a fresh connection may carry the request.
                if conn._got_bytes:
                    raise
        conn = await pool.connect(self.connect_timeout)
        try:
            return await conn.send(head, body, timeout)
        except UpstreamClosed as exc:
            if conn._got_bytes:
                raise
            # Accepted, then closed without a byte: an engine dying or restarting. Nothing was
            # answered, so the request may go to another replica, like a refused connection.
            raise UpstreamConnectError(
                f"upstream {origin.host}:{origin.port} closed the connection unanswered"
            ) from exc

    async def aclose(self) -> None:
        for pool in self._pools.values():
            for conn in pool.idle:
                conn._abort()
            pool.idle.clear()
