"""The OpenAI-compatible endpoints: each handler parses, authenticates and admits, then hands over.

What happens after admission — the upstream call, the relay, the settlement — is
`server/serving.py`'s; handlers never settle.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from meshgate.catalog.tokens import MAX_BYTES_PER_TOKEN, chat_prompt_bound, embedding_input_bound, prompt_floor
from meshgate.protocol.errors import ApiError, invalid_request, model_not_found
from meshgate.protocol.models import model_card
from meshgate.protocol.requests import CompletionRequest, parse_chat, parse_completions, parse_embeddings
from meshgate.server.admission import Counter, Demand, key_budget, today
from meshgate.server.auth import Principal
from meshgate.server.context import RequestContext, StreamOptions
from meshgate.server.features import check_capabilities, normalize_history, prepare, shaper_for
from meshgate.server.http import JSON_HEADERS, Receive, Scope, Send, parse_json, read_body, send_bytes, send_json
from meshgate.server.logs import name_request
from meshgate.server.serving import serve
from meshgate.server.state import Gateway, ModelRoute

_random_bits = random.SystemRandom(os.urandom(32)).getrandbits
_ids = random.Random(_random_bits(256))  # seeded from the OS once; no getrandom() syscall per request


def new_request_id(prefix: str) -> str:
    """96 random bits, as hex (request ids need to be unique, not secret); the answer's x-request-id."""
    request_id = f"{prefix}{_ids.getrandbits(96):024x}"
    name_request(request_id)  # unless the client sent its own
    return request_id


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
    needs, caps = request.needs, route.spec.capabilities
    if needs is not None:  # reasoning, tools, structured output, logprobs, images: does the model have them?
        check_capabilities(route.spec, needs, body)
        prepare(body, route.spec, needs)
    if caps.reasoning:
        normalize_history(body)
    bound = chat_prompt_bound(body, caps.image_tokens)
    images = needs.images * caps.image_tokens if needs is not None else 0  # no floor for images: never overcount
    demand = Demand(bound, prompt_floor(bound - images, len(body["messages"])), request.max_tokens, request.n)
    count = chat_counter(route, body)
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
    ctx.reasoning = shaper_for(route.spec, needs)
    await serve(gw, ctx, receive, send)


def chat_counter(route: ModelRoute, body: dict[str, Any]) -> Counter | None:
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


# ---------------------------------------------------------------- legacy completions


async def completions(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /completions`: admitted, served and settled as chat is, a prompt instead of messages."""
    principal = await gw.auth.authenticate(scope)
    request = parse_completions(
        parse_json(await read_body(scope, receive, gw.settings.max_body_bytes)), gw.settings.extra_fields
    )
    route = gw.route_for(request.model, "chat")
    _check_completion_support(route, request)
    prompts, n, max_tokens = request.prompts, request.n, request.max_tokens
    context = route.context_length
    _check_prompt_sizes(prompts, context, max_tokens)
    bound = embedding_input_bound(prompts)  # exact for token ids, bytes (+ BOS/EOS) for texts
    if request.suffix:
        bound += len(request.suffix.encode())
    exact = not request.suffix and all(isinstance(item, list) for item in prompts)
    # Each prompt is a request of its own to the engine, `n` choices each; the context bounds each of them,
    # so admission sees the prompts' total within `len(prompts)` contexts (each one was checked above).
    demand = Demand(bound, bound if exact else prompt_floor(bound, 0), max_tokens, n * len(prompts), exact=exact)
    request_id = new_request_id("cmpl-")
    count = None if request.suffix else _texts_counter(route, prompts)
    admission = await gw.admitter.admit_chat(
        request_id, principal, route.spec, "api", demand, count, context * len(prompts)
    )
    body = request.body
    body["max_tokens"] = admission.max_tokens  # 16 when the client sent none, as OpenAI's default
    stream = None
    if request.stream:
        options = dict(body.get("stream_options") or {})
        # With max_tokens 0 an echoed prompt is an event of its own (vLLM): text, but no generated token.
        echoed = n * len(prompts) if request.echo and max_tokens == 0 else 0
        stream = StreamOptions(
            request.include_usage, options.get("continuous_usage_stats") is True, legacy=True, echo_pieces=echoed
        )
        options["include_usage"] = True
        options["continuous_usage_stats"] = True
        body["stream_options"] = options
    ctx = RequestContext(
        request_id, principal, route, b"/completions", body, admission, n * len(prompts), stream, count
    )
    await serve(gw, ctx, receive, send)


def _check_completion_support(route: ModelRoute, request: CompletionRequest) -> None:
    """What the model's engine cannot do is refused before any work, naming the field."""
    spec = route.spec
    if request.suffix is not None and not spec.suffix:
        raise invalid_request(
            f"`{spec.id}` does not take 'suffix' here: its engine has no fill-in-the-middle at /completions",
            param="suffix",
            code="unsupported_by_model",
        )
    if spec.local is None or spec.local.engine != "llama.cpp":
        return
    # llama.cpp's server refuses echo, and reports the usage of one sequence only.
    if request.echo:
        raise invalid_request(
            "this model's local llama.cpp engine does not echo the prompt", param="echo", code="unsupported_by_model"
        )
    if request.n > 1:
        raise invalid_request("this model's local llama.cpp engine supports only n = 1", param="n")
    if len(request.prompts) > 1:
        raise invalid_request("this model's local llama.cpp engine takes one prompt per request", param="prompt")


def _check_prompt_sizes(prompts: list[str] | list[list[int]], context: int, max_tokens: int) -> None:
    """A prompt that surely does not fit the context with its completion is refused before any engine sees it."""
    if max_tokens >= context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens; max_tokens of {max_tokens} leaves no room "
            "for the prompt.",
            code="context_length_exceeded",
            param="max_tokens",
        )
    room = context - max_tokens
    for i, item in enumerate(prompts):
        if isinstance(item, str):  # at least len/32 tokens (catalog/tokens.py): a huge string is never encoded
            too_long = len(item) > room * MAX_BYTES_PER_TOKEN or len(item.encode()) // MAX_BYTES_PER_TOKEN > room
        else:
            too_long = len(item) > room
        if too_long:
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens: {where} with max_tokens {max_tokens} "
                "does not fit. Please reduce the length of the prompt or completion.",
                code="context_length_exceeded",
                param="prompt",
            )


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
    rows = await gw.usage_rows(principal.account_id, principal.models)
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
