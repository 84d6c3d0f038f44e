"""The ASGI application: routing, error handling, and the gateway's shared state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meshgate.accounts.service import AccountStore
from meshgate.catalog.spec import ModelSpec
from meshgate.config import Settings
from meshgate.protocol.errors import ApiError
from meshgate.protocol.models import model_card
from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Ledger
from meshgate.quota.policy import QuotaPolicy
from meshgate.server import openai_routes as api
from meshgate.server.admission import Admitter
from meshgate.server.auth import KeyAuthenticator
from meshgate.server.http import ClientGone, Receive, Scope, Send, send_error, send_plain_error
from meshgate.store.engine import sync_engine
from meshgate.workers.http_client import HttpClient
from meshgate.workers.pool import Replica, ReplicaSet
from meshgate.workers.prompt_count import PromptCounter

log = logging.getLogger("meshgate.server")

Handler = Callable[["Gateway", Scope, Receive, Send], Awaitable[None]]
API_PREFIXES = ("/api/v1", "/v1")  # /api/v1 as IO Intelligence; /v1 for tools that assume OpenAI's layout


@dataclass(slots=True)
class ModelRoute:
    spec: ModelSpec
    replicas: ReplicaSet
    prompt_counter: PromptCounter | None = None  # exact prompt tokens, where an engine can count them


def _routes_table() -> dict[tuple[str, str], Handler]:
    table: dict[tuple[str, str], Handler] = {}
    for prefix in API_PREFIXES:
        table[("POST", prefix + "/chat/completions")] = api.chat_completions
        table[("POST", prefix + "/embeddings")] = api.embeddings
        table[("GET", prefix + "/models")] = api.list_models
        table[("GET", prefix + "/usage")] = api.usage_today
    return table


class Gateway:
    """An ASGI app. State shared by all requests lives here; nothing else is global."""

    def __init__(self, settings: Settings, models: list[ModelSpec], *, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.store = AccountStore(sync_engine(settings.database_url))
        self.auth = KeyAuthenticator(self.store)
        if ledger is None:
            sqlite_path = settings.sqlite_path
            if sqlite_path is None:
                raise ValueError("the embedded ledger needs a SQLite database (MESHGATE_DATABASE_URL=sqlite:///…)")
            ledger = EmbeddedLedger(sqlite_path)
        self.ledger: Ledger = ledger
        self.policy = QuotaPolicy()
        self.admitter = Admitter(self.ledger, self.policy)
        self.client = HttpClient(
            connect_timeout=settings.upstream_connect_timeout,
            response_timeout=settings.upstream_response_timeout,
        )
        self.routes: dict[str, ModelRoute] = {
            spec.id: ModelRoute(spec, ReplicaSet([Replica(u) for u in spec.upstreams])) for spec in models
        }
        self.models_listing = orjson.dumps({"object": "list", "data": [model_card(s) for s in models]})
        self._table = _routes_table()
        self._overrides_version: tuple[int, float] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """A background task that lives until shutdown (and is cancelled then)."""
        self._background.append(task)

    def route_for(self, model: str, kind: str) -> ModelRoute:
        route = api.lookup(self.routes, model)
        api.check_kind(route, kind)
        return route

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        handler = self._table.get((method, path))
        try:
            if handler is not None:
                await handler(self, scope, receive, send)
            else:
                await self._other(scope, receive, send, method, path)
        except ApiError as error:
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
                await api.get_model(self, scope, receive, send, path[len(prefix) + len("/models/") :])
                return
        if path in ("/health", "/healthz"):
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        known_paths = {p for (_, p) in self._table}
        if path in known_paths:
            raise ApiError(405, f"method {method} is not allowed on {path}", code="method_not_allowed")
        raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        await self.refresh()
        for hook in self.on_startup:
            await hook()
        self._background.append(asyncio.create_task(self._refresh_loop()))

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.auth.refresh()  # write the last-use times
        for hook in self.on_shutdown:
            await hook()
        await self.client.aclose()
        await self.ledger.close()

    async def refresh(self) -> None:
        """Pick up revocations and quota overrides written by the CLI or another gateway."""
        await self.auth.refresh()
        version = await asyncio.to_thread(self.store.overrides_version)
        if version != self._overrides_version:
            self.policy.replace_overrides(await asyncio.to_thread(self.store.quota_overrides))
            self._overrides_version = version

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.auth_refresh_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing keys and quota overrides failed; retrying")


def create_app(settings: Settings, models: list[ModelSpec], **kwargs: Any) -> Gateway:
    return Gateway(settings, models, **kwargs)
