"""The gateway's shared state: settings, stores, the ledger, the model routes, and their lifecycle.

Everything a request handler needs lives on one `Gateway` object; nothing else is global.
The ASGI application (`server/app.py`) and the handlers (`server/handlers.py`) both build
on this module; it imports neither of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from meshgate.accounts.service import AccountStore
from meshgate.catalog.spec import ModelSpec
from meshgate.config import Settings
from meshgate.protocol.errors import invalid_request, model_not_found
from meshgate.protocol.models import model_card
from meshgate.quota.embedded import EmbeddedLedger
from meshgate.quota.ledger import Ledger
from meshgate.quota.policy import QuotaPolicy
from meshgate.quota.redis_ledger import RedisLedger
from meshgate.server.admission import Admitter
from meshgate.server.auth import KeyAuthenticator
from meshgate.store.engine import sync_engine
from meshgate.workers.http_client import HttpClient
from meshgate.workers.pool import Replica, ReplicaSet
from meshgate.workers.prompt_count import PoolCounter, PromptCounter, counter_for

log = logging.getLogger("meshgate.server")


@dataclass(slots=True)
class ModelRoute:
    spec: ModelSpec
    replicas: ReplicaSet
    prompt_counter: PromptCounter | None = None  # exact token counts, where an engine can count them
    engine_context: int | None = None  # the engine's own context length, where it said it is smaller

    @property
    def context_length(self) -> int:
        """The context admission checks against: the catalog's, or the engine's where that is smaller."""
        engine = self.engine_context
        return self.spec.context_length if engine is None else min(engine, self.spec.context_length)


class Gateway:
    """State shared by all requests, and the background work that keeps it fresh."""

    def __init__(self, settings: Settings, models: list[ModelSpec], *, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self.store = AccountStore(sync_engine(settings.database_url))
        self.auth = KeyAuthenticator(self.store)
        if ledger is None and settings.redis_url:
            # Several gateway processes: one exact ledger shared on Redis, its history in the database.
            ledger = RedisLedger(settings.redis_url, self.store.engine, reservation_ttl=settings.reservation_ttl)
        if ledger is None:
            sqlite_path = settings.sqlite_path
            if sqlite_path is None:
                raise ValueError("the embedded ledger needs a SQLite database (MESHGATE_DATABASE_URL=sqlite:///…)")
            ledger = EmbeddedLedger(sqlite_path)
        self.ledger: Ledger = ledger
        self.policy = QuotaPolicy()
        self.admitter = Admitter(self.ledger, self.policy)
        self.client = HttpClient(connect_timeout=settings.upstream_connect_timeout)
        self.routes: dict[str, ModelRoute] = {spec.id: self._route(spec) for spec in models}
        self.models_listing = orjson.dumps({"object": "list", "data": [model_card(s) for s in models]})
        self._overrides_version: tuple[int, float] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def _route(self, spec: ModelSpec) -> ModelRoute:
        replicas = ReplicaSet([Replica(u) for u in spec.upstreams])
        engine = spec.local.engine if spec.local is not None else None
        client, context = self.client, spec.context_length
        counter = PoolCounter(replicas, lambda replica: counter_for(client, replica, engine, catalog_context=context))
        return ModelRoute(spec, replicas, counter)

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """A background task that lives until shutdown (and is cancelled then)."""
        self._background.append(task)

    def lookup(self, model: str) -> ModelRoute:
        route = self.routes.get(model)
        if route is None:
            raise model_not_found(model)
        return route

    def route_for(self, model: str, kind: str) -> ModelRoute:
        """The model's route, if it is of the kind the endpoint serves (400 naming the right endpoint if not)."""
        route = self.lookup(model)
        if route.spec.kind != kind:
            endpoint = "/embeddings" if route.spec.kind == "embedding" else "/chat/completions"
            raise invalid_request(
                f"`{route.spec.id}` is a {route.spec.kind} model: use {endpoint}",
                param="model",
                code="wrong_model_kind",
            )
        return route

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
