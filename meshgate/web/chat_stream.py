"""One answer of the web chat, generated through the API's own request path.

The browser's request is admitted like an API request — the same demand, prompt counting and
atomic reservation — but on the account's `chat` bucket (never `api`), with a key-less
`Principal`; then `serving.serve` relays the stream, watches for the hang-up and settles
exactly once. So a stopped answer (the browser aborts its fetch) cancels the engine's
generation and is charged what was generated, exactly as for the API.

`AnswerRecorder` wraps `send`: the OpenAI chunks pass through unchanged, two events of the
chat's own (`event: meshgate`) are added — at the start the stored ids, at the end the stored
answer and the quota left — and the text is collected so the answer is stored when the stream
ends, however it ends (finished, stopped, failed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from meshgate.catalog.tokens import chat_prompt_bound, prompt_floor
from meshgate.protocol.requests import parse_chat
from meshgate.protocol.sse import DONE, EventSplitter, EventTooLarge, data_of
from meshgate.server.admission import Demand
from meshgate.server.auth import Principal
from meshgate.server.context import RequestContext, StreamOptions
from meshgate.server.features import normalize_history, shaper_for
from meshgate.server.handlers import chat_counter, new_request_id
from meshgate.server.http import ClientGone, Message, Receive, Send
from meshgate.server.serving import serve
from meshgate.server.state import Gateway
from meshgate.web.chat_quota import BUCKET, chat_quota
from meshgate.web.conversations import Conversation, ConversationStore
from meshgate.web.conversations import Message as ChatMessage

log = logging.getLogger("meshgate.web.chat")


def meta_event(payload: dict[str, Any]) -> bytes:
    """An SSE event of the chat's own; OpenAI clients ignore named events, the page reads them."""
    return b"event: meshgate\ndata: " + orjson.dumps(payload) + b"\n\n"


def upstream_messages(conversation: Conversation, history: list[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the engine reads it: its system prompt, then every message with text."""
    messages: list[dict[str, Any]] = []
    if conversation.system_prompt.strip():
        messages.append({"role": "system", "content": conversation.system_prompt})
    messages.extend({"role": m.role, "content": m.content} for m in history if m.content)
    return messages


class AnswerRecorder:
    """Passes a chat stream to the browser and keeps what it delivered, to store the answer."""

    def __init__(
        self,
        gw: Gateway,
        store: ConversationStore,
        conversation: Conversation,
        account_id: int,
        send: Send,
        user_message: ChatMessage | None,
    ) -> None:
        self._gw = gw
        self._store = store
        self._conversation = conversation
        self._account_id = account_id
        self._send = send
        self._user_message = user_message
        # serve sends whole events; the splitter keeps one cut across two sends anyway. Its bound is
        # the engine's (an event the relay passed) with room for what the relay adds to an event.
        self._events = EventSplitter(4 * gw.settings.max_event_bytes)
        self.pieces: list[str] = []
        self.reasoning: list[str] = []  # a reasoning model's thinking, as the shaper split it out
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.message_id: int | None = None  # the assistant message, stored once the stream has started
        self.charged: tuple[int, int, str] | None = None  # what serve settled: prompt, completion, outcome
        self.request_id: str | None = None
        self.stored = False

    def settled(self, prompt: int, completion: int, outcome: str) -> None:
        self.charged = (prompt, completion, outcome)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            placeholder = await asyncio.to_thread(
                self._store.add_message, self._conversation.id, "assistant", "", self._conversation.model
            )
            self.message_id = placeholder.id
            await self._send(message)
            start: dict[str, Any] = {"type": "start", "assistant_message": placeholder.public()}
            if self._user_message is not None:
                start["user_message"] = self._user_message.public()
            await self._send({"type": "http.response.body", "body": meta_event(start), "more_body": True})
            return
        body = message.get("body", b"")
        if body:
            self._absorb(body)
        if message.get("more_body", False):
            await self._send(message)
            return
        # The stream's last bytes: settled already (serve settles first), so store the answer, then say so.
        stored = await self.store(stopped=False)
        done: dict[str, Any] = {"type": "done", "message": stored}
        done["quota"] = await chat_quota(self._gw, self._account_id, self._gw.routes[self._conversation.model].spec)
        await self._send({"type": "http.response.body", "body": body + meta_event(done), "more_body": False})

    def _absorb(self, body: bytes) -> None:
        try:
            events = self._events.feed(body)
        except EventTooLarge:  # cannot come from serve; the browser still gets every byte
            log.warning("an event of the chat stream is too large to record; its text is not stored")
            self._events.rest()
            return
        for raw in events:
            payload = data_of(raw)
            if payload is not None:
                self._absorb_payload(payload)

    def _absorb_payload(self, payload: bytes) -> None:
        if payload == DONE:
            return
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(parsed, dict):
            return
        error = parsed.get("error")
        if isinstance(error, dict):
            self.error = str(error.get("message") or "the answer failed")
            return
        for choice in parsed.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    self.pieces.append(delta["content"])
                # the shaper sends both names; an engine without a declared reasoning model, either one
                thought = delta.get("reasoning_content")
                if not isinstance(thought, str):
                    thought = delta.get("reasoning")
                if isinstance(thought, str):
                    self.reasoning.append(thought)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    async def store(self, *, stopped: bool) -> dict[str, Any] | None:
        """Store the answer as delivered (once); returns it as the page shows it."""
        if self.stored or self.message_id is None:
            return None
        self.stored = True
        if stopped:
            finish = "stopped"
        elif self.error is not None:
            finish = "error"
        else:
            finish = self.finish_reason or "stop"
        prompt, completion = (self.charged[0], self.charged[1]) if self.charged is not None else (None, None)
        content = "".join(self.pieces)
        reasoning = "".join(self.reasoning) or None
        await asyncio.to_thread(
            self._store.finish_message, self.message_id, content, prompt, completion, finish, self.request_id, reasoning
        )
        return {
            "id": self.message_id,
            "role": "assistant",
            "content": content,
            "reasoning": reasoning,
            "model": self._conversation.model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "finish": finish,
            "error": self.error,
        }


async def stream_answer(
    gw: Gateway,
    store: ConversationStore,
    account_id: int,
    conversation: Conversation,
    history: list[ChatMessage],
    receive: Receive,
    send: Send,
    user_message: ChatMessage | None = None,
    max_tokens: int = 0,
) -> None:
    """Admit (bucket "chat") and stream one answer to `history`; raises `ApiError` before the stream starts.

    `max_tokens` caps the answer (0: up to what the quota and the context leave); the answer
    still gets less where less is left, as an API request without `max_tokens` does.
    """
    route = gw.route_for(conversation.model, "chat")
    body: dict[str, Any] = {
        "model": conversation.model,
        "messages": upstream_messages(conversation, history),
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    request = parse_chat(body)  # the API's own checks (message count and size caps)
    if route.spec.capabilities.reasoning:
        normalize_history(body)
    principal = Principal(account_id, key_id=None)
    request_id = new_request_id("chatcmpl-")
    bound = chat_prompt_bound(body)
    demand = Demand(bound, prompt_floor(bound, len(body["messages"])), completion_cap=max_tokens or None)
    count = chat_counter(route, body)
    admission = await gw.admitter.admit_chat(
        request_id, principal, route.spec, BUCKET, demand, count, route.context_length
    )
    body["max_tokens"] = admission.max_tokens
    recorder = AnswerRecorder(gw, store, conversation, account_id, send, user_message)
    recorder.request_id = request_id
    # Usage in every event, passed through: the page needs no more than the OpenAI chunks.
    stream = StreamOptions(include_usage=True, client_continuous=True)
    ctx = RequestContext(
        request_id,
        principal,
        route,
        b"/chat/completions",
        body,
        admission,
        1,
        stream,
        count,
        on_settle=recorder.settled,
    )
    # A reasoning model's answer as the API shapes it: `<think>` split out of the content, both field names.
    ctx.reasoning = shaper_for(route.spec, request.needs)
    try:
        await serve(gw, ctx, receive, recorder.send)
    except ClientGone:
        # The browser stopped the answer: the engine was cancelled and what it generated is charged.
        await recorder.store(stopped=True)
        raise
    finally:
        if not recorder.stored and recorder.message_id is not None:
            await recorder.store(stopped=recorder.charged is not None and recorder.charged[2] == "client_disconnect")
