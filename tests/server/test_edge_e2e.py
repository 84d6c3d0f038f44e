"""No request can exhaust the gateway: head size, slow heads and bodies, connection bound, memory.

Each test drives a live `meshgate serve` over raw sockets on 127.0.0.1, with small
configured limits, bounded loops and deadlines instead of fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import FakeUpstream, LiveGateway, catalog_for, start_gateway, stop

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def edge(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    env = {
        "MESHGATE_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "MESHGATE_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "MESHGATE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    live = start_gateway(tmp_path_factory.mktemp("edge"), catalog_for(fake_upstream.url), env)
    try:
        yield live, live.new_account("edge")[1]
    finally:
        assert live.process is not None
        stop(live.process)


def connect(live: LiveGateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=10)


def request(
    method: str,
    path: str,
    key: str | None = None,
    body: bytes = b"",
    length: int | None = None,
    close: bool = False,
    request_id: str | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if request_id is not None:
        lines.append(f"X-Request-Id: {request_id}")
    if close:
        lines.append("Connection: close")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if body or length is not None:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long from now that took."""
    start = time.monotonic()
    data = b""
    while True:
        remaining = start + within - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the connection was still open after {within} s (got {data[:200]!r})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def read_response(sock: socket.socket, within: float = 10.0) -> tuple[int, bytes]:
    """One response (Content-Length or chunked), leaving the connection open: (status, body)."""
    deadline = time.monotonic() + within
    data = b""
    while (body := _complete_body(data)) is None:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    return int(data.split(b" ", 2)[1]), body


def _complete_body(data: bytes) -> bytes | None:
    head, found, rest = data.partition(b"\r\n\r\n")
    if not found:
        return None
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
        return rest[:length] if len(rest) >= length else None
    if not rest.endswith(b"0\r\n\r\n"):
        return None
    body = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        if int(size, 16) == 0:
            return body
        body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]


def envelope(response: bytes) -> dict[str, object]:
    body = response.partition(b"\r\n\r\n")[2]
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def request_id_of(response: bytes) -> str:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    ids = [line.split(":", 1)[1].strip() for line in head if line.lower().startswith("x-request-id:")]
    assert len(ids) == 1, head
    return ids[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------ slow and idle connections


@pytest.mark.parametrize("prelude", [b"", b"\r\n"], ids=["nothing", "a blank line"])
def test_silent_connection_is_closed_after_the_head_timeout(edge: tuple[LiveGateway, str], prelude: bytes) -> None:
    with connect(edge[0]) as sock:
        sock.sendall(prelude)
        _, elapsed = until_closed(sock, within=HEAD_TIMEOUT + 3)
    assert elapsed < HEAD_TIMEOUT + 1.5


def test_slowloris_head_is_closed_within_the_head_timeout(edge: tuple[LiveGateway, str]) -> None:
    with connect(edge[0]) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(50):  # one header line every 0.1 s: never a complete head
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1024) == b""
        assert time.monotonic() - start < HEAD_TIMEOUT + 1.5


def test_blank_lines_between_requests_do_not_keep_a_connection_forever(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    with connect(live) as sock:
        sock.sendall(request("GET", "/api/v1/models", key))
        assert read_response(sock)[0] == 200
        sock.sendall(b"\r\n")  # uvicorn's keep-alive timer is cancelled by any byte
        _, elapsed = until_closed(sock, within=HEAD_TIMEOUT + 3)
    assert elapsed < HEAD_TIMEOUT + 1.5


def test_short_body_gets_408_and_close(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    with connect(live) as sock:
        head = request("POST", "/api/v1/chat/completions", key, b'{"model": ', length=1000, request_id="trace-408")
        sock.sendall(head)
        response, elapsed = until_closed(sock, within=BODY_TIMEOUT + 3)
    assert response.startswith(b"HTTP/1.1 408 "), response
    error = envelope(response)
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert request_id_of(response) == "trace-408"  # the client's own, as on every other answer
    assert elapsed < BODY_TIMEOUT + 1.5


def test_a_slow_but_complete_body_is_served(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    body = orjson.dumps({"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    with connect(live) as sock:
        sock.sendall(request("POST", "/api/v1/chat/completions", key, body)[: -len(body) // 2])
        time.sleep(BODY_TIMEOUT / 3)  # the point of the test: a pause shorter than the timeout
        sock.sendall(body[-len(body) // 2 :])
        status, answer = read_response(sock)
    assert status == 200, answer


# ------------------------------------------------------------------ head size and memory


def send_oversized(live: LiveGateway, header: bytes, total: int) -> tuple[bytes, int]:
    """Send a head with a `total`-byte header value; stop when the server answers. (response, bytes sent)"""
    with connect(live) as sock:
        sent = 0
        sock.sendall(b"GET /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header)
        chunk = b"a" * 65536
        try:
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
            else:
                sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response, _ = until_closed(sock, within=10)
    return response, sent


def test_oversized_head_gets_431_before_it_is_all_read(edge: tuple[LiveGateway, str]) -> None:
    response, sent = send_oversized(edge[0], b"Authorization: Bearer mg-", 16 * 1024 * 1024)
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert envelope(response)["code"] == "request_header_too_large"
    assert sent < 8 * 1024 * 1024  # answered long before the 16 MiB were sent
    assert re.fullmatch(r"req-[0-9a-f]{24}", request_id_of(response))  # the head was never parsed: a new id


def test_bad_keys_do_not_grow_memory(edge: tuple[LiveGateway, str]) -> None:
    live, _ = edge
    assert live.process is not None
    before = rss_mib(live.process.pid)
    for i in range(200):  # 1 MiB fake key ids: 431, never parsed or cached
        response, _ = send_oversized(live, f"Authorization: Bearer mg-{i}".encode(), 1024 * 1024)
        assert response.startswith(b"HTTP/1.1 431 ") or response == b"", response[:200]
    with httpx.Client(base_url=live.base_url, timeout=10) as client:
        for i in range(300):  # 30 KiB ids: within the head limit, refused by shape before any lookup
            fake = f"mg-{i}{'a' * 30_000}-{os.urandom(24).hex()}"
            assert client.get("/models", headers={"Authorization": f"Bearer {fake}"}).status_code == 401
        for _ in range(300):  # well-shaped unknown keys: looked up once each, remembered a bounded while
            fake = "mg-" + os.urandom(5).hex().translate(str.maketrans("01", "ab")) + "-" + "x" * 32
            assert client.get("/models", headers={"Authorization": f"Bearer {fake}"}).status_code == 401
    grown = rss_mib(live.process.pid) - before
    assert grown < 50, f"the gateway grew by {grown:.0f} MiB"


# ------------------------------------------------------------------ the connection bound


def test_beyond_the_bound_new_requests_get_503_and_existing_ones_work(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    body = orjson.dumps(
        {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "mock": {"delay_ms": 150}}
    )  # ~2.5 s per answer: every connection has a request in progress meanwhile
    busy = [connect(live) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:
            sock.sendall(request("POST", "/api/v1/chat/completions", key, body))
        deadline = time.monotonic() + 2
        while True:
            with connect(live) as extra:
                extra.sendall(request("GET", "/health", close=True, request_id="trace-503"))
                response, _ = until_closed(extra, within=5)
            if response.startswith(b"HTTP/1.1 503 "):
                break
            assert time.monotonic() < deadline, "no 503 beyond the connection bound"
        error = envelope(response)
        assert error["code"] == "server_overloaded" and error["type"] == "server_error"
        assert request_id_of(response) == "trace-503"
        for sock in busy:
            status, answer = read_response(sock)
            assert status == 200 and orjson.loads(answer)["choices"], answer
    finally:
        for sock in busy:
            sock.close()
    assert httpx.get(live.base_url + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_idle_sockets_make_way_for_valid_requests(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    idle = [connect(live) for _ in range(MAX_CONNECTIONS * 5)]
    try:
        for _ in range(10):  # a 503 here would mean the idle sockets held the bound
            response = httpx.get(live.base_url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert response.status_code == 200, response.text
    finally:
        for sock in idle:
            sock.close()


def test_idle_sockets_cannot_exhaust_file_descriptors(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    live = start_gateway(tmp_path / "fds", catalog_for(fake_upstream.url), max_open_files=256)
    assert live.process is not None
    idle: list[socket.socket] = []
    try:
        key = live.new_account("fds")[1]
        for _ in range(600):  # far more than 256 descriptors; they stay open (head timeout: 10 s)
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", live.port), timeout=5))
        with httpx.Client(base_url=live.base_url, timeout=10) as client:
            for _ in range(20):
                response = client.get("/models", headers={"Authorization": f"Bearer {key}", "Connection": "close"})
                assert response.status_code == 200, response.text
        assert "serving at most" in (live.home / "serve.log").read_text()
    finally:
        for sock in idle:
            sock.close()
        stop(live.process)


# ------------------------------------------------------------------ deep JSON


def test_deeply_nested_json_is_400_without_a_traceback(edge: tuple[LiveGateway, str]) -> None:
    live, key = edge
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    deep = b'{"model": "' + LLAMA.encode() + b'", "messages": [{"role": "user", "content": "hi"}], "mock": '
    deep += b"[" * 300 + b"]" * 300 + b"}"
    for _ in range(3):
        response = httpx.post(live.base_url + "/chat/completions", content=deep, headers=headers, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    fine = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "mock": {"x": [[[[[]]]]]}}
    assert httpx.post(live.base_url + "/chat/completions", json=fine, headers=headers, timeout=30).status_code == 200
    assert "Traceback" not in (live.home / "serve.log").read_text()
