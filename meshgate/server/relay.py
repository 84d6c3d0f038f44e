"""Relaying upstream answers to the client, counting usage as it flows.

Non-streaming answers are read whole (their usage decides the charge) and passed on as
the upstream's own bytes unless the model name must be rewritten. Streams are passed on
event by event as they arrive; only events that carry usage are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from meshgate.protocol.errors import ApiError, upstream_error
from meshgate.protocol.sse import DONE, EventSplitter, data_of, event
from meshgate.workers.http_client import UpstreamResponse

_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_CONTENT_MARKERS = (b'"content":"', b'"reasoning_content":"', b'"tool_calls":[{', b'"text":"')
_EMPTY_CONTENT = (b'"content":""', b'"reasoning_content":""')


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False  # True once the upstream itself reported usage

    def absorb(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens", 0)
            if isinstance(prompt, int) and isinstance(completion, int):
                self.prompt_tokens = prompt
                self.completion_tokens = completion
                self.reported = True


def map_upstream_failure(status: int, body: bytes) -> ApiError:
    """An upstream's error answer as the client should see it.

    Errors about the request itself (400/413/422: too long, bad parameter) are the
    client's to fix and keep the upstream's message; anything else is the platform's
    trouble and becomes 502/503/504 without leaking the upstream's internals.
    """
    message = _error_message(body)
    if status in (400, 413, 422):
        return ApiError(400, message or "the upstream rejected the request", code="upstream_rejected")
    if status in (429, 503):
        return upstream_error(503, "the model is overloaded right now, please retry", code="upstream_overloaded")
    if status == 504:
        return upstream_error(504, "the model timed out", code="upstream_timeout")
    return upstream_error(502, f"the model's upstream failed (status {status})", code="upstream_error")


def _error_message(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return message if isinstance(message, str) else None


def finish_json(data: bytes, usage: Usage, public_model: str, upstream_model: str) -> bytes:
    """Take the usage out of a complete JSON answer and give it the model name the client asked for."""
    parsed = orjson.loads(data)
    if not isinstance(parsed, dict):
        raise upstream_error(502, "the model's upstream sent an unexpected answer")
    usage.absorb(parsed.get("usage"))
    if parsed.get("model") != public_model:
        parsed["model"] = public_model
        return orjson.dumps(parsed)
    return data


class StreamRelay:
    """Turns upstream SSE bytes into the bytes to send on, tracking usage and completion tokens."""

    __slots__ = (
        "_model_from",
        "_model_to",
        "_splitter",
        "continuous_usage",
        "done",
        "generated",
        "include_usage",
        "usage",
    )

    def __init__(self, include_usage: bool, public_model: str, continuous_usage: bool = False) -> None:
        self._splitter = EventSplitter()
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage  # the client itself asked for usage in every event
        self.usage = Usage()
        self.generated = 0  # events that carried generated text: a floor on completion tokens
        self.done = False
        self._model_from = self._model_to = public_model.encode()

    def upstream_model(self, public_model: str, upstream_model: str) -> None:
        """Events name the model as the replica knows it; the client gets the name it asked for."""
        if public_model != upstream_model:
            self._model_from = b'"model":' + orjson.dumps(upstream_model)
            self._model_to = b'"model":' + orjson.dumps(public_model)
        else:
            self._model_from = self._model_to = b""

    def feed(self, chunk: bytes) -> bytes:
        out = []
        for ev in self._splitter.feed(chunk):
            payload = data_of(ev)
            if payload is None:
                continue  # comments and keep-alives carry nothing for the client
            if payload == DONE:
                self.done = True
                out.append(ev)
                continue
            if _USAGE_MARKERS[0] in payload or _USAGE_MARKERS[1] in payload:
                try:
                    parsed = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    self.usage.absorb(parsed.get("usage"))
                    if not parsed.get("choices"):  # the final usage event: only for clients that asked
                        if self.include_usage:
                            out.append(self._rename(event(payload)))
                        continue
                    if not self.continuous_usage:
                        # Usage in every event was the gateway's request, not the client's.
                        del parsed["usage"]
                        ev = event(orjson.dumps(parsed))
            if _carries_text(payload):
                self.generated += 1
            out.append(self._rename(ev))
        return b"".join(out)

    def _rename(self, ev: bytes) -> bytes:
        if self._model_from:
            return ev.replace(self._model_from, self._model_to, 1)
        return ev


def _carries_text(payload: bytes) -> bool:
    """Whether an event carries generated output (the role-only first chunk does not)."""
    c0, c1, c2, c3 = _CONTENT_MARKERS
    if not (c0 in payload or c1 in payload or c2 in payload or c3 in payload):
        return False
    e0, e1 = _EMPTY_CONTENT
    return not (e0 in payload or e1 in payload)


async def read_error_body(response: UpstreamResponse, limit: int = 65536) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit and (chunk := await response.next_chunk(30.0)) is not None:
            parts.append(chunk)
            size += len(chunk)
    except Exception:  # the error answer itself failed: the status alone will do
        pass
    return b"".join(parts)[:limit]
