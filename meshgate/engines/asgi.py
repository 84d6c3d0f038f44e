"""Minimal raw-ASGI helpers for the Python workers: bounded JSON bodies and OpenAI error envelopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


class HTTPError(Exception):
    """An error a client should see, rendered as the OpenAI error envelope."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


async def send_json(send: Send, status: int, payload: Any) -> None:
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_json(receive: Receive, limit: int) -> Any:
    """The request body parsed as JSON; 413 past `limit` bytes, 400 if it is not JSON."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
        more = message.get("more_body", False)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise HTTPError(400, "request body is not valid JSON", code="invalid_json") from None
