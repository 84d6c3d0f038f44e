"""A fake OpenAI-compatible engine for tests: stands in for a GPU server (vLLM-shaped answers).

Each request may carry a `mock` object (the tests' gateways let it through: MESHGATE_EXTRA_FIELDS) to
steer it: {"delay_ms": per-token delay, "status": answer with this error status,
"hang": never answer, "drop_after": close the connection after N stream events,
"no_usage": leave usage out}. The answer is the words of `REPLY`, one token each,
cut at max_tokens. Misbehaviours, for fault tests: "ignore_max_tokens": N (generate N
tokens whatever max_tokens says), "words_per_event": K (K tokens per stream event),
"no_continuous": true (no running usage in events, like llama.cpp or TGI), "spaced":
true (events spelled with spaces, `"content": "..."`), "stall_after": N (silence after N
content events), "trickle_ms": T (a plain answer one byte every T ms), "huge_json_mb": M,
"huge_event_mb": M (an SSE event of M MB that never ends), "bad_usage": V (V as the
completion token count), "reply": TEXT (answer TEXT instead of `REPLY`, one token per word with its
leading whitespace, streamed verbatim: Markdown and HTML for the web chat's tests). `POST /mock/defaults`
sets a `mock` object for the requests that carry none (the web chat builds its bodies itself).
A plain request whose client leaves while the fake works on it
(delay_ms, hang) counts as `cancelled`. Prompt tokens are the words of all messages plus 4 per message.
Reasoning, tool calls, image tokens, logprobs and refusals: tests/fakes/features.py.
`GET /mock/stats` tells what the engine saw, including streams cancelled by the client.

`POST /v1/completions` answers legacy completions as vLLM does (prompt tokens: words + 2 per
text prompt, the ids of a token prompt; `echo`, `n`, lists of prompts, `logprobs`, streams).

`POST /tokenize` at the root counts like vLLM's: `{"messages"}` exactly as the chat usage,
`{"prompt"}` as the embeddings usage (words + 2), answering `{"count", "max_model_len",
"tokens"}`. It honours `mock` at the top level or on a message (a gateway forwards only the
messages there); its calls are counted in `tokenize_calls`, apart from `requests`.

Run: python -m tests.fakes.upstream --port N [--name NAME] [--no-tokenize] [--max-model-len N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import struct
import time
from typing import Any

import orjson
import uvicorn

from tests.fakes import chunks, features

REPLY = [
    "This",
    "is",
    "a",
    "test",
    "of",
    "the",
    "meshgate",
    "gateway",
    ",",
    "counting",
    "one",
    "token",
    "per",
    "word",
    "until",
    "the",
    "end",
]
EMBED_DIM = 8


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") or ""
        text = content if isinstance(content, str) else " ".join(str(p.get("text", "")) for p in content)
        total += len(text.split()) + 4
    return total


def completion_prompt_tokens(prompt: str | list[int], suffix: str | None = None) -> int:
    """A /completions prompt's tokens: its words + 2 (as /tokenize counts a prompt), or its token ids."""
    count = len(prompt) if isinstance(prompt, list) else len(prompt.split()) + 2
    return count + (len(suffix.split()) if suffix else 0)


def embed(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 128 for b in digest[:EMBED_DIM]]


class FakeEngine:
    def __init__(self, name: str, tokenize: bool = True, max_model_len: int = 131072) -> None:
        self.name = name
        self.tokenize = tokenize
        self.max_model_len = max_model_len
        self.stats: dict[str, Any] = {
            "requests": 0,
            "completed": 0,
            "cancelled": 0,
            "in_flight": 0,
            "max_in_flight": 0,
            "last_body": None,
            "bodies": [],
            "tokenize_calls": 0,
            "last_tokenize_body": None,
        }
        self.defaults: dict[str, Any] = {}  # the `mock` of requests that carry none (POST /mock/defaults)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/mock/stats":
            return await self._json(send, 200, {k: v for k, v in self.stats.items() if k != "bodies"})
        if method == "GET" and path == "/metrics":  # vLLM's gauges: running is what the fake has in flight
            return await self._metrics(send)
        if method == "GET" and path in ("/health", "/v1/models"):
            return await self._json(send, 200, {"object": "list", "data": [{"id": self.name, "object": "model"}]})
        body = await self._body(receive)
        if method == "POST" and path == "/mock/defaults":
            self.defaults = orjson.loads(body) or {}
            return await self._json(send, 200, self.defaults)
        if method == "POST" and path == "/tokenize":
            return await self._tokenize(orjson.loads(body), receive, send)
        request = orjson.loads(body)
        self.stats["requests"] += 1
        self.stats["last_body"] = request
        self.stats["bodies"] = ([*self.stats["bodies"], request])[-50:]
        self.stats["in_flight"] += 1
        self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.stats["in_flight"])
        try:
            mock = request.get("mock") or self.defaults
            if mock.get("hang"):
                await self._until_gone(receive, 3600)
                return
            if "status" in mock:
                error = {"error": {"message": f"mock failure {mock['status']}", "type": "mock", "code": None}}
                return await self._json(send, int(mock["status"]), error)
            if path == "/v1/completions":
                return await self._completions(request, mock, receive, send)
            if path == "/v1/chat/completions":
                if features.wanted(request, mock):  # reasoning, tool calls, images, logprobs, refusals
                    return await features.answer(self, request, mock, receive, send)
                if request.get("stream"):
                    return await self._stream(request, mock, receive, send)
                return await self._chat(request, mock, receive, send)
            if path == "/v1/embeddings":
                return await self._embeddings(request, send)
            await self._json(send, 404, {"error": {"message": "not found", "type": "not_found"}})
        finally:
            self.stats["in_flight"] -= 1

    @staticmethod
    async def _body(receive: Any) -> bytes:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body

    async def _tokenize(self, request: dict[str, Any], receive: Any, send: Any) -> None:
        self.stats["tokenize_calls"] += 1
        self.stats["last_tokenize_body"] = request
        if not self.tokenize:  # an engine without the route: FastAPI's own 404
            return await self._json(send, 404, {"detail": "Not Found"})
        messages = request.get("messages")
        mock = request.get("mock") or {}
        for message in messages or ():
            mock = mock or message.get("mock") or {}
        if mock.get("hang"):
            await receive()  # http.disconnect: hang until the client gives up
            return
        if "status" in mock:
            error = {"error": {"message": f"mock failure {mock['status']}", "type": "mock", "code": mock["status"]}}
            return await self._json(send, int(mock["status"]), error)
        if isinstance(messages, list):
            count = prompt_tokens(messages)
        elif isinstance(request.get("prompt"), str):
            special = request.get("add_special_tokens", True)
            count = len(request["prompt"].split()) + (2 if special else 0)
        else:
            error = {"error": {"message": "either messages or prompt is required", "type": "BadRequestError"}}
            return await self._json(send, 400, error)
        # vLLM's field order: the count comes before the (possibly huge) token ids.
        await self._json(send, 200, {"count": count, "max_model_len": self.max_model_len, "tokens": list(range(count))})

    async def _until_gone(self, receive: Any, seconds: float) -> bool:
        """Wait up to `seconds` for the client to hang up; True (and counted as cancelled) if it did."""
        try:
            await asyncio.wait_for(receive(), seconds)
        except TimeoutError:
            return False
        self.stats["cancelled"] += 1
        return True

    @staticmethod
    def _reply(mock: dict[str, Any]) -> list[str]:
        """The whole answer's tokens: `REPLY`'s words, or those of `mock.reply` with their leading whitespace."""
        if isinstance(mock.get("reply"), str):
            return re.findall(r"\s*\S+", mock["reply"]) or [""]
        return REPLY

    @staticmethod
    def _joiner(mock: dict[str, Any]) -> str:
        return "" if isinstance(mock.get("reply"), str) else " "

    @classmethod
    def _tokens(cls, request: dict[str, Any], mock: dict[str, Any]) -> list[str]:
        reply = cls._reply(mock)
        if mock.get("ignore_max_tokens"):
            return [reply[i % len(reply)] for i in range(int(mock["ignore_max_tokens"]))]
        limit = request.get("max_tokens") or request.get("max_completion_tokens") or len(reply)
        return reply[: min(limit, len(reply))]

    async def _chat(self, request: dict[str, Any], mock: dict[str, Any], receive: Any, send: Any) -> None:
        tokens = self._tokens(request, mock)
        delay = mock.get("delay_ms", 0) * len(tokens) / 1000
        if delay and await self._until_gone(receive, delay):
            return
        prompt = prompt_tokens(request["messages"])
        n = request.get("n") or 1
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": self._joiner(mock).join(tokens)},
                    "logprobs": None,
                    "finish_reason": "length" if len(tokens) < len(self._reply(mock)) else "stop",
                    "stop_reason": None,
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(tokens) * n,
                "total_tokens": prompt + len(tokens) * n,
                "prompt_tokens_details": None,
            },
            "prompt_logprobs": None,
        }
        if mock.get("no_usage"):
            del answer["usage"]
        elif "bad_usage" in mock:
            answer["usage"]["completion_tokens"] = mock["bad_usage"]
        if mock.get("huge_json_mb"):
            answer["padding"] = "x" * int(mock["huge_json_mb"] * 1024 * 1024)
        self.stats["completed"] += 1
        if mock.get("trickle_ms"):
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            for byte in orjson.dumps(answer):
                if await self._until_gone(receive, mock["trickle_ms"] / 1000):
                    return
                await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._json(send, 200, answer)

    async def _stream(self, request: dict[str, Any], mock: dict[str, Any], receive: Any, send: Any) -> None:
        tokens = self._tokens(request, mock)
        prompt = prompt_tokens(request["messages"])
        options = request.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats")) and not mock.get("no_continuous")
        per_event = int(mock.get("words_per_event", 1))
        encode = (lambda value: json.dumps(value).encode()) if mock.get("spaced") else orjson.dumps
        gone = asyncio.ensure_future(receive())  # http.disconnect when the client hangs up
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})

        def chunk(content: dict[str, Any], finish: str | None, generated: int) -> bytes:
            used = chunks.usage(prompt, generated) if continuous else None
            return chunks.chunk(request["model"], [chunks.delta(content, finish)], used, encode)

        events = [chunk({"role": "assistant", "content": ""}, None, 0)]
        await send({"type": "http.response.body", "body": events[0], "more_body": True})
        if mock.get("huge_event_mb"):
            piece = b"data: " + b"x" * 65535
            for _ in range(int(mock["huge_event_mb"] * 16)):
                if gone.done():
                    self.stats["cancelled"] += 1
                    return
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await gone
            return
        delay = mock.get("delay_ms", 0) / 1000
        for i in range(0, len(tokens), per_event):
            if delay:
                await asyncio.sleep(delay)
            if gone.done():
                self.stats["cancelled"] += 1
                return
            if mock.get("drop_after") is not None and i >= mock["drop_after"]:
                raise RuntimeError("mock: dropping the connection mid-stream")
            if mock.get("stall_after") is not None and i >= mock["stall_after"] * per_event:
                await gone
                self.stats["cancelled"] += 1
                return
            joiner = self._joiner(mock)
            text = joiner.join(tokens[i : i + per_event])
            text = text if i == 0 or not joiner else " " + text
            generated = min(i + per_event, len(tokens))
            await send(
                {"type": "http.response.body", "body": chunk({"content": text}, None, generated), "more_body": True}
            )
        finish = "length" if len(tokens) < len(self._reply(mock)) else "stop"
        await send({"type": "http.response.body", "body": chunk({}, finish, len(tokens)), "more_body": True})
        if options.get("include_usage") and not mock.get("no_usage"):
            final = chunks.chunk(request["model"], [], chunks.usage(prompt, len(tokens)))
            await send({"type": "http.response.body", "body": final, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        gone.cancel()
        self.stats["completed"] += 1

    async def _completions(self, request: dict[str, Any], mock: dict[str, Any], receive: Any, send: Any) -> None:
        """Legacy completions as vLLM answers them: one prompt or many, `n` choices each (index prompt × n + i),
        `echo` puts the prompt before the text (max_tokens 0: the prompt alone), usage summed over all."""
        value = request["prompt"]
        prompts = [value] if isinstance(value, str) or isinstance(value[0], int) else value
        n = request.get("n") or 1
        limit = request.get("max_tokens", 16)
        reply = REPLY
        tokens = reply[: min(limit, len(reply))]
        if mock.get("ignore_max_tokens"):
            tokens = [reply[i % len(reply)] for i in range(int(mock["ignore_max_tokens"]))]
        finish = "length" if len(tokens) < len(reply) else "stop"
        counts = [completion_prompt_tokens(p, request.get("suffix")) for p in prompts]
        texts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
        echo = request.get("echo") is True
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": request["model"]}
        total_prompt, total_completion = sum(counts), len(tokens) * n * len(prompts)
        usage = {
            "prompt_tokens": total_prompt,
            "completion_tokens": total_completion,
            "total_tokens": total_prompt + total_completion,
        }
        if not request.get("stream"):
            choices = []
            for p, text in enumerate(texts):
                for i in range(n):
                    choice: dict[str, Any] = {
                        "index": p * n + i,
                        "text": (text if echo else "") + "".join(" " + t for t in tokens),
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                    if request.get("logprobs") is not None:
                        choice["logprobs"] = {
                            "tokens": tokens,
                            "token_logprobs": [-0.5] * len(tokens),
                            "top_logprobs": [{t: -0.5} for t in tokens],
                            "text_offset": list(range(len(tokens))),
                        }
                    choices.append(choice)
            answer: dict[str, Any] = {**base, "choices": choices, "usage": usage}
            if mock.get("no_usage"):
                del answer["usage"]
            self.stats["completed"] += 1
            return await self._json(send, 200, answer)
        options = request.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats")) and not mock.get("no_continuous")
        gone = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        delay = mock.get("delay_ms", 0) / 1000

        def chunk(index: int, text: str, finish_reason: str | None, prompt: int, generated: int) -> bytes:
            payload: dict[str, Any] = {
                **base,
                "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            }
            if continuous:  # vLLM: the usage of this choice so far
                payload["usage"] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": generated,
                    "total_tokens": prompt + generated,
                }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        for p, text in enumerate(texts):
            for i in range(n):
                index = p * n + i
                pieces = [" " + t for t in tokens]
                if echo:
                    pieces = [text + pieces[0], *pieces[1:]] if pieces else [text]
                for k, piece in enumerate(pieces):
                    if delay:
                        await asyncio.sleep(delay)
                    if gone.done():
                        self.stats["cancelled"] += 1
                        return
                    generated = min(k + 1, len(tokens))
                    body = chunk(index, piece, None, counts[p], generated)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                body = chunk(index, "", finish, counts[p], len(tokens))
                await send({"type": "http.response.body", "body": body, "more_body": True})
        if options.get("include_usage") and not mock.get("no_usage"):
            final = b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            await send({"type": "http.response.body", "body": final, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        gone.cancel()
        self.stats["completed"] += 1

    async def _embeddings(self, request: dict[str, Any], send: Any) -> None:
        value = request["input"]
        flat_tokens = isinstance(value, list) and all(isinstance(v, int) for v in value)
        inputs = value if isinstance(value, list) and not flat_tokens else [value]
        data = []
        total = 0
        for i, text in enumerate(inputs):
            text = text if isinstance(text, str) else " ".join(map(str, text))
            total += len(text.split()) + 2
            vector = embed(text)
            value: Any = vector
            if request.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        self.stats["completed"] += 1
        await self._json(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": request["model"],
                "usage": {"prompt_tokens": total, "total_tokens": total},
            },
        )

    async def _metrics(self, send: Any) -> None:
        label = f'{{model_name="{self.name}"}}'
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(self.stats['in_flight'])}\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} 0.0\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{label} {min(self.stats['in_flight'] / 100, 1.0)}\n"
        )
        headers = [(b"content-type", b"text/plain; version=0.0.4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": text.encode()})

    @staticmethod
    async def _json(send: Any, status: int, payload: Any) -> None:
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake-model")
    parser.add_argument("--no-tokenize", action="store_true", help="answer 404 on /tokenize, like an engine without it")
    parser.add_argument("--max-model-len", type=int, default=131072, help="the max_model_len /tokenize reports")
    args = parser.parse_args()
    uvicorn.run(
        FakeEngine(args.name, not args.no_tokenize, args.max_model_len),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
