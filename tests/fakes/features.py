"""The fake engine's answers with features beyond text: reasoning, tool calls, images, logprobs, refusals.

Steered by `mock` keys (tests/fakes/upstream.py hands a request here when it has one of them,
or asks for logprobs):

- "reasoning": TEXT — the model reasons TEXT (one token per word) before its answer;
  "reasoning_field": "reasoning" (vLLM since the rename, the default), "reasoning_content"
  (older vLLM, llama.cpp) or "think" (inline `<think>…</think>` in the content, the tags cut
  across stream events); "reasoning_tokens": true reports `completion_tokens_details.reasoning_tokens`.
- "tool_calls": [{"name": N, "arguments": "{...}"}, ...] — the answer calls these tools
  (finish_reason "tool_calls"); streamed as vLLM does: the name first, the arguments in pieces.
- "image_tokens": N — each image part of the messages costs N prompt tokens.
- "reject": MESSAGE — a 400 as vLLM answers a request it cannot serve.
- `logprobs: true` in the request: a logprob per token, `top_logprobs` alternatives each.

Reasoning and answer words are the completion's tokens, cut at max_tokens together; a stream
waits `delay_ms` before each event, as the plain answers do per token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.fakes import chunks

KEYS = ("reasoning", "tool_calls", "image_tokens", "reject")


def wanted(request: dict[str, Any], mock: dict[str, Any]) -> bool:
    return request.get("logprobs") is True or any(key in mock for key in KEYS)


def _images(messages: list[dict[str, Any]]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return count


def _logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    content = []
    for i, token in enumerate(tokens):
        alternatives = [{"token": token, "logprob": -0.1 * (i + 1), "bytes": list(token.encode())}]
        alternatives += [
            {"token": f"alt{k}", "logprob": -1.0 - k, "bytes": list(f"alt{k}".encode())} for k in range(1, top)
        ]
        content.append(
            {
                "token": token,
                "logprob": -0.1 * (i + 1),
                "bytes": list(token.encode()),
                "top_logprobs": alternatives[:top],
            }
        )
    return {"content": content}


class Plan:
    """What one request's answer is: reasoning words, answer words, tool calls, usage."""

    def __init__(self, request: dict[str, Any], mock: dict[str, Any], reply: list[str], prompt: int) -> None:
        limit = request.get("max_tokens") or request.get("max_completion_tokens") or 1 << 30
        words = str(mock.get("reasoning", "")).split()
        self.reasoning = words[:limit]
        self.answer = reply[: max(limit - len(self.reasoning), 0)]
        self.field = str(mock.get("reasoning_field", "reasoning"))
        self.tool_calls: list[dict[str, str]] = list(mock.get("tool_calls") or [])
        if self.tool_calls:
            self.answer = []  # a tool call is the whole answer
        self.prompt = prompt + _images(request["messages"]) * int(mock.get("image_tokens", 0))
        tags = 2 if self.field == "think" and self.reasoning else 0  # <think> and </think>: a token each
        self.completion = len(self.reasoning) + len(self.answer) + len(self.tool_calls) + tags
        self.report_reasoning = bool(mock.get("reasoning_tokens"))
        self.delay = float(mock.get("delay_ms", 0)) / 1000  # before each event of a stream
        self.top = int(request.get("top_logprobs") or 0) if request.get("logprobs") is True else -1
        cut = len(self.reasoning) + len(self.answer) < len(words) + len(reply)
        self.finish = "tool_calls" if self.tool_calls else "length" if cut else "stop"

    def usage(self, completion: int | None = None) -> dict[str, Any]:
        done = self.completion if completion is None else completion
        usage: dict[str, Any] = chunks.usage(self.prompt, done)
        if self.report_reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": min(len(self.reasoning), done)}
        return usage

    def message(self) -> dict[str, Any]:
        content = " ".join(self.answer)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning:
            text = " ".join(self.reasoning)
            if self.field == "think":
                message["content"] = f"<think>{text}</think>\n\n{content}"
            else:
                message[self.field] = text
        if self.tool_calls:
            message["content"] = content or None
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for i, c in enumerate(self.tool_calls)
            ]
        return message

    def deltas(self) -> list[tuple[dict[str, Any], int]]:
        """(delta, tokens it carries) for a stream, in order."""
        out: list[tuple[dict[str, Any], int]] = []
        if self.field == "think" and self.reasoning:
            # the tags cut in two across events, as a tokenizer may cut them
            out.append(({"content": "<thi"}, 1))  # a tag is a token; its text may come in two events
            for i, word in enumerate(self.reasoning):
                out.append(({"content": ("nk>" if i == 0 else " ") + word}, 1))
            out.append(({"content": "</th"}, 1))
            first = True
            for word in self.answer:
                out.append(({"content": ("ink>\n\n" if first else " ") + word}, 1))
                first = False
            if first:
                out.append(({"content": "ink>"}, 0))
        else:
            for i, word in enumerate(self.reasoning):
                out.append(({self.field: word if i == 0 else " " + word}, 1))
            for i, word in enumerate(self.answer):
                out.append(({"content": word if i == 0 else " " + word}, 1))
        for i, call in enumerate(self.tool_calls):
            head = {
                "index": i,
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            out.append(({"tool_calls": [head]}, 1))
            arguments = call["arguments"]
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                out.append(({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, 0))
        return out


async def answer(engine: Any, request: dict[str, Any], mock: dict[str, Any], receive: Any, send: Any) -> None:
    from tests.fakes.upstream import prompt_tokens  # the fake's own prompt count

    if "reject" in mock:
        error = {
            "object": "error",
            "message": str(mock["reject"]),
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
        return await engine._json(send, 400, error)
    plan = Plan(request, mock, engine._tokens({}, {k: v for k, v in mock.items() if k not in KEYS}), 0)
    plan.prompt += prompt_tokens(request["messages"])
    if request.get("stream"):
        return await _stream(engine, request, plan, receive, send)
    choice: dict[str, Any] = {"index": 0, "message": plan.message(), "logprobs": None, "finish_reason": plan.finish}
    if plan.top >= 0:
        choice["logprobs"] = _logprobs(plan.reasoning + plan.answer, plan.top)
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [choice],
        "usage": plan.usage(),
    }
    engine.stats["completed"] += 1
    await engine._json(send, 200, body)


async def _stream(engine: Any, request: dict[str, Any], plan: Plan, receive: Any, send: Any) -> None:
    options = request.get("stream_options") or {}
    continuous = bool(options.get("continuous_usage_stats"))
    gone = asyncio.ensure_future(receive())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    generated = 0

    async def emit(content: dict[str, Any], finish: str | None, logprobs: Any = None) -> None:
        used = plan.usage(generated) if continuous else None
        event = chunks.chunk(request["model"], [chunks.delta(content, finish, logprobs)], used)
        await send({"type": "http.response.body", "body": event, "more_body": True})

    await emit({"role": "assistant", "content": ""}, None)
    words = iter(plan.reasoning + plan.answer)
    for delta, tokens in plan.deltas():
        if gone.done():
            engine.stats["cancelled"] += 1
            return
        if plan.delay:
            await asyncio.sleep(plan.delay)
        generated += tokens
        logprobs = None
        if plan.top >= 0 and tokens and "tool_calls" not in delta:
            logprobs = _logprobs([next(words, "")], plan.top)
        await emit(delta, None, logprobs)
    await emit({}, plan.finish)
    if options.get("include_usage"):
        final = chunks.chunk(request["model"], [], plan.usage())
        await send({"type": "http.response.body", "body": final, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    gone.cancel()
    engine.stats["completed"] += 1
