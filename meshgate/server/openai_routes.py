"""The OpenAI-compatible endpoints: models, chat completions, embeddings, and the caller's usage."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from meshgate.catalog.spec import BUCKETS
from meshgate.catalog.tokens import chat_prompt_bound, embedding_input_bound
from meshgate.protocol.errors import ApiError, invalid_request, model_not_found, upstream_error
from meshgate.protocol.models import model_card
from meshgate.protocol.requests import parse_chat, parse_embeddings
from meshgate.protocol.sse import DONE, event
from meshgate.quota.ledger import WindowKey
from meshgate.server.admission import Admission, today
from meshgate.server.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    Receive,
    Scope,
    Send,
    parse_json,
    read_body,
    send_bytes,
    send_json,
)
from meshgate.server.relay import StreamRelay, Usage, finish_json, map_upstream_failure, read_error_body
from meshgate.workers.http_client import UpstreamError, UpstreamResponse, UpstreamTimeout
from meshgate.workers.pool import NoReplicaAvailable, Replica

if TYPE_CHECKING:
    from meshgate.server.app import Gateway, ModelRoute


_random_bits = random.SystemRandom(os.urandom(32)).getrandbits
_ids = random.Random(_random_bits(256))  # seeded from the OS once; no getrandom() syscall per request


def new_request_id(prefix: str) -> str:
    """96 random bits, as hex (request ids need to be unique, not secret)."""
    return f"{prefix}{_ids.getrandbits(96):024x}"


# A client that hangs up aborts the upstream request, so the engine stops generating. Watching
# for the hang-up costs a task per request, so it starts only once a request has run this long:
# fast answers never pay for it, and a hang-up is still acted on within this delay.
HANG_UP_WATCH_DELAY = 0.02


class HangUpWatch:
    __slots__ = ("_receive", "_response", "_task", "_timer")

    def __init__(self, receive: Receive, response: UpstreamResponse, delay: float) -> None:
        self._receive = receive
        self._response = response
        self._task: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(delay, self._arm)

    def _arm(self) -> None:
        self._timer = None
        self._task = task = asyncio.ensure_future(self._receive())
        task.add_done_callback(self._gone)

    def _gone(self, _: object) -> None:
        self._response.close()

    def done(self) -> bool:
        """Whether the client has hung up (as far as has been watched)."""
        return self._task is not None and self._task.done()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()


# ---------------------------------------------------------------- models


async def list_models(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    await gw.auth.authenticate(scope)
    await send_bytes(send, 200, gw.models_listing, JSON_HEADERS)


async def get_model(gw: Gateway, scope: Scope, receive: Receive, send: Send, model_id: str) -> None:
    await gw.auth.authenticate(scope)
    await send_json(send, 200, model_card(lookup(gw.routes, model_id).spec))


# ---------------------------------------------------------------- chat


async def chat_completions(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    request = parse_chat(parse_json(await read_body(scope, receive, gw.settings.max_body_bytes)))
    route = gw.route_for(request.model, "chat")
    if request.n > 1 and route.spec.local is not None and route.spec.local.engine == "llama.cpp":
        # llama.cpp's server reports the usage of one choice only: `n` would be under-charged.
        raise invalid_request("this model's local llama.cpp engine supports only n = 1", param="n")
    request_id = new_request_id("chatcmpl-")
    admission = await gw.admitter.admit_chat(
        request_id,
        principal.account_id,
        principal.key_id,
        route.spec,
        "api",
        *await _prompt_tokens(route, request.body),
        request.max_tokens,
        request.n,
    )
    body = request.body
    # The engine may generate what was reserved and no more; every engine knows `max_tokens`.
    body.pop("max_completion_tokens", None)
    body["max_tokens"] = admission.max_tokens
    if request.stream:
        options = dict(body.get("stream_options") or {})
        client_continuous = options.get("continuous_usage_stats") is True
        # Usage in the last event settles the charge; usage in every event (vLLM) makes a
        # client's hang-up cost exactly what was generated until then.
        options["include_usage"] = True
        options["continuous_usage_stats"] = True
        body["stream_options"] = options
    else:
        client_continuous = False
    relay = StreamRelay(request.include_usage, route.spec.id, client_continuous) if request.stream else None
    await relay_to_upstream(gw, route, admission, b"/chat/completions", body, receive, send, relay)


async def _prompt_tokens(route: ModelRoute, body: dict[str, Any]) -> tuple[int, bool]:
    """(prompt tokens, exact?): the engine's own count where it offers one, else an upper bound."""
    if route.prompt_counter is not None:
        counted = await route.prompt_counter.count(body)
        if counted is not None:
            return counted, True
    return chat_prompt_bound(body), False


# ---------------------------------------------------------------- embeddings


async def embeddings(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    request = parse_embeddings(parse_json(await read_body(scope, receive, gw.settings.max_body_bytes)))
    route = gw.route_for(request.model, "embedding")
    tokens = min(embedding_input_bound(request.inputs), route.spec.context_length * len(request.inputs))
    admission = await gw.admitter.admit_tokens(
        new_request_id("embd-"), principal.account_id, principal.key_id, route.spec, "embeddings", tokens
    )
    await relay_to_upstream(gw, route, admission, b"/embeddings", request.body, receive, send, None)


# ---------------------------------------------------------------- the relay shared by both


def _encoder(body: dict[str, Any], public_model: str) -> Callable[[Replica], bytes]:
    """Bodies per replica: most replicas share the public name, so that body is encoded once."""
    cache: dict[str, bytes] = {}

    def encode(replica: Replica) -> bytes:
        name = replica.spec.model
        encoded = cache.get(name)
        if encoded is None:
            body["model"] = name
            encoded = cache[name] = orjson.dumps(body)
            body["model"] = public_model
        return encoded

    return encode


async def relay_to_upstream(
    gw: Gateway,
    route: ModelRoute,
    admission: Admission,
    path: bytes,
    body: dict[str, Any],
    receive: Receive,
    send: Send,
    stream: StreamRelay | None,
) -> None:
    """Send the request to a replica and the answer to the client; settle the reservation exactly once."""
    reservation = admission.reservation
    public_model = route.spec.id
    try:
        replica, response = await route.replicas.send(gw.client, path, _encoder(body, public_model))
    except BaseException as exc:
        await gw.ledger.settle(reservation, 0, 0, "upstream_error")
        raise _as_api_error(exc) from None
    watcher = HangUpWatch(receive, response, HANG_UP_WATCH_DELAY)
    try:
        if response.status != 200:
            failure = map_upstream_failure(response.status, await read_error_body(response))
            await gw.ledger.settle(reservation, 0, 0, "upstream_error")
            raise failure
        if stream is not None:
            stream.upstream_model(public_model, replica.spec.model)
            await _relay_stream(gw, admission, response, stream, send, watcher)
        else:
            await _relay_json(gw, admission, response, replica, public_model, send, watcher)
    finally:
        watcher.cancel()
        response.close()
        route.replicas.done(replica)


async def _relay_json(
    gw: Gateway,
    admission: Admission,
    response: UpstreamResponse,
    replica: Replica,
    public_model: str,
    send: Send,
    watcher: HangUpWatch,
) -> None:
    reservation = admission.reservation
    usage = Usage()
    try:
        data = await response.read(gw.settings.upstream_response_timeout)
        data = finish_json(data, usage, public_model, replica.spec.model)
    except BaseException as exc:
        if watcher.done():  # the client left: the prompt was processed, the answer never delivered
            await gw.ledger.settle(reservation, admission.prompt_estimate, 0, "client_disconnect")
            return
        await gw.ledger.settle(reservation, 0, 0, "upstream_error")
        raise _as_api_error(exc) from None
    if not usage.reported:  # an engine that reports no usage is charged the whole reservation
        usage.prompt_tokens = admission.prompt_estimate
        usage.completion_tokens = admission.max_tokens or 0
    await gw.ledger.settle(reservation, usage.prompt_tokens, usage.completion_tokens)
    headers = JSON_HEADERS + await gw.admitter.headers_after(reservation)
    await send_bytes(send, 200, data, headers)


async def _relay_stream(
    gw: Gateway,
    admission: Admission,
    response: UpstreamResponse,
    relay: StreamRelay,
    send: Send,
    watcher: HangUpWatch,
) -> None:
    reservation = admission.reservation
    headers = SSE_HEADERS + await gw.admitter.headers_after(reservation)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    outcome = "ok"
    timeout = gw.settings.upstream_response_timeout
    try:
        while (chunk := await response.next_chunk(timeout)) is not None:
            out = relay.feed(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except UpstreamError as exc:
        if watcher.done():
            outcome = "client_disconnect"
        else:
            outcome = "upstream_error"
            message = "the model's upstream timed out" if isinstance(exc, UpstreamTimeout) else str(exc)
            error = {"error": {"message": message, "type": "upstream_error", "param": None, "code": "upstream_error"}}
            await send({"type": "http.response.body", "body": event(orjson.dumps(error)), "more_body": True})
    finally:
        usage = relay.usage
        if usage.reported:
            prompt, completion = usage.prompt_tokens, max(usage.completion_tokens, relay.generated)
        else:
            prompt, completion = admission.prompt_estimate, relay.generated
        await gw.ledger.settle(reservation, prompt, completion, outcome)
    if outcome == "ok" and not relay.done:
        await send({"type": "http.response.body", "body": event(DONE), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _as_api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, ApiError | asyncio.CancelledError):
        return exc
    if isinstance(exc, NoReplicaAvailable):
        return upstream_error(503, "no healthy upstream is available for this model, please retry", "no_upstream")
    if isinstance(exc, UpstreamTimeout):
        return upstream_error(504, "the model's upstream timed out", "upstream_timeout")
    if isinstance(exc, UpstreamError):
        return upstream_error(502, f"the model's upstream failed: {exc}", "upstream_error")
    if isinstance(exc, orjson.JSONDecodeError):
        return upstream_error(502, "the model's upstream sent invalid JSON", "upstream_error")
    return exc


# ---------------------------------------------------------------- usage


async def usage_today(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    day = today()
    reset = gw.admitter.reset_epoch(day)
    rows = []
    for route in gw.routes.values():
        for bucket in BUCKETS:
            limit = gw.admitter.policy.limit(principal.account_id, route.spec, bucket)
            if limit is None:
                continue
            window = await gw.ledger.window(WindowKey(principal.account_id, route.spec.id, bucket, day))
            rows.append(
                {
                    "model": route.spec.id,
                    "bucket": bucket,
                    "used": window.used,
                    "reserved": window.reserved,
                    "limit": limit,
                    "remaining": max(limit - window.used - window.reserved, 0),
                }
            )
    await send_json(
        send,
        200,
        {
            "object": "usage",
            "day": day,
            "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)),
            "resets_in_seconds": max(int(reset - time.time()), 0),
            "data": rows,
        },
    )


def check_kind(route: ModelRoute, kind: str) -> None:
    if route.spec.kind != kind:
        endpoint = "/embeddings" if route.spec.kind == "embedding" else "/chat/completions"
        raise invalid_request(
            f"`{route.spec.id}` is a {route.spec.kind} model: use {endpoint}",
            param="model",
            code="wrong_model_kind",
        )


def lookup(routes: dict[str, ModelRoute], model: str) -> ModelRoute:
    route = routes.get(model)
    if route is None:
        raise model_not_found(model)
    return route
