"""Serving an admitted request: send it to a replica, relay the answer, settle the reservation once.

Handlers (`server/handlers.py`) parse, authenticate and admit; everything after admission
happens here. `serve` is the one place a reservation is settled: whatever happens —
answered, refused upstream, timed out, cut at the reservation, or the client left — one
`ledger.settle` call runs with the `Charge` this module worked out, and only then is the
answer (or a stream's last event) sent, so usage a client sees is already committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meshgate.catalog.tokens import text_bound
from meshgate.protocol.errors import ApiError, error_body, upstream_error
from meshgate.protocol.sse import DONE, EventTooLarge, event
from meshgate.server.context import RequestContext
from meshgate.server.hangup import HangUpWatch
from meshgate.server.http import JSON_HEADERS, SSE_HEADERS, ClientGone, Receive, Send, send_bytes
from meshgate.server.logs import CURRENT
from meshgate.server.metrics import RouteMetrics, endpoint_of, status_class
from meshgate.server.relay import StreamRelay, Usage, finish_json, map_upstream_failure, read_error_body
from meshgate.server.state import Gateway
from meshgate.workers.http_client import UpstreamError, UpstreamResponse, UpstreamTimeout, UpstreamTooLarge
from meshgate.workers.pool import NoReplicaAvailable, Replica

log = logging.getLogger("meshgate.serving")


@dataclass(slots=True)
class Charge:
    """What a request is charged. Until something better is known: nothing (failures cost nothing)."""

    prompt: int = 0
    completion: int = 0
    outcome: str = "upstream_error"
    first_text_at: float = 0.0  # a stream: when the first generated text went to the client (monotonic)

    def set(self, prompt: int, completion: int, outcome: str) -> None:
        self.prompt, self.completion, self.outcome = prompt, completion, outcome


async def serve(gw: Gateway, ctx: RequestContext, receive: Receive, send: Send) -> None:
    """Relay one admitted request and settle its reservation exactly once."""
    charge = Charge()
    mark = CURRENT.get()
    started = mark.started if mark is not None else time.monotonic()
    observed = gw.metrics.route(ctx.route.spec.id, ctx.admission.reservation.key.bucket)
    if observed is not None:
        observed.in_flight += 1
    watch = HangUpWatch(receive)
    relay = _stream_relay(gw, ctx)
    answer: bytes | None = None
    failure: BaseException | None = None
    try:
        if relay is None:
            answer = await _answer(gw, ctx, charge, watch)
        else:
            await _stream(gw, ctx, relay, charge, watch, send)
    except BaseException as exc:  # every way out settles below; CancelledError included
        failure = exc
    watch.stop()
    if watch.gone and charge.outcome == "upstream_error":
        # The client left before anything was delivered: the engine processed the prompt, no more.
        charge.set(await _prompt_charge(ctx), 0, "client_disconnect")
    if relay is not None and relay.started and not relay.usage.reported:
        charge.prompt = await _prompt_charge(ctx)
        charge.completion = await _count_delivered(ctx, relay)
    await gw.ledger.settle(ctx.admission.reservation, charge.prompt, charge.completion, charge.outcome)
    error = None if failure is None or watch.gone or (relay is not None and relay.started) else _as_api_error(failure)
    if observed is not None:
        _observe(observed, ctx, charge, watch.gone, relay, failure, error, started)
    if ctx.on_settle is not None:
        ctx.on_settle(charge.prompt, charge.completion, charge.outcome)
    if watch.gone:
        raise ClientGone()
    if failure is not None and relay is not None and relay.started:
        # The stream's headers are out: an error can no longer be a status, only a clean close.
        if not isinstance(failure, Exception):
            raise failure
        log.error("stream %s failed after it started", ctx.request_id, exc_info=failure)
        await send({"type": "http.response.body", "body": _error_event(failure), "more_body": False})
        return
    if error is not None:
        if isinstance(error, ApiError):
            error.counted = True
        raise error from None
    if answer is not None:
        headers = JSON_HEADERS + await gw.admitter.headers_after(ctx.admission.reservation)
        await send_bytes(send, 200, answer, headers)
    elif relay is not None:
        tail = relay.closing_events(charge.completion, charge.prompt) if relay.cut else b""
        if charge.outcome in ("ok", "cut_at_limit") and not relay.done:
            tail += event(DONE)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _stream_relay(gw: Gateway, ctx: RequestContext) -> StreamRelay | None:
    if ctx.stream is None:
        return None
    return StreamRelay(
        ctx.route.spec.id,
        include_usage=ctx.stream.include_usage,
        client_continuous=ctx.stream.client_continuous,
        completion_limit=ctx.completion_limit,
        max_event_bytes=gw.settings.max_event_bytes,
        legacy=ctx.stream.legacy,
        echo_pieces=ctx.stream.echo_pieces,
        shaper=ctx.reasoning,
    )


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


async def _open(
    gw: Gateway, ctx: RequestContext, watch: HangUpWatch, timeout: float
) -> tuple[Replica, UpstreamResponse]:
    """Send the request to a replica and wait for its status line; the caller must `_close` the pair."""
    route = ctx.route
    replica, response = await route.replicas.send(
        gw.client, ctx.upstream_path, _encoder(ctx.body, route.spec.id), timeout
    )
    watch.attach(response)
    if response.status != 200:
        try:
            raise map_upstream_failure(response.status, await read_error_body(response))
        finally:
            _close(ctx, replica, response)
    return replica, response


def _close(ctx: RequestContext, replica: Replica, response: UpstreamResponse) -> None:
    response.close()
    ctx.route.replicas.done(replica)


async def _answer(gw: Gateway, ctx: RequestContext, charge: Charge, watch: HangUpWatch) -> bytes:
    """A plain answer: read whole within the total time limit; returns the bytes to send."""
    settings = gw.settings
    started = time.monotonic()
    replica, response = await _open(gw, ctx, watch, settings.upstream_response_timeout)
    try:
        left = settings.upstream_response_timeout - (time.monotonic() - started)
        data = await response.read(max(left, 0.0), settings.max_upstream_answer_bytes)
    finally:
        _close(ctx, replica, response)
    usage = Usage()
    data = finish_json(data, usage, ctx.route.spec.id, ctx.reasoning)
    admission = ctx.admission
    if usage.invalid:
        log.error("upstream %s reported invalid usage; charged as if it reported none", replica.spec.url)
    if usage.reported:
        charge.set(usage.prompt_tokens, usage.completion_tokens, "ok")
        if usage.prompt_tokens + usage.completion_tokens > admission.reservation.amount:
            # The engine generated past what was reserved (it ignored max_tokens): charge what it did.
            log.error(
                "upstream %s answered %d tokens where %d were reserved (request %s); charged in full",
                replica.spec.url,
                usage.prompt_tokens + usage.completion_tokens,
                admission.reservation.amount,
                ctx.request_id,
            )
    else:  # an engine that reports no usage is charged the whole reservation
        charge.set(admission.prompt_estimate, ctx.completion_limit, "ok")
    return data


async def _stream(
    gw: Gateway, ctx: RequestContext, relay: StreamRelay, charge: Charge, watch: HangUpWatch, send: Send
) -> None:
    """A stream: relayed event by event; ends cleanly on silence, size or time limits, or at the reservation."""
    settings = gw.settings
    deadline = time.monotonic() + settings.stream_max_seconds
    replica, response = await _open(gw, ctx, watch, settings.stream_idle_timeout)
    outcome = "ok"
    try:
        headers = SSE_HEADERS + await gw.admitter.headers_after(ctx.admission.reservation)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        relay.started = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout("the stream ran past its time limit")
            chunk = await response.next_chunk(min(settings.stream_idle_timeout, left))
            if chunk is None:
                break
            out = relay.feed(chunk)
            prompt = relay.usage.prompt_tokens if relay.usage.reported else ctx.admission.prompt_estimate
            gw.ledger.progress(ctx.admission.reservation, prompt, relay.generated())  # what a crash charges
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
                if not charge.first_text_at and relay.text_events > 0:
                    charge.first_text_at = time.monotonic()
            if relay.cut:
                outcome = "cut_at_limit"
                log.error(
                    "upstream %s streamed past the %d completion tokens reserved (request %s); stopped",
                    replica.spec.url,
                    ctx.completion_limit,
                    ctx.request_id,
                )
                break
    except (UpstreamError, EventTooLarge) as exc:
        if watch.gone:
            outcome = "client_disconnect"
        else:
            outcome = "upstream_error"
            await send({"type": "http.response.body", "body": _error_event(exc), "more_body": True})
    finally:
        _close(ctx, replica, response)
        # Whatever ended the stream, what was delivered is charged (the usage the engine reported
        # with the events, else counted by content in `serve`).
        usage = relay.usage
        if usage.reported:
            charge.set(usage.prompt_tokens, max(usage.completion_tokens, relay.text_events), outcome)
        else:
            charge.set(ctx.admission.prompt_estimate, max(relay.text_events, 0), outcome)  # refined in `serve`
    if usage.invalid:
        log.error("upstream %s reported invalid usage in a stream; counted by content", replica.spec.url)


def _observe(
    observed: RouteMetrics,
    ctx: RequestContext,
    charge: Charge,
    gone: bool,
    relay: StreamRelay | None,
    failure: BaseException | None,
    error: BaseException | None,
    started: float,
) -> None:
    """The request in the metrics, once, right after its settlement: what it was charged, how it ended."""
    endpoint = endpoint_of(ctx.upstream_path)
    if gone:
        status = "disconnect"
    elif isinstance(error, ApiError):
        status = status_class(error.status)
    else:
        status = "5xx" if error is not None else "2xx"  # a stream that failed after it started was a 200
    ttft = charge.first_text_at - started if charge.first_text_at else None
    kind = _upstream_error_kind(failure, charge, relay, gone)
    observed.finish(endpoint, status, charge.prompt, charge.completion, time.monotonic() - started, ttft, kind)


def _upstream_error_kind(
    failure: BaseException | None, charge: Charge, relay: StreamRelay | None, gone: bool
) -> str | None:
    if gone:
        return None
    if relay is not None and relay.started and (failure is not None or charge.outcome == "upstream_error"):
        return "stream"
    if failure is None:
        return None
    if isinstance(failure, NoReplicaAvailable):
        return "no_replica"
    if isinstance(failure, UpstreamTimeout):
        return "timeout"
    if isinstance(failure, UpstreamTooLarge):
        return "too_large"
    if isinstance(failure, UpstreamError):
        return "connect"
    if isinstance(failure, orjson.JSONDecodeError):
        return "invalid"
    if isinstance(failure, ApiError):  # raised here only for an engine's error status or an odd answer
        return "status"
    return None


def _error_event(exc: BaseException) -> bytes:
    if isinstance(exc, UpstreamTimeout):
        message, code = "the model's upstream timed out", "upstream_timeout"
    elif isinstance(exc, EventTooLarge):
        message, code = str(exc), "upstream_error"
    elif isinstance(exc, UpstreamError):
        message, code = f"the model's upstream failed: {exc}", "upstream_error"
    else:  # the gateway's own fault: no internals in the answer (the log has them)
        return event(error_body("internal error in the gateway", "server_error", "internal_error"))
    return event(orjson.dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}))


async def _prompt_charge(ctx: RequestContext) -> int:
    """The prompt's tokens for a request the engine reported nothing for: its own count where it can."""
    admission = ctx.admission
    if admission.exact or ctx.count_prompt is None:
        return admission.prompt_estimate
    counted = await ctx.count_prompt()
    return admission.prompt_estimate if counted is None else min(counted, admission.prompt_estimate)


async def _count_delivered(ctx: RequestContext, relay: StreamRelay) -> int:
    """Completion tokens of a stream cut short with no usage from the engine: counted by content.

    The engine's own tokenizer where it offers one; otherwise the text's UTF-8 bytes (byte-level
    tokenizers never make more tokens than bytes), but never fewer than the text events relayed.
    """
    if not relay.pieces:
        return max(relay.text_events, 0)
    text = "".join(relay.pieces)
    counter = ctx.route.prompt_counter
    counted = await counter.count_texts([text], special=False) if counter is not None else None
    if counted:
        return max(counted[0], relay.text_events)
    return max(text_bound(text), relay.text_events)


def _as_api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, ApiError | asyncio.CancelledError):
        return exc
    if isinstance(exc, NoReplicaAvailable):
        return upstream_error(503, "no healthy upstream is available for this model, please retry", "no_upstream")
    if isinstance(exc, UpstreamTimeout):
        return upstream_error(504, "the model's upstream timed out", "upstream_timeout")
    if isinstance(exc, UpstreamTooLarge):
        return upstream_error(502, "the model's upstream sent an answer over the size limit", "upstream_error")
    if isinstance(exc, UpstreamError):
        return upstream_error(502, f"the model's upstream failed: {exc}", "upstream_error")
    if isinstance(exc, orjson.JSONDecodeError):
        return upstream_error(502, "the model's upstream sent invalid JSON", "upstream_error")
    return exc
