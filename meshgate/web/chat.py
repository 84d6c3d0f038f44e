"""The chat page (`/chat`) and its JSON API (`/web-api/...`): conversations, messages and the answer stream.

Every call needs the session; every state change needs its CSRF token too. A conversation is
looked up by id *and* account, so another account's conversation is a 404 like a missing one.

The stream endpoints are plain ASGI apps (not request/response handlers): the answer goes
through `serving.serve` with the connection's own `receive`, so the gateway's hang-up watch
sees the browser abort the fetch (the Stop button) and cancels the engine's generation.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from meshgate.protocol.errors import ApiError
from meshgate.server.http import ClientGone, parse_json, read_body
from meshgate.server.state import Gateway
from meshgate.web.chat_quota import chat_models, chat_quota, picker, resets_at
from meshgate.web.chat_stream import stream_answer
from meshgate.web.conversations import DEFAULT_TITLE, MAX_TITLE, Conversation, ConversationStore
from meshgate.web.conversations import Message as ChatMessage
from meshgate.web.sessions import WebUser, require_csrf, require_user
from meshgate.web.state import web_state
from meshgate.web.templating import render

MAX_BODY = 1024 * 1024
MAX_MESSAGE_CHARS = 200_000
MAX_SYSTEM_PROMPT_CHARS = 20_000
BUSY_WAIT_SECONDS = 10.0  # a new answer waits this long for the conversation's previous one to be stored
_ID = re.compile(r"[0-9a-f]{32}")

# One answer at a time per conversation: a regenerate right after Stop waits for the stopped answer
# to be stored instead of racing it.
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _store(request: Request) -> ConversationStore:
    state = request.app.state
    store: ConversationStore | None = getattr(state, "conversations", None)
    if store is None:
        store = ConversationStore(web_state(request).gateway.store.engine)
        state.conversations = store
    return store


def _gateway(request: Request) -> Gateway:
    return web_state(request).gateway


def error(status: int, message: str, code: str, *, param: str | None = None, **extra: Any) -> JSONResponse:
    """The OpenAI error envelope, as the API answers (plus what the page needs, e.g. `resets_at`)."""
    kind = "insufficient_quota" if status == 429 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}, **extra}, status)


def _api_error(gw: Gateway, exc: ApiError) -> JSONResponse:
    extra = {"resets_at": resets_at(gw)} if exc.status == 429 else {}
    response = error(exc.status, exc.message, exc.code or exc.type, param=exc.param, **extra)
    response.headers.update({name.decode(): value.decode() for name, value in exc.headers})
    return response


def _not_found() -> HTTPException:
    return HTTPException(404, "no such conversation")


async def _body(request: Request) -> dict[str, Any]:
    try:
        raw = await read_body(request.scope, request.receive, MAX_BODY)
        parsed = parse_json(raw) if raw else {}
    except ApiError as exc:  # too large, not JSON
        raise HTTPException(exc.status, exc.message) from None
    if not isinstance(parsed, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return parsed


def _text(body: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise HTTPException(400, f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise HTTPException(400, f"'{name}' must be a string")
    if len(value) > limit:
        raise HTTPException(400, f"'{name}' is longer than {limit} characters")
    if required and not value.strip():
        raise HTTPException(400, f"'{name}' must not be empty")
    return value


def _chat_model(gw: Gateway, model: str | None) -> str | None:
    if model is None:
        return None
    route = gw.routes.get(model)
    if route is None or route.spec.kind != "chat":
        raise HTTPException(400, f"`{model}` is not a chat model of this platform")
    return model


async def _conversation(request: Request, user: WebUser) -> Conversation:
    conversation_id = str(request.path_params["conversation_id"])
    if not _ID.fullmatch(conversation_id):
        raise _not_found()
    conversation = await asyncio.to_thread(_store(request).get, user.account_id, conversation_id)
    if conversation is None:
        raise _not_found()
    return conversation


# ---------------------------------------------------------------- the page


async def chat_page(request: Request) -> Response:
    user = await require_user(request)
    conversation_id = request.path_params.get("conversation_id")
    if conversation_id is not None:
        await _conversation(request, user)  # 404 for another account's conversation
    models = await picker(_gateway(request), user.account_id)
    default = next((m["id"] for m in models if m["available"] and not m["exhausted"]), None)
    return await render(
        request,
        "chat.html",
        {"models": models, "default_model": default, "conversation_id": conversation_id or ""},
    )


# ---------------------------------------------------------------- JSON: models and conversations


async def models_api(request: Request) -> Response:
    user = await require_user(request)
    return JSONResponse({"data": await picker(_gateway(request), user.account_id)})


async def conversations_api(request: Request) -> Response:
    user = await require_user(request)
    store = _store(request)
    if request.method == "GET":
        listed = await asyncio.to_thread(store.listing, user.account_id)
        return JSONResponse({"data": [c.public() for c in listed]})
    await require_csrf(request, user)
    body = await _body(request)
    gw = _gateway(request)
    model = _chat_model(gw, _text(body, "model", 256)) or next((s.id for s in chat_models(gw)), None)
    if model is None:
        raise HTTPException(400, "this platform has no chat model")
    title = (_text(body, "title", MAX_TITLE) or "").strip() or DEFAULT_TITLE
    system_prompt = _text(body, "system_prompt", MAX_SYSTEM_PROMPT_CHARS) or ""
    created = await asyncio.to_thread(store.create, user.account_id, model, title, system_prompt)
    return JSONResponse(created.public(), 201)


async def conversation_api(request: Request) -> Response:
    user = await require_user(request)
    store = _store(request)
    if request.method == "GET":
        conversation = await _conversation(request, user)
        messages = await asyncio.to_thread(store.messages, conversation.id)
        return JSONResponse({**conversation.public(), "messages": [m.public() for m in messages]})
    await require_csrf(request, user)
    conversation = await _conversation(request, user)
    if request.method == "DELETE":
        async with _conversation_lock(conversation.id):
            await asyncio.to_thread(store.delete, user.account_id, conversation.id)
        return Response(status_code=204)
    body = await _body(request)  # PATCH: rename, change the model or the system prompt
    title = _text(body, "title", MAX_TITLE)
    if title is not None and not title.strip():
        raise HTTPException(400, "'title' must not be empty")
    updated = await asyncio.to_thread(
        store.update,
        user.account_id,
        conversation.id,
        title=title.strip() if title is not None else None,
        model=_chat_model(_gateway(request), _text(body, "model", 256)),
        system_prompt=_text(body, "system_prompt", MAX_SYSTEM_PROMPT_CHARS),
    )
    if updated is None:
        raise _not_found()
    return JSONResponse(updated.public())


@asynccontextmanager
async def _conversation_lock(conversation_id: str) -> AsyncIterator[None]:
    lock = _locks.get(conversation_id)
    if lock is None:
        lock = _locks[conversation_id] = asyncio.Lock()
    try:
        await asyncio.wait_for(lock.acquire(), BUSY_WAIT_SECONDS)
    except TimeoutError:
        raise HTTPException(409, "an answer is still being written in this conversation") from None
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- the answer stream

Action = Callable[[Request, WebUser, Conversation, Receive, Send], Awaitable[None]]


class StreamEndpoint:
    """A POST that answers with the chat stream (or a JSON error before it starts)."""

    def __init__(self, action: Action) -> None:
        self.action = action

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        user = await require_user(request)
        await require_csrf(request, user)
        conversation = await _conversation(request, user)
        async with _conversation_lock(conversation.id):
            try:
                await self.action(request, user, conversation, receive, send)
            except ApiError as exc:  # refused before the stream started (quota, model, upstream): JSON
                await _api_error(_gateway(request), exc)(scope, receive, send)
            except ClientGone:
                return  # Stop: the answer so far is stored, the engine cancelled


async def _answer(
    request: Request,
    user: WebUser,
    conversation: Conversation,
    receive: Receive,
    send: Send,
    user_message: ChatMessage | None = None,
) -> None:
    store = _store(request)
    history = await asyncio.to_thread(store.messages, conversation.id)
    state = web_state(request)
    await stream_answer(
        state.gateway,
        store,
        user.account_id,
        conversation,
        history,
        receive,
        send,
        user_message,
        state.settings.chat_max_tokens,
    )


async def _switch_model(
    request: Request, user: WebUser, conversation: Conversation, body: dict[str, Any]
) -> Conversation:
    model = _chat_model(_gateway(request), _text(body, "model", 256))
    if model is None or model == conversation.model:
        return conversation
    updated = await asyncio.to_thread(_store(request).update, user.account_id, conversation.id, model=model)
    return updated or conversation


async def _message_from(request: Request, user: WebUser, conversation: Conversation) -> tuple[str, Conversation]:
    """The message text a send or an edit carries, and the conversation on the model it picks."""
    body = await _body(request)
    content = _text(body, "content", MAX_MESSAGE_CHARS, required=True)
    assert content is not None
    return content, await _switch_model(request, user, conversation, body)


async def send_message(
    request: Request, user: WebUser, conversation: Conversation, receive: Receive, send: Send
) -> None:
    """A new user message, then its answer."""
    content, conversation = await _message_from(request, user, conversation)
    message = await asyncio.to_thread(_store(request).add_message, conversation.id, "user", content, retitle=True)
    await _answer(request, user, conversation, receive, send, message)


async def regenerate(request: Request, user: WebUser, conversation: Conversation, receive: Receive, send: Send) -> None:
    """A new answer to the last user message (the answers after it are dropped)."""
    body = await _body(request)
    conversation = await _switch_model(request, user, conversation, body)
    store = _store(request)
    messages = await asyncio.to_thread(store.messages, conversation.id)
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if last_user is None:
        raise HTTPException(400, "there is no message to answer yet")
    await asyncio.to_thread(store.truncate_after, conversation.id, last_user.id)
    await _answer(request, user, conversation, receive, send)


async def edit_and_resend(
    request: Request, user: WebUser, conversation: Conversation, receive: Receive, send: Send
) -> None:
    """A user message rewritten: the conversation after it is dropped, and it is answered anew."""
    content, conversation = await _message_from(request, user, conversation)
    message_id = int(request.path_params["message_id"])
    store = _store(request)
    if not await asyncio.to_thread(store.edit_user_message, conversation.id, message_id, content):
        raise HTTPException(404, "no such message in this conversation")
    messages = await asyncio.to_thread(store.messages, conversation.id)
    edited = next((m for m in messages if m.id == message_id), None)
    await _answer(request, user, conversation, receive, send, edited)


async def quota_api(request: Request) -> Response:
    """The chat quota left on one model (`?model=`), as the page shows it."""
    user = await require_user(request)
    gw = _gateway(request)
    model = request.query_params.get("model", "")
    route = gw.routes.get(model)
    if route is None or route.spec.kind != "chat":
        raise HTTPException(404, "no such chat model")
    return JSONResponse(await chat_quota(gw, user.account_id, route.spec))


ROUTES: list[BaseRoute] = [
    Route("/chat", chat_page, methods=["GET"]),
    Route("/chat/{conversation_id}", chat_page, methods=["GET"]),
    Route("/web-api/chat/models", models_api, methods=["GET"]),
    Route("/web-api/chat/quota", quota_api, methods=["GET"]),
    Route("/web-api/conversations", conversations_api, methods=["GET", "POST"]),
    Route("/web-api/conversations/{conversation_id}", conversation_api, methods=["GET", "PATCH", "DELETE"]),
    Route("/web-api/conversations/{conversation_id}/messages", StreamEndpoint(send_message), methods=["POST"]),
    Route("/web-api/conversations/{conversation_id}/regenerate", StreamEndpoint(regenerate), methods=["POST"]),
    Route(
        "/web-api/conversations/{conversation_id}/messages/{message_id:int}/edit",
        StreamEndpoint(edit_and_resend),
        methods=["POST"],
    ),
]
