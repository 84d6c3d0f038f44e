"""Validation of request bodies: fast, hand-written checks with OpenAI-style messages.

The body stays a dict. Which fields may reach the engine at all is `fields.py`'s decision,
taken first, before any other work; the fields the gateway understands are then checked
here so a client gets a clear 400 naming the parameter instead of an upstream's guess.
The limits below bound the work one request can cause before admission, and
`openapi.py` publishes the same rules as a schema (the fuzz tests hold the two together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshgate.protocol.errors import invalid_request
from meshgate.protocol.features import (
    FEATURE_CHECKS,
    IMAGE_PARTS,
    MAX_IMAGES,
    Needs,
    check_top_logprobs,
    image_part,
    needs,
)
from meshgate.protocol.fields import (
    CHAT_DROPPED,
    CHAT_PASSED,
    CHAT_REFUSED,
    COMPLETIONS_DROPPED,
    COMPLETIONS_PASSED,
    COMPLETIONS_REFUSED,
    EMBEDDINGS_DROPPED,
    EMBEDDINGS_PASSED,
    EMBEDDINGS_REFUSED,
    TEMPLATE_CALL_KEYS,
    check_fields,
)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CONTENT_REQUIRED = ("system", "developer", "user")  # the roles whose message is its content
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256  # per message
MAX_N = 128
MAX_STOP = 16  # OpenAI documents 4, vLLM has no limit; an engine checks every stop string after every token
MAX_LOGIT_BIAS = 1024  # entries; applied to every sampled token of every sequence
MAX_LOGIT_BIAS_VALUE = 100  # OpenAI's range, which vLLM clamps to
MAX_TOOLS = 128  # OpenAI's limit, for `tools` and `functions`
MAX_LOGPROBS = 20  # top_logprobs and prompt_logprobs: OpenAI's 20 (vLLM's -1 is the whole vocabulary)
MAX_EMBEDDING_INPUTS = 2048
MAX_INT32 = 2**31 - 1  # token counts and ids: llama.cpp reads them as int32, larger ones wrap
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seed: vLLM's range (torch.long)
MAX_PROMPTS = 2048  # legacy completions: prompts in one request
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /completions

_ROLES = frozenset(ROLES)
_CONTENT_REQUIRED = frozenset(CONTENT_REQUIRED)
_NUMBER = (int, float)
# Floats hold integers exactly up to 2**53; orjson reads an integer beyond 64 bits as a float,
# so a larger integral float may be an out-of-range integer that was rounded: not taken as one.
_EXACT = 2**53


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # from max_completion_tokens or max_tokens
    n: int
    needs: Needs | None = None  # reasoning, tools, structured output, logprobs, images (None: plain text)


@dataclass(slots=True)
class CompletionRequest:
    body: dict[str, Any]
    model: str
    prompts: list[str] | list[list[int]]  # one per prompt: a text, or token ids
    stream: bool
    include_usage: bool
    max_tokens: int  # per choice: the client's, or 16
    n: int
    echo: bool
    suffix: str | None


@dataclass(slots=True)
class EmbeddingRequest:
    body: dict[str, Any]
    model: str
    inputs: list[str] | list[list[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _is_token(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT32  # `type` excludes bool


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise invalid_request(f"'{name}' must be a number between {low:g} and {high:g}", param=name)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is float and value.is_integer() and abs(value) <= _EXACT:
        value = body[name] = int(value)  # JSON has one number type: 2.0 is the integer 2 (as for vLLM)
    if not _is_int(value) or not low <= value <= high:
        raise invalid_request(f"'{name}' must be an integer between {low} and {high}", param=name)
    return int(value)


def _tokens(items: list[Any]) -> list[int] | None:
    """The token ids of an array (integral floats made ints), or None if it is not one."""
    if all(_is_token(v) for v in items):
        return items  # the common case: nothing to copy
    ids = [int(v) if type(v) is float and v.is_integer() else v for v in items]
    return ids if all(_is_token(v) for v in ids) else None


def _boolean(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid_request(f"'{name}' must be a boolean", param=name)


def _string(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_request(f"'{name}' must be a string", param=name)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("'model' is required and must be a string", param="model")
    return model


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_request("the request body must be a JSON object")
    return body


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """`stream_options.include_usage`, after checking `stream_options` (an object, only with `stream`)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid_request("'stream_options' must be an object", param="stream_options")
    if not stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return options.get("include_usage") is True


def parse_chat(raw: Any, extra_fields: frozenset[str] = frozenset()) -> ChatRequest:
    body = require_object(raw)
    check_fields(body, CHAT_PASSED, CHAT_DROPPED, CHAT_REFUSED, extra_fields)
    model = _model(body)
    images = _messages(body.get("messages"))
    for name in body:  # only the fields present are looked at: O(fields), one dict lookup each
        check = _CHAT_CHECKS.get(name)
        if check is not None:
            check(body, name)
    stream = body.get("stream") is True
    include_usage = _include_usage(body, stream)
    max_tokens, max_completion = body.get("max_tokens"), body.get("max_completion_tokens")
    limit = max_completion if max_completion is not None else max_tokens
    first_image = images[0] if images else None
    return ChatRequest(
        body, model, stream, include_usage, limit, body.get("n") or 1, needs(body, len(images), first_image)
    )


def _messages(messages: Any) -> list[str]:
    """Checks the messages; returns where their images are (`messages[i].content[j]`)."""
    images: list[str] = []
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid_request(f"'messages' may hold at most {MAX_MESSAGES} messages", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if type(role) is not str or role not in _ROLES:  # a dict or list is not hashable: check the type first
            raise invalid_request(f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):
            _content_parts(content, i, images)
        elif content is None:
            if role in _CONTENT_REQUIRED:
                raise invalid_request(f"messages[{i}].content is required", param=f"messages[{i}].content")
        elif not isinstance(content, str):
            raise invalid_request(
                f"messages[{i}].content must be a string or an array of content parts",
                param=f"messages[{i}].content",
            )
    if len(images) > MAX_IMAGES:
        raise invalid_request(
            f"a request may hold at most {MAX_IMAGES} images; this one has {len(images)}",
            param=images[MAX_IMAGES],
            code="too_many_images",
        )
    return images


def _content_parts(parts: list[Any], i: int, images: list[str]) -> None:
    if len(parts) > MAX_CONTENT_PARTS:
        raise invalid_request(
            f"messages[{i}].content may hold at most {MAX_CONTENT_PARTS} parts", param=f"messages[{i}].content"
        )
    for j, part in enumerate(parts):
        # Engines pick a part's handler by its type; anything else is a 500 in some of them.
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid_request(
                f"messages[{i}].content[{j}] must be an object with a string 'type'",
                param=f"messages[{i}].content[{j}]",
            )
        if part["type"] in IMAGE_PARTS:
            image_part(part, i, j)
            images.append(f"messages[{i}].content[{j}]")


def _stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid_request("'stop' must be a string or an array of strings", param="stop")
    if len(stop) > MAX_STOP:
        raise invalid_request(f"'stop' may hold at most {MAX_STOP} sequences", param="stop")


def _logit_bias(bias: Any) -> None:
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise invalid_request("'logit_bias' must be an object mapping token ids to numbers", param="logit_bias")
    if len(bias) > MAX_LOGIT_BIAS:
        raise invalid_request(f"'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
    for token, value in bias.items():
        if not (token.isascii() and token.isdigit()):
            raise invalid_request("'logit_bias' keys must be token ids (decimal digits)", param="logit_bias")
        if not _is_number(value) or not -MAX_LOGIT_BIAS_VALUE <= value <= MAX_LOGIT_BIAS_VALUE:
            raise invalid_request(
                f"'logit_bias' values must be numbers between -{MAX_LOGIT_BIAS_VALUE} and {MAX_LOGIT_BIAS_VALUE}",
                param="logit_bias",
            )


def _objects(body: dict[str, Any], name: str, limit: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise invalid_request(f"'{name}' must be an array of objects", param=name)
    if len(value) > limit:
        raise invalid_request(f"'{name}' may hold at most {limit} items", param=name)


def _template_kwargs(kwargs: Any) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise invalid_request("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    for key in kwargs:
        if key in TEMPLATE_CALL_KEYS:
            raise invalid_request(
                f"'chat_template_kwargs.{key}' is not accepted: it changes how the engine applies the template",
                param=f"chat_template_kwargs.{key}",
                code="unsupported_parameter",
            )


def _top_logprobs(body: dict[str, Any], name: str) -> None:
    _integer(body, name, 0, MAX_LOGPROBS)
    check_top_logprobs(body, name)


def _tools(body: dict[str, Any], name: str) -> None:
    _objects(body, name, MAX_TOOLS)
    FEATURE_CHECKS[name](body, name)


# The fields the gateway checks, by name: each check reads `body[name]` (None is always allowed).
_Check = Callable[[dict[str, Any], str], object]
_CHAT_CHECKS: dict[str, _Check] = {
    "stream": _boolean,
    "n": lambda body, name: _integer(body, name, 1, MAX_N),
    "temperature": lambda body, name: _number(body, name, 0, 2),
    "top_p": lambda body, name: _number(body, name, 0, 1),
    "presence_penalty": lambda body, name: _number(body, name, -2, 2),
    "frequency_penalty": lambda body, name: _number(body, name, -2, 2),
    "max_tokens": lambda body, name: _integer(body, name, 1, MAX_INT32),
    "max_completion_tokens": lambda body, name: _integer(body, name, 1, MAX_INT32),
    "seed": lambda body, name: _integer(body, name, INT64_MIN, INT64_MAX),
    "top_logprobs": lambda body, name: _top_logprobs(body, name),
    "prompt_logprobs": lambda body, name: _integer(body, name, 0, MAX_LOGPROBS),
    "logprobs": _boolean,
    "parallel_tool_calls": _boolean,
    "user": _string,
    "stop": lambda body, name: _stop(body[name]),
    "logit_bias": lambda body, name: _logit_bias(body[name]),
    "tools": lambda body, name: _tools(body, name),
    "functions": lambda body, name: _tools(body, name),
    "tool_choice": FEATURE_CHECKS["tool_choice"],
    "response_format": FEATURE_CHECKS["response_format"],
    "reasoning_content": FEATURE_CHECKS["reasoning_content"],
    "reasoning": FEATURE_CHECKS["reasoning"],
    "reasoning_effort": FEATURE_CHECKS["reasoning_effort"],
    "chat_template_kwargs": lambda body, name: _template_kwargs(body[name]),
}


def parse_embeddings(raw: Any, extra_fields: frozenset[str] = frozenset()) -> EmbeddingRequest:
    body = require_object(raw)
    check_fields(body, EMBEDDINGS_PASSED, EMBEDDINGS_DROPPED, EMBEDDINGS_REFUSED, extra_fields)
    model = _model(body)
    inputs = _batch(body, "input", MAX_EMBEDDING_INPUTS, empty_text=True)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise invalid_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    _integer(body, "dimensions", 1, MAX_INT32)
    _string(body, "user")
    return EmbeddingRequest(body, model, inputs)


def _batch(body: dict[str, Any], param: str, limit: int, *, empty_text: bool) -> list[Any]:
    """The items of an embeddings `input` or a completions `prompt`, at most `limit`: a string, or a
    flat array of token ids, is one item. The body keeps the checked value (token ids made ints)."""
    value = body[param] = _texts_or_token_ids(body.get(param), param, empty_text=empty_text)
    items = [value] if isinstance(value, str) or isinstance(value[0], int) else value
    if len(items) > limit:
        raise invalid_request(f"'{param}' may hold at most {limit} items", param=param)
    return items


def _texts_or_token_ids(value: Any, param: str, *, empty_text: bool) -> Any:
    """An embeddings `input` or a completions `prompt` as sent on (token ids made ints), checked:
    a text, texts, token ids or arrays of them (empty texts only where `empty_text`)."""
    if isinstance(value, str) and (value or empty_text):
        return value
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            if all(isinstance(v, str) and (v or empty_text) for v in value):
                return value
        elif isinstance(first, list):
            arrays = [_tokens(v) if isinstance(v, list) and v else None for v in value]
            if all(ids is not None for ids in arrays):
                return arrays
        elif (ids := _tokens(value)) is not None:
            return ids
    texts = "array of strings" if empty_text else "array of non-empty strings"
    raise invalid_request(
        f"'{param}' must be a non-empty string, {texts}, or (array of) non-empty token arrays "
        f"(token ids between 0 and {MAX_INT32})",
        param=param,
    )


# ---------------------------------------------------------------- legacy completions


def parse_completions(raw: Any, extra_fields: frozenset[str] = frozenset()) -> CompletionRequest:
    """`POST /completions`: a prompt (text, texts, token ids or arrays of them) instead of messages."""
    body = require_object(raw)
    check_fields(body, COMPLETIONS_PASSED, COMPLETIONS_DROPPED, COMPLETIONS_REFUSED, extra_fields)
    model = _model(body)
    prompts = _batch(body, "prompt", MAX_PROMPTS, empty_text=False)
    for name in body:
        check = _COMPLETIONS_CHECKS.get(name)
        if check is not None:
            check(body, name)
    stream = body.get("stream") is True
    include_usage = _include_usage(body, stream)
    n = body.get("n") or 1
    echo = body.get("echo") is True
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    elif max_tokens == 0 and not echo:  # 0 only scores an echoed prompt (with logprobs), as in vLLM
        raise invalid_request("'max_tokens' must be at least 1 unless 'echo' is true", param="max_tokens")
    suffix = body.get("suffix")
    return CompletionRequest(body, model, prompts, stream, include_usage, max_tokens, n, echo, suffix)


_COMPLETIONS_CHECKS: dict[str, _Check] = {
    **{name: check for name, check in _CHAT_CHECKS.items() if name in COMPLETIONS_PASSED and name != "logprobs"},
    "max_tokens": lambda body, name: _integer(body, name, 0, MAX_INT32),
    "logprobs": lambda body, name: _integer(body, name, 0, MAX_LOGPROBS),
    "echo": _boolean,
    "suffix": _string,
}
