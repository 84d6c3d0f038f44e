"""The ASGI application: a table from (method, path) to handler, error handling, the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meshgate.catalog.spec import ModelSpec
from meshgate.config import Settings
from meshgate.protocol.errors import ApiError
from meshgate.protocol.openapi import DOCUMENT_JSON
from meshgate.server import handlers, workers_api
from meshgate.server.http import (
    JSON_HEADERS,
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    send_bytes,
    send_error,
    send_plain_error,
)
from meshgate.server.logs import CURRENT, RequestMark, client_request_id
from meshgate.server.metrics import CONTENT_TYPE, ENDPOINTS
from meshgate.server.state import Gateway

log = logging.getLogger("meshgate.server")

Handler = Callable[[Gateway, Scope, Receive, Send], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
API_PREFIXES = ("/api/v1", "/v1")  # /api/v1 as IO Intelligence; /v1 for tools that assume OpenAI's layout


def _routes_table() -> dict[tuple[str, str], Handler]:
    table: dict[tuple[str, str], Handler] = {}
    for prefix in API_PREFIXES:
        table[("POST", prefix + "/chat/completions")] = handlers.chat_completions
        table[("POST", prefix + "/completions")] = handlers.completions
        table[("POST", prefix + "/embeddings")] = handlers.embeddings
        table[("GET", prefix + "/models")] = handlers.list_models
        table[("GET", prefix + "/usage")] = handlers.usage_today
    table.update(workers_api.routes())  # workers joining and leaving (worker tokens only)
    return table


class App:
    """The ASGI app. The OpenAI paths are matched first, by one dict lookup."""

    def __init__(self, gateway: Gateway, fallback: ASGIApp | None = None) -> None:
        self.gateway = gateway
        self.fallback = fallback  # the web app: every path outside /api/ and /v1/ that is not ours
        self._table = _routes_table()
        self._known_paths = {path for (_, path) in self._table}
        # The metrics' endpoint label of each path (refusals before serving are counted here).
        self._endpoints = {path: _endpoint(path) for path in self._known_paths}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        mark = RequestMark(client_request_id(header(scope, b"x-request-id")))
        CURRENT.set(mark)  # this request's task: its log lines, and the id in its answer
        send = _with_request_id(send, mark)
        handler = self._table.get((method, path))
        try:
            if handler is not None:
                await handler(self.gateway, scope, receive, send)
                if handler is handlers.list_models or handler is handlers.usage_today:
                    self.gateway.metrics.refused(self._endpoints[path], 200, None)  # (answered: counted alike)
            else:
                await self._other(scope, receive, send, method, path)
        except ApiError as error:
            if handler is not None and not error.counted:
                self.gateway.metrics.refused(self._endpoints[path], error.status, error.quota)
            await send_error(send, error)
        except ClientGone:
            return
        except Exception:
            log.exception("unhandled error on %s %s", method, path)
            # If the response had already started (a stream), the server closes the connection.
            with contextlib.suppress(RuntimeError):
                await send_plain_error(send, 500, "internal error in the gateway", "server_error", "internal_error")

    async def _other(self, scope: Scope, receive: Receive, send: Send, method: str, path: str) -> None:
        for prefix in API_PREFIXES:
            if path.startswith(prefix + "/models/") and method == "GET":
                await handlers.get_model(self.gateway, scope, receive, send, path[len(prefix) + len("/models/") :])
                return
        if path.startswith("/internal/"):  # the worker API: OpenAI error envelopes, never the web app
            if path.startswith(workers_api.PREFIX + "/") and method == "DELETE":
                await workers_api.deregister(self.gateway, scope, receive, send, path[len(workers_api.PREFIX) + 1 :])
                return
            if path in self._known_paths:
                allow = ", ".join(sorted(m for (m, p) in self._table if p == path))
                raise ApiError(
                    405,
                    f"method {method} is not allowed on {path}",
                    code="method_not_allowed",
                    headers=[(b"allow", allow.encode())],
                )
            raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
        if path == "/metrics" and method == "GET":  # Prometheus; open unless MESHGATE_METRICS_TOKEN is set
            metrics = self.gateway.metrics
            if not metrics.authorized(header(scope, b"authorization")):
                raise ApiError(401, "GET /metrics needs the metrics token as a bearer token.", code="invalid_api_key")
            await send_bytes(send, 200, self.gateway.render_metrics(), [(b"content-type", CONTENT_TYPE)])
            return
        if path in ("/health", "/healthz"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if path == "/openapi.json" and method == "GET":  # the API's description: no key needed
            await send_bytes(send, 200, DOCUMENT_JSON, JSON_HEADERS)
            return
        if self.fallback is not None and not path.startswith(("/api/", "/v1/")) and path not in ("/api", "/v1"):
            await self.fallback(scope, receive, send)
            return
        if path in self._known_paths:
            allowed = ", ".join(sorted(m for (m, p) in self._table if p == path)).encode()
            raise ApiError(
                405,
                f"method {method} is not allowed on {path}",
                code="method_not_allowed",
                headers=[(b"allow", allowed)],
            )
        raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _endpoint(path: str) -> str:
    name = path.rsplit("/v1/", 1)[-1]
    return name if name in ENDPOINTS else "other"


def _with_request_id(send: Send, mark: RequestMark) -> Send:
    """`send` with the request's `x-request-id` added to the answer's headers, whoever answers."""

    def send_with_id(message: MutableMapping[str, Any]) -> Awaitable[None]:
        # A plain function handing back `send`'s own awaitable: no coroutine of its own per body chunk.
        if message["type"] == "http.response.start":
            headers: Headers = [*message.get("headers", ()), (b"x-request-id", mark.header())]
            message = {**message, "headers": headers}
        return send(message)

    return send_with_id


def create_app(settings: Settings, models: list[ModelSpec], **kwargs: Any) -> App:
    return App(Gateway(settings, models, **kwargs))
