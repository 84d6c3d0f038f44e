"""Validation of request bodies: fast, hand-written checks with OpenAI-style messages.

The body stays a dict: fields the gateway does not know pass through to the upstream
untouched (engines have many extensions), while the fields it does know are checked
here so a client gets a clear 400 naming the parameter instead of an upstream's guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshgate.protocol.errors import invalid_request

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NUMBER = (int, float)


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # from max_completion_tokens or max_tokens
    n: int


@dataclass(slots=True)
class EmbeddingRequest:
    body: dict[str, Any]
    model: str
    inputs: list[str] | list[list[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise invalid_request(f"'{name}' must be a number between {low:g} and {high:g}", param=name)


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise invalid_request(f"'{name}' must be an integer {bound}", param=name)
    return int(value)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", param="model")
    return model


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_request("the request body must be a JSON object")
    return body


def parse_chat(raw: Any) -> ChatRequest:
    body = require_object(raw)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise invalid_request(
                f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}", param=f"messages[{i}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid_request(
                f"messages[{i}].content must be a string or an array of content parts",
                param=f"messages[{i}].content",
            )
        if content is None and role in ("system", "developer", "user"):
            raise invalid_request(f"messages[{i}].content is required", param=f"messages[{i}].content")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("'stream' must be a boolean", param="stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid_request("'stream_options' must be an object", param="stream_options")
        if not stream:
            raise invalid_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        include_usage = options.get("include_usage") is True
    n = _integer(body, "n", 1, 128) or 1
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion = _integer(body, "max_completion_tokens", 1)
    if body.get("seed") is not None and not _is_int(body["seed"]):
        raise invalid_request("'seed' must be an integer", param="seed")
    _integer(body, "top_logprobs", 0, 20)
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise invalid_request("'logprobs' must be a boolean", param="logprobs")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise invalid_request("'stop' must be a string or an array of strings", param="stop")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise invalid_request("'user' must be a string", param="user")
    limit = max_completion if max_completion is not None else max_tokens
    return ChatRequest(body, model, bool(stream), include_usage, limit, n)


def parse_embeddings(raw: Any) -> EmbeddingRequest:
    body = require_object(raw)
    model = _model(body)
    value = body.get("input")
    inputs: list[Any]
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = value
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        inputs = [value]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value)
    ):
        inputs = value
    else:
        raise invalid_request(
            "'input' must be a non-empty string, array of strings, or array of token arrays", param="input"
        )
    if len(inputs) > 2048:
        raise invalid_request("'input' may hold at most 2048 items", param="input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise invalid_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    _integer(body, "dimensions", 1)
    return EmbeddingRequest(body, model, inputs)
