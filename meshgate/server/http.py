"""Raw ASGI plumbing for the hot path: reading bodies, sending JSON and errors.

The OpenAI endpoints are served straight from ASGI messages rather than through a web
framework: on a gateway whose whole job is to add nothing, a framework's per-request
routing, request objects and validation layers would be most of the cost.
"""

from __future__ import annotations

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


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


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
