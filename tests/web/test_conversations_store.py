"""The conversation store on its own: ownership, order, truncation, reasoning, and migrations 0006 and 0009 both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from meshgate.accounts.service import AccountStore
from meshgate.store.engine import MIGRATIONS, migrate, sync_engine
from meshgate.web.conversations import DEFAULT_TITLE, ConversationStore, title_from


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'meshgate.db'}"
    migrate(url)
    return url


@pytest.fixture
def store(url: str) -> ConversationStore:
    return ConversationStore(sync_engine(url))


def accounts(url: str) -> tuple[int, int]:
    people = AccountStore(sync_engine(url))
    return people.create_account("alice").id, people.create_account("bob").id


def test_a_conversation_is_only_its_accounts(url: str, store: ConversationStore) -> None:
    alice, bob = accounts(url)
    mine = store.create(alice, "m", system_prompt="Be kind.")
    assert len(mine.id) == 32 and mine.title == DEFAULT_TITLE
    assert store.get(alice, mine.id) == mine
    assert store.get(bob, mine.id) is None
    assert store.update(bob, mine.id, title="stolen") is None
    assert store.delete(bob, mine.id) is False
    assert store.listing(bob) == []
    assert [c.id for c in store.listing(alice)] == [mine.id]
    assert store.create(alice, "m").id != mine.id


def test_messages_order_title_truncate_and_edit(url: str, store: ConversationStore) -> None:
    alice, _ = accounts(url)
    conversation = store.create(alice, "m")
    first = store.add_message(conversation.id, "user", "What is   the\nplan?", retitle=True)
    answer = store.add_message(conversation.id, "assistant", "", "m")
    store.finish_message(answer.id, "The plan.", 10, 3, "stop", "chatcmpl-1")
    second = store.add_message(conversation.id, "user", "And then?", retitle=True)
    assert store.get(alice, conversation.id).title == "What is the plan?"  # type: ignore[union-attr]
    messages = store.messages(conversation.id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "What is   the\nplan?"),
        ("assistant", "The plan."),
        ("user", "And then?"),
    ]
    assert (messages[1].prompt_tokens, messages[1].completion_tokens, messages[1].finish) == (10, 3, "stop")
    store.truncate_after(conversation.id, answer.id)
    assert [m.id for m in store.messages(conversation.id)] == [first.id, answer.id]
    assert not store.edit_user_message(conversation.id, answer.id, "x")  # not a user message
    assert not store.edit_user_message("0" * 32, first.id, "x")  # not this conversation's
    assert store.edit_user_message(conversation.id, first.id, "Edited?")
    assert [(m.role, m.content) for m in store.messages(conversation.id)] == [("user", "Edited?")]
    assert second.id not in [m.id for m in store.messages(conversation.id)]
    assert store.delete(alice, conversation.id)
    assert store.messages(conversation.id) == [] and store.get(alice, conversation.id) is None


def test_the_list_is_in_order_of_activity(url: str, store: ConversationStore) -> None:
    alice, _ = accounts(url)
    old = store.create(alice, "m")
    new = store.create(alice, "m")
    assert [c.id for c in store.listing(alice)] == [new.id, old.id]
    store.add_message(old.id, "user", "back to this one")
    assert [c.id for c in store.listing(alice)] == [old.id, new.id]
    store.update(alice, new.id, title="Renamed")  # a rename is not activity
    assert [c.id for c in store.listing(alice)] == [old.id, new.id]


def test_titles() -> None:
    assert title_from("  hello \n world ") == "hello world"
    assert title_from("") == DEFAULT_TITLE
    long = title_from("word " * 40)
    assert len(long) <= 61 and long.endswith("…")


def test_migration_0006_up_and_down(url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    tables = set(inspect(sync_engine(url)).get_table_names())
    assert {"conversations", "conversation_messages"} <= tables
    command.downgrade(config, "0005")
    tables = set(inspect(sync_engine(url)).get_table_names())
    assert "conversations" not in tables and "conversation_messages" not in tables and "accounts" in tables
    migrate(url)
    assert {"conversations", "conversation_messages"} <= set(inspect(sync_engine(url)).get_table_names())


def test_an_answer_keeps_its_reasoning_and_migration_0009_both_ways(url: str, store: ConversationStore) -> None:
    alice, _ = accounts(url)
    conversation = store.create(alice, "m")
    answer = store.add_message(conversation.id, "assistant", "", "m")
    store.finish_message(answer.id, "42.", 10, 9, "stop", "chatcmpl-2", reasoning="Six times seven.")
    (stored,) = store.messages(conversation.id)
    assert (stored.content, stored.reasoning) == ("42.", "Six times seven.")
    assert stored.public()["reasoning"] == "Six times seven."
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)

    def columns() -> set[str]:
        return {c["name"] for c in inspect(sync_engine(url)).get_columns("conversation_messages")}

    command.downgrade(config, "0008")
    assert "reasoning" not in columns() and "content" in columns()
    migrate(url)
    assert "reasoning" in columns()
    assert store.messages(conversation.id)[0].content == "42."  # the answer outlived the round trip
