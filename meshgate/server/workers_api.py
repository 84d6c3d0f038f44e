"""The worker registration API: engines join a model's pool, keep their lease with heartbeats, and leave.

    POST   /internal/workers/register   {model, upstream, served_model?, max_concurrency?, engine?, load?}
                                        -> {id, heartbeat_seconds, ttl_seconds, ...}
    POST   /internal/workers/heartbeat  {id, load?} -> {id, ttl_seconds}; 404 unknown_worker: register again
    DELETE /internal/workers/{id}       leave now (not when the lease runs out)
    GET    /internal/workers            every replica of every model: source, health, load, last heartbeat

All of them take a worker token (`meshgate workers token create`); the listing also takes an
admin account's API key. Bodies are small (16 KiB at most) and checked field by field
(`workers/registration.py`); every refusal is an OpenAI error envelope. A registration is
visible to this process at once and to the others at their next sync (about a second).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import asdict
from typing import Any, TypeVar

from redis.exceptions import RedisError

from meshgate.accounts.worker_tokens import WorkerToken, looks_like_worker_token
from meshgate.protocol.errors import ApiError, invalid_request
from meshgate.server.http import Receive, Scope, Send, parse_json, read_body, send_json
from meshgate.server.state import Gateway
from meshgate.server.worker_auth import bearer
from meshgate.workers.registration import (
    MAX_BODY_BYTES,
    forbidden_model,
    parse_heartbeat,
    parse_register,
    worker_id,
)
from meshgate.workers.registry import Registration, RegistryFull, heartbeat_seconds, registration_id

PREFIX = "/internal/workers"
log = logging.getLogger("meshgate.workers")
T = TypeVar("T")


async def register(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    token = await gw.worker_auth.authenticate(scope)
    request = parse_register(parse_json(await read_body(scope, receive, MAX_BODY_BYTES)))
    route = gw.routes.get(request.model)
    if route is None:
        raise invalid_request(
            f"`{request.model}` is not in this gateway's catalog: a worker adds replicas to a catalog model",
            param="model",
            code="model_not_found",
        )
    if token.models is not None and request.model not in token.models:
        raise forbidden_model(request.model)
    registration = Registration(
        id=registration_id(request.model, request.upstream),
        token_id=token.id,
        model=request.model,
        url=request.upstream,
        served_model=request.served_model,
        engine=request.engine,
        max_concurrency=request.max_concurrency,
        load=request.load,
    )
    settings = gw.settings
    try:
        await _registry(
            gw.workers.registry.register(registration, settings.max_workers, settings.max_workers_per_token)
        )
    except RegistryFull as exc:
        raise ApiError(429, f"{exc}; deregister some, or raise the limit", code="too_many_workers") from None
    await gw.workers.sync()  # in this process's pool now, in the others' at their next sync
    await asyncio.to_thread(gw.worker_tokens.touch, token.id)
    ttl = gw.workers.registry.ttl
    await send_json(
        send,
        200,
        {
            "object": "worker",
            "id": registration.id,
            "model": registration.model,
            "upstream": registration.url,
            "served_model": registration.served_model,
            "heartbeat_seconds": heartbeat_seconds(ttl),
            "ttl_seconds": ttl,
        },
    )


async def heartbeat(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    token = await gw.worker_auth.authenticate(scope)
    worker, load = parse_heartbeat(parse_json(await read_body(scope, receive, MAX_BODY_BYTES)))
    if not await _registry(gw.workers.registry.heartbeat(worker, token.id, load)):
        raise _unknown(worker)
    await send_json(send, 200, {"object": "worker.heartbeat", "id": worker, "ttl_seconds": gw.workers.registry.ttl})


async def deregister(gw: Gateway, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
    token = await gw.worker_auth.authenticate(scope)
    worker = worker_id(raw_id)
    if not await _registry(gw.workers.registry.remove(worker, token.id)):
        raise _unknown(worker)
    await gw.workers.sync()
    await send_json(send, 200, {"object": "worker.deleted", "id": worker, "deleted": True})


async def list_workers(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    await _operator(gw, scope)
    await gw.workers.sync()
    rows = [asdict(view) for view in gw.workers.views()]
    await send_json(send, 200, {"object": "list", "data": rows})


async def _operator(gw: Gateway, scope: Scope) -> WorkerToken | None:
    """A worker token, or an admin account's API key: the pool's addresses are the operator's to see."""
    if looks_like_worker_token(bearer(scope)):
        return await gw.worker_auth.authenticate(scope)
    principal = await gw.auth.authenticate(scope)
    account = await asyncio.to_thread(gw.store.get_account, principal.account_id)
    if account is None or not account.is_admin:
        raise ApiError(403, "listing workers takes a worker token or an admin account's API key", code="forbidden")
    return None


async def _registry(call: Awaitable[T]) -> T:
    """A registry operation; Redis unreachable is a 503 the worker retries, not a 500."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("the worker registry is unavailable: %r", exc)
        raise ApiError(
            503, "the worker registry is unavailable; retry shortly", type="server_error", code="registry_unavailable"
        ) from None


def _unknown(worker: str) -> ApiError:
    return ApiError(
        404,
        f"no worker `{worker}` is registered with this token (its lease ran out, or the gateway forgot it): "
        "register again",
        code="unknown_worker",
        param="id",
    )


def routes() -> dict[tuple[str, str], Any]:
    return {
        ("POST", PREFIX + "/register"): register,
        ("POST", PREFIX + "/heartbeat"): heartbeat,
        ("GET", PREFIX): list_workers,
    }
