"""Exact prompt token counts from an engine that exposes its own chat template and tokenizer.

llama.cpp's server renders a conversation with the model's template (`POST /apply-template`)
and tokenizes text (`POST /tokenize`): the same steps as a completion, so the count equals
the `usage.prompt_tokens` it will report. Two loopback round trips (~1 ms) are cheap next to
local generation, and they make admission exact: a prompt that does not fit the context gets
its 400 before any work, and the reservation holds what the request really needs. Any
failure falls back to the byte bound (`catalog/tokens.py`), never to an undercount.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from meshgate.workers.http_client import HttpClient, Origin, UpstreamError
from meshgate.workers.pool import Replica

_TIMEOUT = 5.0


class PromptCounter(Protocol):
    async def count(self, body: dict[str, Any]) -> int | None:
        """The prompt's tokens as the model will see them, or None if they cannot be counted."""
        ...


class LlamaCppPromptCounter:
    def __init__(self, client: HttpClient, replica: Replica) -> None:
        self._client = client
        self._replica = replica
        self._root = Origin(replica.origin.host, replica.origin.port, "")  # these endpoints are not under /v1

    async def count(self, body: dict[str, Any]) -> int | None:
        if not self._replica.healthy:
            return None
        template_request: dict[str, Any] = {"messages": body["messages"]}
        if body.get("tools"):
            template_request["tools"] = body["tools"]
        rendered = await self._call(b"/apply-template", template_request)
        prompt = rendered.get("prompt") if rendered else None
        if not isinstance(prompt, str):
            return None
        tokens = await self._call(b"/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
        counted = tokens.get("tokens") if tokens else None
        return len(counted) if isinstance(counted, list) else None

    async def _call(self, path: bytes, payload: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = await self._client.request(
                b"POST", self._root, path, orjson.dumps(payload), self._replica.headers
            )
            try:
                data = await response.read(_TIMEOUT)
            finally:
                response.close()
        except UpstreamError:
            return None
        if response.status != 200:
            return None
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
