"""The fake engine's stream events, as vLLM writes them: one chunk builder for every stream it sends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson


def chunk(
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
    encode: Callable[[Any], bytes] = orjson.dumps,
) -> bytes:
    """One `chat.completion.chunk` SSE event; `choices=[]` with `usage` is the final usage event."""
    payload: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + encode(payload) + b"\n\n"


def delta(content: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
    """The one choice of a streamed chat answer."""
    return {"index": 0, "delta": content, "logprobs": logprobs, "finish_reason": finish}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
