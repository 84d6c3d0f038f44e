"""The web chat's conversations and their messages, in the database (tables `conversations`, `conversation_messages`).

Every read and write of a conversation names the account too: a conversation of another
account is treated exactly like one that does not exist (None / False), so the web API
answers 404 for both. Ids are 128 random bits, so they cannot be guessed either.

Synchronous (SQLAlchemy Core); the web handlers call it in a thread.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from meshgate.store.tables import conversation_messages, conversations

DEFAULT_TITLE = "New chat"
MAX_TITLE = 200
MAX_LISTED = 500  # conversations shown in the sidebar, newest first


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    account_id: int
    title: str
    model: str
    system_prompt: str
    created_at: float
    updated_at: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    role: str  # user, assistant
    content: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish: str | None  # assistant: stop, length, stopped (by the user), error; None while streaming
    created_at: float
    reasoning: str | None = None  # a reasoning model's answer: its thinking, kept apart from the content

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "reasoning": self.reasoning,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish": self.finish,
            "created_at": self.created_at,
        }


def title_from(text: str) -> str:
    """A conversation's automatic title: the first line of its first message, shortened."""
    line = " ".join(text.split())
    return (line[:60].rstrip() + "…") if len(line) > 60 else (line or DEFAULT_TITLE)


def _conversation(row: Any) -> Conversation:
    return Conversation(row.id, row.account_id, row.title, row.model, row.system_prompt, row.created_at, row.updated_at)


def _message(row: Any) -> Message:
    return Message(
        row.id,
        row.role,
        row.content,
        row.model,
        row.prompt_tokens,
        row.completion_tokens,
        row.finish,
        row.created_at,
        row.reasoning,
    )


class ConversationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- conversations

    def listing(self, account_id: int, limit: int = MAX_LISTED) -> list[Conversation]:
        query = (
            select(conversations)
            .where(conversations.c.account_id == account_id)
            .order_by(conversations.c.updated_at.desc(), conversations.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_conversation(row) for row in conn.execute(query)]

    def create(self, account_id: int, model: str, title: str = DEFAULT_TITLE, system_prompt: str = "") -> Conversation:
        now = time.time()
        conversation = Conversation(secrets.token_hex(16), account_id, title, model, system_prompt, now, now)
        with self.engine.begin() as conn:
            conn.execute(
                insert(conversations).values(
                    id=conversation.id,
                    account_id=account_id,
                    title=title,
                    model=model,
                    system_prompt=system_prompt,
                    created_at=now,
                    updated_at=now,
                )
            )
        return conversation

    def get(self, account_id: int, conversation_id: str) -> Conversation | None:
        query = select(conversations).where(_owned(account_id, conversation_id))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _conversation(row) if row is not None else None

    def update(
        self,
        account_id: int,
        conversation_id: str,
        *,
        title: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> Conversation | None:
        values: dict[str, Any] = {}  # `updated_at` is the last message's time: the list's order is activity
        if title is not None:
            values["title"] = title
        if model is not None:
            values["model"] = model
        if system_prompt is not None:
            values["system_prompt"] = system_prompt
        if not values:
            return self.get(account_id, conversation_id)
        with self.engine.begin() as conn:
            result = conn.execute(update(conversations).where(_owned(account_id, conversation_id)).values(**values))
            if result.rowcount == 0:
                return None
            row = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
        return _conversation(row) if row is not None else None

    def delete(self, account_id: int, conversation_id: str) -> bool:
        with self.engine.begin() as conn:
            owned = conn.execute(select(conversations.c.id).where(_owned(account_id, conversation_id))).first()
            if owned is None:
                return False
            conn.execute(
                delete(conversation_messages).where(conversation_messages.c.conversation_id == conversation_id)
            )
            conn.execute(delete(conversations).where(conversations.c.id == conversation_id))
        return True

    # -- messages (the caller has checked that the conversation is the account's: `get`)

    def messages(self, conversation_id: str) -> list[Message]:
        query = (
            select(conversation_messages)
            .where(conversation_messages.c.conversation_id == conversation_id)
            .order_by(conversation_messages.c.id)
        )
        with self.engine.connect() as conn:
            return [_message(row) for row in conn.execute(query)]

    def add_message(
        self, conversation_id: str, role: str, content: str, model: str | None = None, *, retitle: bool = False
    ) -> Message:
        """Append a message; `retitle`: a conversation still called "New chat" is named after it."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(conversation_messages).values(
                    conversation_id=conversation_id, role=role, content=content, model=model, created_at=now
                )
            )
            message_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            touch: dict[str, Any] = {"updated_at": now}
            conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**touch))
            if retitle:
                conn.execute(
                    update(conversations)
                    .where(and_(conversations.c.id == conversation_id, conversations.c.title == DEFAULT_TITLE))
                    .values(title=title_from(content))
                )
        assert message_id is not None
        return Message(int(message_id), role, content, model, None, None, None, now)

    def finish_message(
        self,
        message_id: int,
        content: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        finish: str,
        request_id: str | None,
        reasoning: str | None = None,
    ) -> None:
        """An assistant message's answer once its stream has ended, and what it was charged."""
        with self.engine.begin() as conn:
            conn.execute(
                update(conversation_messages)
                .where(conversation_messages.c.id == message_id)
                .values(
                    content=content,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    finish=finish,
                    request_id=request_id,
                    reasoning=reasoning,
                )
            )

    def truncate_after(self, conversation_id: str, message_id: int) -> None:
        """Delete every message after `message_id` (regenerate, edit-and-resend)."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(conversation_messages).where(
                    and_(
                        conversation_messages.c.conversation_id == conversation_id,
                        conversation_messages.c.id > message_id,
                    )
                )
            )

    def edit_user_message(self, conversation_id: str, message_id: int, content: str) -> bool:
        """Replace a user message's text and drop everything after it; False if it is not one of its user messages."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(conversation_messages)
                .where(
                    and_(
                        conversation_messages.c.conversation_id == conversation_id,
                        conversation_messages.c.id == message_id,
                        conversation_messages.c.role == "user",
                    )
                )
                .values(content=content)
            )
            if result.rowcount == 0:
                return False
            conn.execute(
                delete(conversation_messages).where(
                    and_(
                        conversation_messages.c.conversation_id == conversation_id,
                        conversation_messages.c.id > message_id,
                    )
                )
            )
            conn.execute(
                update(conversations).where(conversations.c.id == conversation_id).values(updated_at=time.time())
            )
        return True

    def count_messages(self, conversation_id: str) -> int:
        query = select(func.count()).where(conversation_messages.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def _owned(account_id: int, conversation_id: str) -> Any:
    return and_(conversations.c.id == conversation_id, conversations.c.account_id == account_id)
