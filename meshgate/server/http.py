"""Raw ASGI plumbing for the hot path: reading bodies, sending JSON and errors.

The OpenAI endpoints are served straight from ASGI messages rather than through a web
framework: on a gateway whose whole job is to add nothing, a framework's per-request
routing, request objects and validation layers would be most of the cost.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from meshgate.protocol.errors import ApiError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 as soon as it is known to be larger than `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than the limit of {limit} bytes", code="request_too_large")
    message = await receive()
    if message["type"] == "http.disconnect":  # gone, or timed out at the edge (server/edge.py)
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than the limit of {limit} bytes", code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)


MAX_JSON_DEPTH = 64  # far beyond any real request; orjson cannot even write back more than 254


def parse_json(body: bytes) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    # A body must be at least 2 bytes per level to be this deep: short ones need no look.
    if len(body) > 2 * MAX_JSON_DEPTH and _too_deep(value, body):
        raise ApiError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return value


def _too_deep(value: Any, body: bytes) -> bool:
    """Whether `value` nests lists and objects more than MAX_JSON_DEPTH deep.

    Walking the containers costs ~50-100 ns per element and nothing per byte of a string, so
    it is the cheap way for chat (a long prompt: microseconds). Element-dense bodies
    (token ids, numbers, big schemas) exhaust a budget of 128 elements plus one per 64
    bytes and are settled by orjson instead: encoding inside a shell of lists fails
    exactly when the body is too deep, at ~7 µs plus 1-2 ns per byte.
    """
    budget = 128 + (len(body) >> 6)
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) is dict or type(value) is list else []
    while stack:
        node, depth = stack.pop()
        children = node.values() if type(node) is dict else node
        budget -= len(children)
        if budget < 0:
            return _too_deep_to_encode(value)
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


_ORJSON_MAX_DEPTH = 254  # the deepest nesting orjson.dumps writes
_shells = threading.local()


def _too_deep_to_encode(value: Any) -> bool:
    hole: list[Any] | None = getattr(_shells, "hole", None)
    if hole is None:  # once per thread: nested lists leaving MAX_JSON_DEPTH levels for the value
        hole = [None]
        shell = hole
        for _ in range(_ORJSON_MAX_DEPTH - MAX_JSON_DEPTH - 1):
            shell = [shell]
        _shells.hole, _shells.shell = hole, shell
    hole[0] = value
    try:
        orjson.dumps(_shells.shell)
    except orjson.JSONEncodeError:
        return True
    finally:
        hole[0] = None
    return False


class ClientGone(Exception):
    """The client hung up before the gateway could answer."""


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, extra: Headers | None = None) -> None:
    headers = JSON_HEADERS + extra if extra else JSON_HEADERS
    await send_bytes(send, status, orjson.dumps(payload), headers)


async def send_error(send: Send, error: ApiError) -> None:
    await send_bytes(send, error.status, error.body(), JSON_HEADERS + error.headers)


async def send_plain_error(send: Send, status: int, message: str, type: str, code: str | None = None) -> None:
    await send_bytes(send, status, error_body(message, type, code), JSON_HEADERS)
