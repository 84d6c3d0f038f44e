"""The OpenAI-compatible endpoints: each handler parses, authenticates and admits, then hands over.

What happens after admission — the upstream call, the relay, the settlement — is
`server/serving.py`'s; handlers never settle.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from meshgate.catalog.spec import BUCKETS
from meshgate.catalog.tokens import MAX_BYTES_PER_TOKEN, chat_prompt_bound, embedding_input_bound, prompt_floor
from meshgate.protocol.errors import ApiError, invalid_request, model_not_found
from meshgate.protocol.models import model_card
from meshgate.protocol.requests import parse_chat, parse_embeddings
from meshgate.quota.ledger import WindowKey
from meshgate.server.admission import Counter, Demand, key_budget, today
from meshgate.server.auth import Principal
from meshgate.server.context import RequestContext, StreamOptions
from meshgate.server.http import JSON_HEADERS, Receive, Scope, Send, parse_json, read_body, send_bytes, send_json
from meshgate.server.serving import serve
from meshgate.server.state import Gateway, ModelRoute

_random_bits = random.SystemRandom(os.urandom(32)).getrandbits
_ids = random.Random(_random_bits(256))  # seeded from the OS once; no getrandom() syscall per request


def new_request_id(prefix: str) -> str:
    """96 random bits, as hex (request ids need to be unique, not secret)."""
    return f"{prefix}{_ids.getrandbits(96):024x}"


# ---------------------------------------------------------------- models


async def list_models(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    if principal.models is None:
        await send_bytes(send, 200, gw.models_listing, JSON_HEADERS)
        return
    cards = [model_card(route.spec) for route in gw.routes.values() if route.spec.id in principal.models]
    await send_json(send, 200, {"object": "list", "data": cards})


async def get_model(gw: Gateway, scope: Scope, receive: Receive, send: Send, model_id: str) -> None:
    principal = await gw.auth.authenticate(scope)
    if principal.models is not None and model_id not in principal.models:
        raise model_not_found(model_id)  # a scoped key sees only its models
    await send_json(send, 200, model_card(gw.lookup(model_id).spec))


# ---------------------------------------------------------------- chat


async def chat_completions(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    request = parse_chat(
        parse_json(await read_body(scope, receive, gw.settings.max_body_bytes)), gw.settings.extra_fields
    )
    route = gw.route_for(request.model, "chat")
    if request.n > 1 and route.spec.local is not None and route.spec.local.engine == "llama.cpp":
        # llama.cpp's server reports the usage of one choice only: `n` would be under-charged.
        raise invalid_request("this model's local llama.cpp engine supports only n = 1", param="n")
    request_id = new_request_id("chatcmpl-")
    body = request.body
    bound = chat_prompt_bound(body)
    demand = Demand(bound, prompt_floor(bound, len(body["messages"])), request.max_tokens, request.n)
    count = _chat_counter(route, body)
    admission = await gw.admitter.admit_chat(
        request_id, principal, route.spec, "api", demand, count, route.context_length
    )
    # The engine may generate what was reserved and no more; every engine knows `max_tokens`.
    body.pop("max_completion_tokens", None)
    body["max_tokens"] = admission.max_tokens
    stream = None
    if request.stream:
        options = dict(body.get("stream_options") or {})
        stream = StreamOptions(request.include_usage, options.get("continuous_usage_stats") is True)
        # Usage in the last event settles the charge; usage in every event (vLLM) makes a
        # client's hang-up cost exactly what was generated until then.
        options["include_usage"] = True
        options["continuous_usage_stats"] = True
        body["stream_options"] = options
    ctx = RequestContext(request_id, principal, route, b"/chat/completions", body, admission, request.n, stream, count)
    await serve(gw, ctx, receive, send)


def _chat_counter(route: ModelRoute, body: dict[str, Any]) -> Counter | None:
    """The exact count of a chat prompt, for admission to ask for where the bound does not fit."""
    counter = route.prompt_counter
    if counter is None:
        return None

    async def count() -> int | None:
        counted = await counter.count_chat(body)
        if counted is None:
            return None
        if counted.max_model_len is not None and counted.max_model_len < route.context_length:
            route.engine_context = counted.max_model_len  # the counter has logged it once
        return counted.tokens

    return count


def _texts_counter(route: ModelRoute, inputs: list[str] | list[list[int]]) -> Counter | None:
    """The exact tokens of embeddings inputs (token arrays are exact already)."""
    counter = route.prompt_counter
    texts = [item for item in inputs if isinstance(item, str)]
    if counter is None or not texts:
        return None

    async def count() -> int | None:
        counted = await counter.count_texts(texts)
        if counted is None:
            return None
        return sum(counted) + sum(len(item) for item in inputs if isinstance(item, list))

    return count


# ---------------------------------------------------------------- embeddings


async def embeddings(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    request = parse_embeddings(
        parse_json(await read_body(scope, receive, gw.settings.max_body_bytes)), gw.settings.extra_fields
    )
    route = gw.route_for(request.model, "embedding")
    inputs = request.inputs
    _check_input_sizes(inputs, route.context_length)
    bound = min(embedding_input_bound(inputs), route.context_length * len(inputs))
    exact = all(isinstance(item, list) for item in inputs)
    demand = Demand(bound, bound if exact else prompt_floor(bound, 0), exact=exact)
    request_id = new_request_id("embd-")
    count = _texts_counter(route, inputs)
    admission = await gw.admitter.admit_tokens(request_id, principal, route.spec, "embeddings", demand, count)
    ctx = RequestContext(request_id, principal, route, b"/embeddings", request.body, admission, count_prompt=count)
    await serve(gw, ctx, receive, send)


def _check_input_sizes(inputs: list[str] | list[list[int]], context: int) -> None:
    """An input surely longer than the model reads is refused before any engine sees it (as OpenAI does)."""
    limit = context * MAX_BYTES_PER_TOKEN
    for i, item in enumerate(inputs):
        if isinstance(item, str):  # characters never outnumber bytes: a huge string is refused before encoding
            too_long = len(item) > limit or len(item.encode()) // MAX_BYTES_PER_TOKEN >= context
        else:
            too_long = len(item) > context
        if too_long:
            raise ApiError(
                400,
                f"input[{i}] is longer than this model's maximum context length of {context} tokens.",
                code="context_length_exceeded",
                param="input",
            )


# ---------------------------------------------------------------- usage


async def usage_today(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    principal = await gw.auth.authenticate(scope)
    day = today()
    reset = gw.admitter.reset_epoch(day)
    rows = []
    for route in gw.routes.values():
        if principal.models is not None and route.spec.id not in principal.models:
            continue
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
    answer: dict[str, Any] = {
        "object": "usage",
        "day": day,
        "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)),
        "resets_in_seconds": max(int(reset - time.time()), 0),
        "data": rows,
    }
    if principal.key_id is not None and (principal.models is not None or principal.budget_tokens is not None):
        answer["key"] = await _key_scope(gw, principal)
    await send_json(send, 200, answer)


async def _key_scope(gw: Gateway, principal: Principal) -> dict[str, Any]:
    """A scoped key's models and budget, as `GET /usage` shows them."""
    scope: dict[str, Any] = {
        "id": principal.key_id,
        "models": sorted(principal.models) if principal.models is not None else None,
        "budget": None,
    }
    budget = key_budget(principal)
    if budget is not None:
        window = await gw.ledger.budget_window(budget.key)
        scope["budget"] = {
            "limit": budget.limit,
            "cycle": principal.budget_cycle,
            "used": window.used,
            "reserved": window.reserved,
            "remaining": max(budget.limit - window.used - window.reserved, 0),
            "resets_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(budget.resets_at)),
            "resets_in_seconds": max(int(budget.resets_at - time.time()), 0),
        }
    return scope
