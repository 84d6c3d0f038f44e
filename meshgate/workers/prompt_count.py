"""Exact prompt token counts from the engines that can count them, learned per replica.

Admission bounds a prompt from above by its bytes (`catalog/tokens.py`); when that bound does
not fit (the context, the quota), the engine's own count decides. Two shapes of engine:

- **llama.cpp** (local workers): `POST /apply-template` renders the conversation with the
  model's template, `POST /tokenize` (`content`) tokenizes it: the same steps as a completion.
- **vLLM / SGLang** (remote): `POST /tokenize` at the server root (beside `/v1`). vLLM takes
  `{"model", "messages", "tools", "add_generation_prompt"}` (chat template applied, as for a
  chat completion) or `{"model", "prompt"}`, and answers `{"count", "max_model_len", "tokens"}`.
  It does not check the context length there, so a too-long prompt gets its true count.

Counting is never on the fast path and never trusted blindly: every call has a short deadline
and a cap on the answer it reads, and any failure gives None (the caller keeps the byte bound,
never an undercount). A replica that does not serve the route (404/405/501/401/403, or refuses
the connection) is remembered as such and not asked again before `retry_after` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import orjson

from meshgate.workers.http_client import HttpClient, Origin, UpstreamConnectError, UpstreamResponse
from meshgate.workers.pool import Replica, ReplicaSet

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRY_AFTER = 600.0  # a replica without /tokenize is asked again this rarely
DEFAULT_CONNECT_RETRY_AFTER = 30.0  # a refused connection is more often a restart than a missing route
MAX_RESPONSE_BYTES = 1 << 20  # vLLM returns the token ids: ~6-7 bytes each, ~650 KB for 100k tokens
MAX_TEXTS = 256  # embeddings inputs counted one call each; beyond this the bound is good enough
TEXT_CONCURRENCY = 4
BODY_REJECTIONS = 3  # consecutive 400/422 for one request shape: the engine does not take that shape

_ROUTE_MISSING = frozenset({404, 405, 501})  # no such route, or not implemented for this model
_ROUTE_FORBIDDEN = frozenset({401, 403})  # a proxy or key that only lets /v1 through
_BODY_REJECTED = frozenset({400, 422})
_MEDIA_FREE_PARTS = frozenset({"text"})
_MAX_MODEL_LEN = 1 << 40  # SGLang reports the tokenizer's `model_max_length`, a 1e30 sentinel when unset
_HEAD_FIELD = re.compile(rb'"(count|max_model_len)"\s*:\s*(-?\d+)')
_HEAD_SCAN = 4096  # vLLM puts count and max_model_len before the token ids


@dataclass(frozen=True, slots=True)
class Count:
    tokens: int
    max_model_len: int | None = None  # what the engine will accept, where it says


class PromptCounter(Protocol):
    async def count_chat(self, body: dict[str, Any]) -> Count | None:
        """The chat prompt's tokens as the model will see them, or None if they cannot be counted."""
        ...

    async def count_texts(self, texts: list[str], special: bool = True) -> list[int] | None:
        """Tokens of each text, or None if any of them cannot be counted.

        `special`: with the special tokens an input gets (BOS/EOS: embeddings inputs); without
        them for generated text (a completion's tokens).
        """
        ...


def counter_for(
    client: HttpClient,
    replica: Replica,
    engine_kind: str | None,
    *,
    catalog_context: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PromptCounter | None:
    """The counter for a replica: llama.cpp's endpoints for local GGUF workers, /tokenize for the rest.

    `engine_kind` is a local worker's engine ("llama.cpp", "sentence-transformers") or None for a
    remote engine (vLLM, SGLang, or anything OpenAI-compatible: one without /tokenize is learned).
    """
    if engine_kind == "llama.cpp":
        return LlamaCppPromptCounter(client, replica, timeout=timeout)
    if engine_kind == "sentence-transformers":
        return None  # our embeddings worker has no tokenizer endpoint; its usage is exact anyway
    return TokenizeCounter(client, replica, catalog_context=catalog_context, timeout=timeout)


class PoolCounter:
    """Counts with the replica routing would pick now (the least loaded healthy one).

    Replicas of one model share its tokenizer, so any of them gives the count; each replica's
    counter is made on first use (replicas may join after the route was built).
    """

    def __init__(self, replicas: ReplicaSet, make: Callable[[Replica], PromptCounter | None]) -> None:
        self._replicas = replicas
        self._make = make
        self._counters: dict[Replica, PromptCounter | None] = {}

    def _counter(self) -> PromptCounter | None:
        replica = self._replicas.pick()
        if replica is None:
            return None
        counters = self._counters
        if replica not in counters:
            if len(counters) >= len(self._replicas.replicas):  # registered workers left: forget their counters
                members = set(self._replicas.replicas)
                for gone in [r for r in counters if r not in members]:
                    del counters[gone]
            counters[replica] = self._make(replica)
        return counters[replica]

    async def count_chat(self, body: dict[str, Any]) -> Count | None:
        counter = self._counter()
        return await counter.count_chat(body) if counter is not None else None

    async def count_texts(self, texts: list[str], special: bool = True) -> list[int] | None:
        counter = self._counter()
        return await counter.count_texts(texts, special) if counter is not None else None


class TokenizeCounter:
    """vLLM/SGLang-style `POST /tokenize` for one replica, remembering whether the replica serves it."""

    def __init__(
        self,
        client: HttpClient,
        replica: Replica,
        *,
        catalog_context: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        connect_retry_after: float = DEFAULT_CONNECT_RETRY_AFTER,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._replica = replica
        self._root = _root_of(replica.origin)
        self._catalog_context = catalog_context
        self._timeout = timeout
        self._retry_after = retry_after
        self._connect_retry_after = connect_retry_after
        self._max_bytes = max_response_bytes
        self._clock = clock
        self._until = {"chat": 0.0, "prompt": 0.0}  # per request shape: not asked before this time
        self._rejections = {"chat": 0, "prompt": 0}
        self._warned_context = False
        self.supported: bool | None = None  # None until the replica has answered the route once

    async def count_chat(self, body: dict[str, Any]) -> Count | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not _media_free(messages):
            # Images/audio: the engine would fetch and decode them just to count; the bound has an allowance.
            return None
        payload: dict[str, Any] = {
            "model": self._replica.spec.model,
            "messages": messages,
            # As /v1/chat/completions renders it (vLLM's default there is True as well).
            "add_generation_prompt": body.get("add_generation_prompt", True),
        }
        if body.get("tools"):
            payload["tools"] = body["tools"]
        for key in ("continue_final_message", "chat_template", "chat_template_kwargs", "add_special_tokens"):
            if body.get(key) is not None:
                payload[key] = body[key]
        return await self._tokenize("chat", payload)

    async def count_texts(self, texts: list[str], special: bool = True) -> list[int] | None:
        if not texts:
            return []
        if len(texts) > MAX_TEXTS or not self._may_ask("prompt"):
            return None
        model = self._replica.spec.model

        async def one(text: str) -> int | None:
            # add_special_tokens defaults to True for a prompt: BOS/EOS as an embedding request adds them.
            payload = {"model": model, "prompt": text, "add_special_tokens": special}
            counted = await self._tokenize("prompt", payload)
            return None if counted is None else counted.tokens

        return await _count_each(texts, one, self._timeout)

    # -- one call, and what it teaches about the replica

    def _may_ask(self, shape: str) -> bool:
        return self._replica.available(time.monotonic()) and self._clock() >= self._until[shape]

    async def _tokenize(self, shape: str, payload: dict[str, Any]) -> Count | None:
        if not self._may_ask(shape):
            return None
        try:
            async with asyncio.timeout(self._timeout):
                status, data, complete = await _post(
                    self._client, self._replica, self._root, b"/tokenize", payload, self._max_bytes
                )
        except UpstreamConnectError:
            self._unsupported(self._connect_retry_after, "refuses connections")
            return None
        except Exception as exc:  # a timeout, a closed connection, a bad answer: this call only
            log.debug("tokenize on %s failed: %r", self._replica.spec.url, exc)
            return None
        if status == 200:
            counted = _parse_count(data, complete)
            if counted is not None:
                self._answered(shape, counted)
            return counted
        detail = _snippet(data)
        if status in _ROUTE_MISSING or status in _ROUTE_FORBIDDEN:
            self._unsupported(self._retry_after, f"answers /tokenize with {status} {detail}")
        elif status in _BODY_REJECTED:
            # This request's body (a template error, a bad message): chat/completions would fail the
            # same way and say so itself. A run of them means the engine takes no such shape (SGLang
            # without chat tokenization), so that shape is left alone for a while.
            self._rejections[shape] += 1
            if self._rejections[shape] >= BODY_REJECTIONS:
                self._rejections[shape] = 0
                self._until[shape] = self._clock() + self._retry_after
                log.info(
                    "%s rejects %s bodies on /tokenize (%s): not asked for %.0f s",
                    self._name,
                    shape,
                    detail,
                    self._retry_after,
                )
        else:
            log.debug("tokenize on %s answered %d %s", self._name, status, detail)
        return None

    def _answered(self, shape: str, counted: Count) -> None:
        self._rejections[shape] = 0
        if self.supported is not True:
            log.info("%s counts prompts on /tokenize", self._name)
            self.supported = True
        limit, catalog = counted.max_model_len, self._catalog_context
        if limit is not None and catalog is not None and limit < catalog and not self._warned_context:
            self._warned_context = True
            log.warning(
                "%s accepts %d tokens (max_model_len) but the catalog says the model's context is %d: "
                "prompts between the two will be refused by the engine",
                self._name,
                limit,
                catalog,
            )

    def _unsupported(self, retry_after: float, why: str) -> None:
        until = self._clock() + retry_after
        self._until = {shape: until for shape in self._until}
        if self.supported is not False:
            log.info("%s %s: prompts are bounded, not counted; asked again in %.0f s", self._name, why, retry_after)
        self.supported = False

    @property
    def _name(self) -> str:
        return f"{self._replica.spec.url} ({self._replica.spec.model})"


class LlamaCppPromptCounter:
    """llama.cpp's server: `/apply-template` then `/tokenize`, the steps of a completion (~1 ms on loopback).

    Local workers always have both endpoints; there is nothing to learn, only failures to survive.
    """

    def __init__(
        self,
        client: HttpClient,
        replica: Replica,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client
        self._replica = replica
        self._root = _root_of(replica.origin)
        self._timeout = timeout
        self._max_bytes = max_response_bytes

    async def count_chat(self, body: dict[str, Any]) -> Count | None:
        if not self._replica.healthy:
            return None
        template_request: dict[str, Any] = {"messages": body["messages"]}
        if body.get("tools"):
            template_request["tools"] = body["tools"]
        rendered = await self._call(b"/apply-template", template_request)
        prompt = rendered.get("prompt") if rendered else None
        if not isinstance(prompt, str):
            return None
        tokens = await self._tokens(prompt)
        return None if tokens is None else Count(tokens)

    async def count_texts(self, texts: list[str], special: bool = True) -> list[int] | None:
        if not texts:
            return []
        if len(texts) > MAX_TEXTS or not self._replica.healthy:
            return None

        async def one(text: str) -> int | None:
            return await self._tokens(text, special)

        return await _count_each(texts, one, self._timeout)

    async def _tokens(self, text: str, special: bool = True) -> int | None:
        answer = await self._call(b"/tokenize", {"content": text, "add_special": special, "parse_special": special})
        tokens = answer.get("tokens") if answer else None
        return len(tokens) if isinstance(tokens, list) else None

    async def _call(self, path: bytes, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(self._timeout):
                status, data, complete = await _post(
                    self._client, self._replica, self._root, path, payload, self._max_bytes
                )
            if status != 200 or not complete:
                return None
            parsed = orjson.loads(data)
        except Exception as exc:  # any failure: the caller keeps the byte bound
            log.debug("%s on %s failed: %r", path.decode(), self._replica.spec.url, exc)
            return None
        return parsed if isinstance(parsed, dict) else None


# -- shared plumbing


def _root_of(origin: Origin) -> Origin:
    """The server root: these endpoints sit beside /v1, not under it (a proxy prefix is kept)."""
    base = origin.base_path
    return Origin(origin.host, origin.port, base[: -len("/v1")] if base.endswith("/v1") else base)


async def _post(
    client: HttpClient, replica: Replica, root: Origin, path: bytes, payload: dict[str, Any], limit: int
) -> tuple[int, bytes, bool]:
    """(status, at most `limit` bytes of the body, whether that is the whole body)."""
    response = await client.request(b"POST", root, path, orjson.dumps(payload), replica.headers)
    try:
        data, complete = await _read_capped(response, limit)
    finally:
        response.close()  # an unread remainder aborts the connection rather than draining it
    return response.status, data, complete


async def _read_capped(response: UpstreamResponse, limit: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    size = 0
    # The caller's deadline bounds the whole read; this per-chunk wait only has to be no shorter.
    while (chunk := await response.next_chunk(600.0)) is not None:
        if size + len(chunk) > limit:
            parts.append(chunk[: limit - size])
            return b"".join(parts), False
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), True


def _parse_count(data: bytes, complete: bool) -> Count | None:
    """count and max_model_len, from the head of the answer when they come first (vLLM), else the whole."""
    cut = data.find(b'"tokens"', 0, _HEAD_SCAN)
    if cut > 0:
        fields = dict(_HEAD_FIELD.findall(data[:cut]))
        if b"count" in fields:
            tokens = int(fields[b"count"])
            length = fields.get(b"max_model_len")
            return Count(tokens, _model_len(int(length) if length is not None else None)) if tokens >= 0 else None
    if not complete:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    count = parsed.get("count")
    if not _is_int(count):
        ids = parsed.get("tokens")
        count = len(ids) if isinstance(ids, list) else None
    if count is None or count < 0:
        return None
    return Count(count, _model_len(parsed.get("max_model_len")))


def _model_len(value: object) -> int | None:
    return value if _is_int(value) and 0 < value < _MAX_MODEL_LEN else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _media_free(messages: list[Any]) -> bool:
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in _MEDIA_FREE_PARTS:
                    return False
    return True


def _snippet(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace")


async def _count_each(
    texts: list[str], count_one: Callable[[str], Awaitable[int | None]], timeout: float
) -> list[int] | None:
    """Each text counted by its own call, a few at a time, all within one deadline; None if any fails."""
    results = [0] * len(texts)
    pending: Iterator[tuple[int, str]] = iter(enumerate(texts))
    failed = False

    async def worker() -> None:
        nonlocal failed
        for index, text in pending:  # the workers share the iterator: each takes the next text
            counted = await count_one(text)
            if counted is None:
                failed = True
            if failed or counted is None:  # another worker failed meanwhile: the answer is None anyway
                return
            results[index] = counted

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(min(TEXT_CONCURRENCY, len(texts)))))
    except TimeoutError:
        return None
    return None if failed else results
