"""The lean upstream HTTP client against raw sockets: framing, keep-alive, aborts, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshgate.catalog.spec import UpstreamSpec
from meshgate.workers.http_client import (
    HttpClient,
    Origin,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamTimeout,
)
from meshgate.workers.pool import NoReplicaAvailable, Replica, ReplicaSet

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def serve(handler: Handler) -> AsyncIterator[tuple[Origin, list[int]]]:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Origin("127.0.0.1", port, "/v1"), connections
    finally:
        server.close()


@pytest.fixture
async def keepalive_server() -> AsyncIterator[tuple[Origin, list[int]]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            assert head.startswith(b"POST /v1/echo HTTP/1.1\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async for served in serve(handler):
        yield served


async def test_content_length_and_keep_alive_reuse(keepalive_server: tuple[Origin, list[int]]) -> None:
    origin, connections = keepalive_server
    client = HttpClient()
    for i in range(5):
        response = await client.request(b"POST", origin, b"/echo", b"hello %d" % i)
        assert response.status == 200
        assert await response.read() == b"hello %d" % i
        response.close()
    assert len(connections) == 1  # one pooled connection carried all five
    await client.aclose()


async def test_chunked_body_arrives_piece_by_piece() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Test: yes\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()

    async for origin, _ in serve(handler):
        client = HttpClient()
        response = await client.request(b"POST", origin, b"/x", b"{}")
        assert response.header(b"x-test") == b"yes"
        assert await response.next_chunk(5) == b"first"  # before the rest was even written
        release.set()
        assert await response.next_chunk(5) == b"second"
        assert await response.next_chunk(5) is None
        response.close()
        await client.aclose()


async def test_abort_closes_the_connection_so_the_server_sees_it() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        assert await reader.read() == b""  # EOF: the client went away
        closed.set()

    async for origin, _ in serve(handler):
        client = HttpClient()
        response = await client.request(b"POST", origin, b"/x", b"{}")
        assert await response.next_chunk(5) == b"a"
        response.close()
        await asyncio.wait_for(closed.wait(), 5)


async def test_waiting_reader_is_woken_by_an_abort() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async for origin, _ in serve(handler):
        client = HttpClient()
        response = await client.request(b"POST", origin, b"/x", b"{}")
        pending = asyncio.ensure_future(response.next_chunk(30))
        await asyncio.sleep(0.05)
        response.close()
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(pending, 2)


async def test_server_closing_mid_body_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async for origin, _ in serve(handler):
        client = HttpClient()
        response = await client.request(b"POST", origin, b"/x", b"{}")
        with pytest.raises(UpstreamClosed):
            await response.read(5)


async def test_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close the kept-alive connection, as servers do after their idle timeout

    async for origin, connections in serve(handler):
        client = HttpClient()
        for _ in range(3):
            response = await client.request(b"POST", origin, b"/x", b"{}")
            assert await response.read(5) == b"ok"
            response.close()
            await asyncio.sleep(0.05)
        assert len(connections) == 3


async def test_headers_timeout_and_connect_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async for origin, _ in serve(handler):
        client = HttpClient(response_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await client.request(b"POST", origin, b"/x", b"{}")
    with pytest.raises(UpstreamConnectError):
        await HttpClient().request(b"POST", Origin("127.0.0.1", 9, "/v1"), b"/x", b"{}")


async def test_replica_set_fails_over_and_spreads_load(keepalive_server: tuple[Origin, list[int]]) -> None:
    origin, _ = keepalive_server
    dead = Replica(UpstreamSpec(url="http://127.0.0.1:9/v1", model="m"))
    alive = Replica(UpstreamSpec(url=f"http://127.0.0.1:{origin.port}/v1", model="m"))
    replicas = ReplicaSet([dead, alive])
    client = HttpClient()
    # whichever is tried first, the request lands on the live replica
    for _ in range(4):
        replica, response = await replicas.send(client, b"/echo", lambda r: b"x")
        assert replica is alive and await response.read(5) == b"x"
        response.close()
        replicas.done(replica)
    assert dead.failures >= 1 and alive.in_flight == 0
    with pytest.raises(NoReplicaAvailable):
        await ReplicaSet([Replica(UpstreamSpec(url="http://127.0.0.1:9/v1", model="m"))]).send(
            client, b"/echo", lambda r: b"x"
        )


def test_least_outstanding_requests_wins() -> None:
    a, b, c = (Replica(UpstreamSpec(url=f"http://127.0.0.1:{p}/v1", model="m")) for p in (1, 2, 3))
    replicas = ReplicaSet([a, b, c])
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert replicas.pick() is b
    b.healthy = False  # a supervisor said it is down
    assert replicas.pick() is c
    assert replicas.pick(exclude={c}) is a
