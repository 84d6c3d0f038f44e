"""The web chat's JSON API and its stream, over HTTP against a live gateway and the fake engine.

The answer goes through the API's own request path on the `chat` bucket: charged exactly what
the engine reported, never to `api`; a hang-up cancels the engine and is charged what was
generated. Conversations are the account's own: another account's id is a 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.fakes.upstream import REPLY
from tests.web.chat_helpers import (
    API_ONLY,
    MODEL,
    NO_CHAT_QUOTA,
    SMALL,
    Answer,
    ChatClient,
    last_body,
    steer,
    usage_events,
    wait_events,
)
from tests.web.conftest import THINKER, WebAccount, wait_for


def quota_of(chat: ChatClient, model: str) -> dict[str, Any]:
    response = chat.http.get("/web-api/chat/quota", params={"model": model})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def engine(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    steer(fake_upstream)
    yield fake_upstream
    steer(fake_upstream)  # the fake is shared by the whole session: leave it as found


@pytest.fixture
def chat(web_gateway: LiveGateway, admin_user: WebAccount) -> Iterator[ChatClient]:
    client = ChatClient(web_gateway)
    yield client
    client.close()


def test_answer_is_streamed_stored_and_charged_to_chat_exactly(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream
) -> None:
    conversation = chat.create(MODEL, system_prompt="Answer like a pirate.")
    answer = chat.send(conversation["id"], "Hello there")
    assert answer.status == 200
    assert answer.content_chunks() == [REPLY[0]] + [" " + word for word in REPLY[1:]]  # token by token
    # The engine saw the conversation with its system prompt first.
    assert last_body(engine)["messages"] == [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Hello there"},
    ]
    # MESHGATE_CHAT_MAX_TOKENS (4,096 by default) caps an answer, not the 128,000 the context leaves
    assert last_body(engine)["max_tokens"] == 4096
    (event,) = wait_events(web_gateway, chat.email, 1)
    prompt = (4 + 4) + (2 + 4)  # the fake counts words + 4 per message
    assert (event.bucket, event.model, event.prompt, event.completion, event.outcome) == (
        "chat",
        MODEL,
        prompt,
        len(REPLY),
        "ok",
    )
    done = answer.done
    assert done["message"]["content"] == answer.text
    assert (done["message"]["prompt_tokens"], done["message"]["completion_tokens"]) == (prompt, len(REPLY))
    assert done["quota"]["used"] == prompt + len(REPLY)
    assert done["quota"]["remaining"] == 1_000_000 - prompt - len(REPLY)
    stored = chat.conversation(conversation["id"])
    assert stored["title"] == "Hello there"  # named after its first message
    assert [(m["role"], m["content"], m["finish"]) for m in stored["messages"]] == [
        ("user", "Hello there", None),
        ("assistant", answer.text, "stop"),
    ]
    assert stored["messages"][1]["id"] == answer.start["assistant_message"]["id"]
    # Nothing reached the API bucket.
    assert all(e.bucket == "chat" for e in usage_events(web_gateway, chat.email))


THOUGHT = "the user asks why so I weigh it"


@pytest.mark.parametrize("field", ["reasoning", "think"])  # vLLM's reasoning field; inline <think> tags
def test_a_reasoning_models_thinking_is_kept_apart_from_its_answer_and_not_sent_back(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream, field: str
) -> None:
    steer(engine, reasoning=THOUGHT, reasoning_field=field)
    conversation = chat.create(THINKER)
    answer = chat.send(conversation["id"], "Why?")
    assert answer.status == 200
    deltas = [c["choices"][0]["delta"] for c in answer.chunks if c.get("choices")]
    thinking = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert thinking.split() == THOUGHT.split()  # streamed apart from the content, whatever the engine did
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)  # under both names
    assert answer.text.split() == REPLY and "<" not in answer.text
    stored = chat.conversation(conversation["id"])["messages"][1]
    assert (stored["content"], stored["reasoning"]) == (answer.text, thinking)
    assert (answer.done["message"]["content"], answer.done["message"]["reasoning"]) == (answer.text, thinking)
    # Every generated token is charged, the thinking and the tags too.
    (event,) = wait_events(web_gateway, chat.email, 1)
    tags = 2 if field == "think" else 0
    assert (event.bucket, event.completion) == ("chat", len(THOUGHT.split()) + len(REPLY) + tags)
    assert stored["completion_tokens"] == event.completion
    # The next question sends the answer back without its thinking.
    steer(engine)
    assert chat.send(conversation["id"], "And then?").status == 200
    assert last_body(engine)["messages"][1] == {"role": "assistant", "content": answer.text}


def test_hang_up_cancels_the_engine_and_charges_what_was_generated(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream
) -> None:
    steer(engine, delay_ms=150)
    conversation = chat.create(MODEL)
    before = engine.stats()
    path = f"/web-api/conversations/{conversation['id']}/messages"
    with chat.http.stream("POST", path, json={"content": "Tell me a story"}, headers=chat.headers) as response:
        assert response.status_code == 200
        partial = Answer.read(response, stop_after=4)
    # Closing the response closed the connection: the gateway saw the hang-up.
    (event,) = wait_events(web_gateway, chat.email, 1)
    assert event.bucket == "chat" and event.outcome == "client_disconnect"
    assert 4 <= event.completion < len(REPLY)
    # The engine saw its client go and stopped generating.
    wait_for(lambda: engine.stats()["cancelled"] == before["cancelled"] + 1, what="the engine's cancel")  # type: ignore[operator]
    assert engine.stats()["completed"] == before["completed"]
    # The stored answer is what was generated until the hang-up, and is what was charged.
    wait_for(
        lambda: chat.conversation(conversation["id"])["messages"][-1]["finish"] is not None, what="the answer stored"
    )
    stopped = chat.conversation(conversation["id"])["messages"][-1]
    assert stopped["finish"] == "stopped"
    assert stopped["content"].startswith(partial.text)
    assert len(stopped["content"].split()) == event.completion == stopped["completion_tokens"]


def test_regenerate_replaces_the_last_answer(web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream) -> None:
    conversation = chat.create(MODEL)
    steer(engine, reply="First answer.")
    assert chat.send(conversation["id"], "Question?").text == "First answer."
    steer(engine, reply="Second answer.")
    again = chat.stream(f"/web-api/conversations/{conversation['id']}/regenerate", {})
    assert again.status == 200 and again.text == "Second answer."
    messages = chat.conversation(conversation["id"])["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "Question?"), ("assistant", "Second answer.")]
    assert last_body(engine)["messages"] == [{"role": "user", "content": "Question?"}]
    assert [e.bucket for e in wait_events(web_gateway, chat.email, 2)] == ["chat", "chat"]


def test_edit_and_resend_drops_what_followed(chat: ChatClient, engine: FakeUpstream) -> None:
    conversation = chat.create(MODEL)
    steer(engine, reply="One.")
    first = chat.send(conversation["id"], "first")
    steer(engine, reply="Two.")
    chat.send(conversation["id"], "second")
    user_id = first.start["assistant_message"]["id"] - 1
    steer(engine, reply="Edited.")
    edited = chat.stream(f"/web-api/conversations/{conversation['id']}/messages/{user_id}/edit", {"content": "uno"})
    assert edited.status == 200 and edited.text == "Edited."
    messages = chat.conversation(conversation["id"])["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "uno"), ("assistant", "Edited.")]
    assert last_body(engine)["messages"] == [{"role": "user", "content": "uno"}]
    # Only a user message of this conversation can be edited.
    assistant_id = messages[1]["id"]
    path = f"/web-api/conversations/{conversation['id']}/messages/{assistant_id}/edit"
    assert chat.stream(path, {"content": "x"}).status == 404


def test_conversations_list_rename_delete(chat: ChatClient, engine: FakeUpstream) -> None:
    older = chat.create(MODEL)
    newer = chat.create(SMALL, system_prompt="Be brief.")
    listed = chat.http.get("/web-api/conversations").json()["data"]
    assert [c["id"] for c in listed] == [newer["id"], older["id"]]  # the last used first
    assert listed[0]["model"] == SMALL and listed[0]["system_prompt"] == "Be brief."
    renamed = chat.http.patch(
        f"/web-api/conversations/{older['id']}", json={"title": " Trip plans "}, headers=chat.headers
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trip plans"
    assert (
        chat.http.patch(f"/web-api/conversations/{older['id']}", json={"title": "  "}, headers=chat.headers).status_code
        == 400
    )
    changed = chat.http.patch(
        f"/web-api/conversations/{older['id']}",
        json={"system_prompt": "Use French.", "model": SMALL},
        headers=chat.headers,
    )
    assert (changed.json()["system_prompt"], changed.json()["model"]) == ("Use French.", SMALL)
    not_chat = chat.http.patch(
        f"/web-api/conversations/{older['id']}", json={"model": "BAAI/bge-multilingual-gemma2"}, headers=chat.headers
    )
    assert not_chat.status_code == 400
    assert chat.http.delete(f"/web-api/conversations/{newer['id']}", headers=chat.headers).status_code == 204
    assert [c["id"] for c in chat.http.get("/web-api/conversations").json()["data"]] == [older["id"]]
    assert chat.http.get(f"/web-api/conversations/{newer['id']}").status_code == 404


def test_another_accounts_conversation_is_not_found(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream
) -> None:
    mine = chat.create(MODEL)
    chat.send(mine["id"], "secret plans")
    other = ChatClient(web_gateway)
    try:
        base = f"/web-api/conversations/{mine['id']}"
        assert other.http.get(base).status_code == 404
        assert other.http.get(f"/chat/{mine['id']}").status_code == 404
        assert other.http.patch(base, json={"title": "mine now"}, headers=other.headers).status_code == 404
        assert other.http.delete(base, headers=other.headers).status_code == 404
        assert other.send(mine["id"], "hi").status == 404
        assert other.stream(base + "/regenerate", {}).status == 404
        assert other.stream(base + "/messages/1/edit", {"content": "x"}).status == 404
        assert other.http.get("/web-api/conversations").json()["data"] == []
        # Still the owner's, untouched.
        kept = chat.conversation(mine["id"])
        assert kept["title"] == "secret plans" and len(kept["messages"]) == 2
        assert other.http.get("/web-api/conversations/not-an-id").status_code == 404
    finally:
        other.close()


def test_state_changes_need_the_csrf_token(chat: ChatClient, engine: FakeUpstream) -> None:
    conversation = chat.create(MODEL)
    base = f"/web-api/conversations/{conversation['id']}"
    for headers in ({}, {"x-csrf-token": "forged"}):
        assert chat.http.post("/web-api/conversations", json={"model": MODEL}, headers=headers).status_code == 403
        assert chat.http.patch(base, json={"title": "x"}, headers=headers).status_code == 403
        assert chat.http.delete(base, headers=headers).status_code == 403
        assert chat.http.post(base + "/messages", json={"content": "hi"}, headers=headers).status_code == 403
        assert chat.http.post(base + "/regenerate", json={}, headers=headers).status_code == 403
    assert chat.conversation(conversation["id"])["messages"] == []


def test_without_a_session_every_call_is_refused(web_gateway: LiveGateway, chat: ChatClient) -> None:
    conversation = chat.create(MODEL)
    anonymous = httpx.Client(base_url=f"http://127.0.0.1:{web_gateway.port}")
    try:
        assert anonymous.get("/web-api/conversations").status_code == 401
        assert anonymous.get(f"/web-api/conversations/{conversation['id']}").status_code == 401
        assert anonymous.post(f"/web-api/conversations/{conversation['id']}/messages", json={}).status_code == 401
        assert anonymous.get("/chat").status_code == 303  # the page sends a person to log in
    finally:
        anonymous.close()


def test_picker_says_why_a_model_is_unavailable(chat: ChatClient) -> None:
    models = {m["id"]: m for m in chat.http.get("/web-api/chat/models").json()["data"]}
    assert "BAAI/bge-multilingual-gemma2" not in models  # embeddings are not chat models
    assert models[MODEL]["available"] and models[MODEL]["limit"] == 1_000_000
    assert (models[NO_CHAT_QUOTA]["available"], models[NO_CHAT_QUOTA]["reason"]) == (
        False,
        "no web chat quota for this model",
    )
    assert (models[API_ONLY]["available"], models[API_ONLY]["reason"]) == (False, "not offered in the web chat")
    # Sending anyway is refused by admission, before any engine work.
    conversation = chat.create(API_ONLY)
    refused = chat.send(conversation["id"], "hi")
    assert refused.status == 400 and refused.error is not None
    assert refused.error["error"]["code"] == "model_not_available_for_surface"
    zero = chat.send(conversation["id"], "hi", model=NO_CHAT_QUOTA)
    assert zero.status == 429 and zero.error is not None
    assert zero.error["error"]["code"] == "insufficient_quota" and zero.error["resets_at"].endswith("T00:00:00Z")


def test_exhausted_chat_quota_is_a_429_with_the_reset_time(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream
) -> None:
    prompt = 1 + 4
    web_gateway.cli(
        "quota",
        "set",
        "--account",
        chat.email,
        "--model",
        SMALL,
        "--bucket",
        "chat",
        "--tokens",
        str(prompt + len(REPLY)),
    )
    wait_for(lambda: quota_of(chat, SMALL)["limit"] == prompt + len(REPLY), what="the quota override applied")
    quota = quota_of(chat, SMALL)
    conversation = chat.create(SMALL)
    answer = chat.send(conversation["id"], "Hi")
    assert answer.status == 200 and answer.done["quota"]["remaining"] == 0
    assert answer.done["quota"]["exhausted"] and "resets at" in answer.done["quota"]["reason"]
    refused = chat.send(conversation["id"], "And again?")
    assert refused.status == 429 and refused.error is not None
    assert refused.error["error"]["type"] == "insufficient_quota"
    assert refused.error["resets_at"] == quota["resets_at"]
    assert [e.outcome for e in usage_events(web_gateway, chat.email)] == ["ok"]  # the refusal cost nothing


def test_an_answer_holds_at_most_the_answer_cap_so_two_tabs_answer_at_once(
    web_gateway: LiveGateway, chat: ChatClient, engine: FakeUpstream
) -> None:
    # Room for two capped answers (prompt + 4,096 each), far less than the context's 128,000:
    # an answer holding all that is left would refuse the second tab while the first streams.
    web_gateway.cli("quota", "set", "--account", chat.email, "--model", MODEL, "--bucket", "chat", "--tokens", "9000")
    wait_for(lambda: quota_of(chat, MODEL)["limit"] == 9000, what="the quota override applied")
    tabs = [chat.create(MODEL), chat.create(MODEL)]
    steer(engine, delay_ms=150)  # each answer streams for ~1.5 s: they overlap
    with ThreadPoolExecutor(2) as threads:
        answers = list(threads.map(lambda c: chat.send(c["id"], "Hi"), tabs))
    assert [a.status for a in answers] == [200, 200], [a.error for a in answers]
    assert [e.outcome for e in usage_events(web_gateway, chat.email)] == ["ok", "ok"]
    assert quota_of(chat, MODEL)["used"] == 2 * (1 + 4 + len(REPLY))


def test_bad_input_is_a_clear_error(chat: ChatClient) -> None:
    conversation = chat.create(MODEL)
    base = f"/web-api/conversations/{conversation['id']}"
    assert chat.send(conversation["id"], "   ").status == 400
    assert chat.stream(base + "/messages", {"content": 5}).status == 400
    assert chat.stream(base + "/messages", {"content": "x" * 200_001}).status == 400
    response = chat.http.post(
        base + "/messages", content=b"{not json", headers={**chat.headers, "content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()
    assert chat.stream(base + "/regenerate", {}).status == 400  # nothing to answer yet
    assert (
        chat.http.post("/web-api/conversations", json={"model": "no/such-model"}, headers=chat.headers).status_code
        == 400
    )
