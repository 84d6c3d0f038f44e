"""What flows back from an engine: answers and events, with their usage counted and the model renamed.

A plain answer is read whole (its usage decides the charge) and passed on as the upstream's
own bytes unless the model name must be rewritten. A stream is parsed event by event: each
event is JSON small enough that parsing costs about a microsecond, and parsing is the only
way to count what was delivered whatever the engine's JSON spelling (spaces, key order), to
give every event the catalog's model name, and to stop at what was reserved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from meshgate.protocol.errors import ApiError, upstream_error
from meshgate.protocol.sse import DONE, EventSplitter, data_of, event
from meshgate.server.reasoning import ReasoningShaper
from meshgate.workers.http_client import UpstreamResponse

log = logging.getLogger("meshgate.relay")


def _count(value: Any) -> int | None:
    """A token count as an engine may report it: a non-negative integer, and not a boolean."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False  # True once the upstream itself reported (valid) usage
    invalid: bool = False  # the upstream reported usage that is not a count (negative, float, bool, ...)

    def absorb(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            if usage is not None:
                self.invalid = True
            return
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens", 0))
        if prompt is None or completion is None:
            self.invalid = True
            return
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


def finish_json(data: bytes, usage: Usage, public_model: str, shaper: ReasoningShaper | None = None) -> bytes:
    """Take the usage out of a complete JSON answer and give it the model name the client asked for
    (and a reasoning model's reasoning its two names, or none: `shaper`)."""
    parsed = orjson.loads(data)
    if not isinstance(parsed, dict):
        raise upstream_error(502, "the model's upstream sent an unexpected answer")
    usage.absorb(parsed.get("usage"))
    if shaper is not None and shaper.answer(parsed):
        parsed["model"] = public_model
        return orjson.dumps(parsed)
    if parsed.get("model") != public_model:
        parsed["model"] = public_model
        return orjson.dumps(parsed)
    return data


_OTHER_TEXT = ("reasoning_content", "reasoning", "tool_calls")


def _delivered_text(choice: Any, pieces: list[str]) -> int:
    """Append the generated text of one streamed choice to `pieces`; returns how many pieces it had.

    Written for the hot loop (one call per event): the usual delta, `{"content": "..."}`, costs
    two dict lookups; other fields are looked at only when the delta has more keys.
    """
    if type(choice) is not dict:
        return 0
    delta = choice.get("delta")
    if type(delta) is not dict:
        text = choice.get("text")  # legacy completions
        if type(text) is str and text:
            pieces.append(text)
            return 1
        return 0
    found = 0
    content = delta.get("content")
    if content and type(content) is str:
        pieces.append(content)
        found = 1
    if len(delta) > (content is not None) + ("role" in delta):  # more than content and role: look further
        for name in _OTHER_TEXT:
            value = delta.get(name)
            if value is None or (name == "reasoning" and value == delta.get("reasoning_content")):
                continue  # an engine that sends both names sent one text
            if type(value) is str:
                if value:
                    pieces.append(value)
                    found += 1
            elif type(value) is list:
                found += _tool_call_text(value, pieces)
    return found


def _tool_call_text(calls: list[Any], pieces: list[str]) -> int:
    found = 0
    for call in calls:
        function = call.get("function") if type(call) is dict else None
        if type(function) is dict:
            for part in (function.get("name"), function.get("arguments")):
                if type(part) is str and part:
                    pieces.append(part)
                    found += 1
    return found


class StreamRelay:
    """Turns upstream SSE bytes into the bytes to send on, counting what was delivered.

    `completion_limit` is what admission reserved for the completion (all choices): an
    event that would take the generated tokens past it is not relayed, and `cut` tells the
    caller to stop the upstream (an engine that ignores `max_tokens` gets no free tokens).
    """

    __slots__ = (
        "_legacy",
        "_public",
        "_splitter",
        "client_continuous",
        "completion_limit",
        "cut",
        "done",
        "include_usage",
        "last_event",
        "pieces",
        "shaper",
        "started",
        "text_events",
        "usage",
    )

    def __init__(
        self,
        public_model: str,
        *,
        include_usage: bool,
        client_continuous: bool,
        completion_limit: int,
        max_event_bytes: int = 1 << 20,
        legacy: bool = False,
        echo_pieces: int = 0,
        shaper: ReasoningShaper | None = None,
    ) -> None:
        self._splitter = EventSplitter(max_event_bytes)
        self.shaper = shaper  # a reasoning model's deltas: both names, inline <think> split out, or none
        self._public = public_model
        self.include_usage = include_usage
        self.client_continuous = client_continuous  # the client itself asked for usage in every event
        self.completion_limit = completion_limit
        self.usage = Usage()
        self.pieces: list[str] = []  # the generated text delivered, for counting a stream cut short
        # Choice deltas that carried text: a floor on completion tokens. Echoed prompts that are events
        # of their own (legacy completions, echo with max_tokens 0) are not tokens: they start it below 0.
        self.text_events = -echo_pieces
        self._legacy = legacy  # /completions: closing events are `text_completion` objects
        self.done = False
        self.cut = False
        self.started = False  # the response has started: what follows is delivered and charged
        self.last_event: dict[str, Any] | None = None  # the last event relayed (its id names a closing event)

    def generated(self) -> int:
        """Completion tokens delivered so far, as far as can be told without a tokenizer (a floor)."""
        reported = self.usage.completion_tokens if self.usage.reported else 0
        return max(reported, self.text_events)

    def feed(self, chunk: bytes) -> bytes:
        """Raises `EventTooLarge` for an event over the size limit."""
        out = []
        for ev in self._splitter.feed(chunk):
            if self.cut:
                break
            payload = data_of(ev)
            if payload is None:
                continue  # comments and keep-alives carry nothing for the client
            if payload == DONE:
                self.done = True
                out.append(ev)
                continue
            relayed = self._relay_event(ev, payload)
            if relayed:
                out.append(relayed)
        return b"".join(out)

    def _relay_event(self, ev: bytes, payload: bytes) -> bytes | None:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return ev  # not ours to judge: passed on as it came
        if type(parsed) is not dict:
            return ev
        changed = False
        model = parsed.get("model")
        if model is not None and model != self._public:
            parsed["model"] = self._public
            changed = True
        choices = parsed.get("choices")
        if "usage" in parsed:
            usage = Usage()
            usage.absorb(parsed["usage"])
            if usage.reported:
                if usage.completion_tokens > self.completion_limit:
                    self.cut = True  # this event's tokens go past the reservation: not delivered, not counted
                    return None
                self.usage = usage
            elif usage.invalid:
                self.usage.invalid = True
            if not choices:  # the final usage event: only for clients that asked
                return event(orjson.dumps(parsed)) if self.include_usage else None
            if not self.client_continuous:
                del parsed["usage"]  # usage in every event was the gateway's request, not the client's
                changed = True
        if choices and type(choices) is list:
            pieces = self.pieces
            before = len(pieces)
            found = 0
            for choice in choices:
                found += _delivered_text(choice, pieces)
            if found:
                if self.text_events + found > self.completion_limit and not self.usage.reported:
                    del pieces[before:]
                    self.cut = True
                    return None
                self.text_events += found
            # Shaped after counting: what the engine generated is charged, shown or not.
            if self.shaper is not None and self.shaper.stream(choices):
                changed = True
        self.last_event = parsed
        return event(orjson.dumps(parsed)) if changed else ev

    def closing_events(self, completion_tokens: int, prompt_tokens: int) -> bytes:
        """For a stream cut at the reservation: a last chunk saying why, and the usage if asked for."""
        last_id = self.last_event.get("id") if self.last_event is not None else None
        if self._legacy:
            base: dict[str, Any] = {"id": last_id or "", "object": "text_completion", "model": self._public}
            choice: dict[str, Any] = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
        else:
            base = {"id": last_id or "", "object": "chat.completion.chunk", "model": self._public}
            choice = {"index": 0, "delta": {}, "finish_reason": "length"}
        out = [event(orjson.dumps({**base, "choices": [choice]}))]
        if self.include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            out.append(event(orjson.dumps({**base, "choices": [], "usage": usage})))
        return b"".join(out)


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
