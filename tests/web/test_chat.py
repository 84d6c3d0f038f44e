"""The chat page in Chromium, against a live gateway and the fake engine.

A person signs in, picks a model, sends a message and sees the answer grow token by token,
rendered as Markdown with highlighted code; the `chat` bucket (never `api`) is charged
exactly and the quota line follows. Stop cancels the engine's generation and only what was
generated is charged. Regenerate, edit-and-resend, the system prompt, conversations that
persist across reloads, sanitized model HTML, unavailable models and a used-up quota.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import FakeUpstream, LiveGateway
from tests.fakes.upstream import REPLY
from tests.web.chat_helpers import API_ONLY, MODEL, NO_CHAT_QUOTA, SMALL, last_body, steer, usage_events, wait_events
from tests.web.conftest import NO_CLIPBOARD, THINKER, LoggedIn, screenshot, wait_for

MARKDOWN_REPLY = (
    "Here is **bold** text and a list:\n\n- one\n- two\n\n"
    "```python\ndef greet(name):\n    return f'Hello, {name}!'\n```\n\nThat is all."
)


@pytest.fixture
def engine(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    steer(fake_upstream)
    yield fake_upstream
    steer(fake_upstream)  # the fake is shared by the whole session: leave it as found


def open_chat(page: Page, model: str = MODEL) -> None:
    page.goto("/chat")
    expect(page.locator("#chat[data-ready=true]")).to_be_attached()
    page.get_by_label("Model").select_option(model)


def send(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def answers(page: Page) -> list[str]:
    return page.locator(".message.assistant .body").all_inner_texts()


def wait_answered(page: Page, count: int) -> None:
    """`count` assistant messages, none streaming, and the Send button back."""
    expect(page.locator(".message.assistant")).to_have_count(count)
    expect(page.locator(".message.assistant.streaming")).to_have_count(0)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()


def quota_left(page: Page) -> int:
    text = page.locator("#quota").inner_text()
    match = re.search(r"Chat quota left: ([\d,]+) of", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


def test_answer_streams_as_markdown_and_is_charged_to_chat(
    web_gateway: LiveGateway, logged_in: LoggedIn, engine: FakeUpstream
) -> None:
    page, email = logged_in.page, logged_in.account.email
    steer(engine, reply=MARKDOWN_REPLY, delay_ms=80)
    open_chat(page)
    assert quota_left(page) == 1_000_000
    send(page, "Show me a Python greeting")
    # The answer grows in the page while it streams: several different lengths seen before the end.
    body = page.locator(".message.assistant .body").last
    seen: set[int] = set()

    def grown() -> bool:
        seen.add(len(body.inner_text()))
        return len(seen) >= 4

    wait_for(grown, what="the answer to grow token by token")
    wait_answered(page, 1)
    # Markdown rendered, code highlighted.
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("ul li")).to_have_count(2)
    expect(body.locator("pre code.hljs.language-python .hljs-keyword").first).to_have_text("def")
    expect(body).to_contain_text("That is all.")
    # Charged exactly what the engine reported, on the chat bucket; the quota line follows.
    (event,) = wait_events(web_gateway, email, 1)
    completion = len(re.findall(r"\s*\S+", MARKDOWN_REPLY))
    assert (event.bucket, event.model, event.completion, event.outcome) == ("chat", MODEL, completion, "ok")
    assert event.prompt == 5 + 4  # the fake counts words + 4 per message
    expect(page.locator("#quota")).to_contain_text(f"{1_000_000 - event.prompt - event.completion:,} of 1,000,000")
    expect(page.locator(".message.assistant .meta")).to_contain_text(f"{event.prompt + event.completion} tokens")
    assert all(e.bucket == "chat" for e in usage_events(web_gateway, email))  # never the API's
    # The conversation got the first message's title, and its own address.
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations a")).to_have_text("Show me a Python greeting")
    assert re.search(r"/chat/[0-9a-f]{32}$", page.url)
    screenshot(page, "chat")


def test_an_answer_and_its_code_blocks_can_be_copied(logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page = logged_in.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    steer(engine, reply=MARKDOWN_REPLY)
    open_chat(page)
    send(page, "Show me a Python greeting")
    wait_answered(page, 1)
    answer = page.locator(".message.assistant")
    answer.locator("pre").get_by_role("button", name="Copy").click()
    expect(answer.locator("pre button.copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def greet(name):\n    return f'Hello, {name}!'\n"
    answer.locator(".actions").get_by_role("button", name="Copy").click()
    expect(answer.locator(".actions")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN_REPLY  # the Markdown as the model wrote it
    expect(page.locator(".message.user .actions")).not_to_contain_text("Copy")


def test_without_a_clipboard_copy_selects_the_text(logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page = logged_in.page
    page.add_init_script(NO_CLIPBOARD)
    steer(engine, reply=MARKDOWN_REPLY)
    open_chat(page)
    send(page, "Show me a Python greeting")
    wait_answered(page, 1)
    code = page.locator(".message.assistant pre")
    code.get_by_role("button", name="Copy").click()
    expect(code.locator("button.copy-code")).to_have_text("Selected: press Ctrl+C")
    fallback = page.locator("textarea.copy-fallback")
    expect(fallback).to_have_value("def greet(name):\n    return f'Hello, {name}!'\n")
    assert page.evaluate("document.activeElement.className") == "copy-fallback"  # selected, Ctrl+C copies it
    expect(code.locator("button.copy-code")).to_have_text("Copy")  # the button reads Copy again


def test_stop_cancels_the_engine_and_charges_what_was_generated(
    web_gateway: LiveGateway, logged_in: LoggedIn, engine: FakeUpstream
) -> None:
    page, email = logged_in.page, logged_in.account.email
    steer(engine, delay_ms=250)  # 17 words: over 4 s unless stopped
    before = engine.stats()
    open_chat(page)
    send(page, "Tell me a long story")
    body = page.locator(".message.assistant .body").last
    wait_for(lambda: len(body.inner_text().split()) >= 3, what="a few words of the answer")
    page.get_by_role("button", name="Stop", exact=True).click()
    # The engine saw its client go, and stopped before the end.
    wait_for(lambda: engine.stats()["cancelled"] == before["cancelled"] + 1, what="the engine's cancel")  # type: ignore[operator]
    assert engine.stats()["completed"] == before["completed"]
    (event,) = wait_events(web_gateway, email, 1)
    assert (event.bucket, event.outcome) == ("chat", "client_disconnect")
    assert 3 <= event.completion < len(REPLY)
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
    meta = page.locator(".message.assistant .meta").last
    expect(meta).to_contain_text("Stopped")
    expect(meta).to_contain_text(f"{event.prompt + event.completion} tokens charged")
    # What is kept (and shown after a reload) is what was generated, no more: what was charged.
    page.reload()
    expect(page.locator(".message.assistant .body")).to_have_count(1)
    kept = page.locator(".message.assistant .body").inner_text()
    assert kept.split() == REPLY[: event.completion]
    expect(page.locator("#quota")).to_contain_text(f"{1_000_000 - event.prompt - event.completion:,} of")


def test_regenerate_and_edit_and_resend(web_gateway: LiveGateway, logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page, email = logged_in.page, logged_in.account.email
    open_chat(page)
    steer(engine, reply="First answer.")
    send(page, "first question")
    wait_answered(page, 1)
    steer(engine, reply="Another answer.")
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(".message.assistant .body")).to_have_text(["Another answer."])
    wait_answered(page, 1)
    steer(engine, reply="Second answer.")
    send(page, "second question")
    wait_answered(page, 2)
    # Edit the first question: what followed it goes, and the edited one is answered anew.
    steer(engine, reply="Edited answer.")
    page.locator(".message.user").first.get_by_role("button", name="Edit").click()
    page.get_by_label("Edit message").fill("first question, edited")
    page.get_by_role("button", name="Save and send").click()
    expect(page.locator(".message.user .body")).to_have_text(["first question, edited"])
    expect(page.locator(".message.assistant .body")).to_have_text(["Edited answer."])
    wait_answered(page, 1)
    assert last_body(engine)["messages"] == [{"role": "user", "content": "first question, edited"}]
    page.reload()  # the server kept exactly that
    expect(page.locator(".message .body")).to_have_text(["first question, edited", "Edited answer."])
    assert [e.bucket for e in wait_events(web_gateway, email, 4)] == ["chat"] * 4


def test_system_prompt_reaches_the_engine(logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page = logged_in.page
    open_chat(page)
    page.get_by_text("System prompt", exact=True).first.click()  # the <summary> opens the box
    page.get_by_label("System prompt").fill("You are a terse assistant.")
    send(page, "Hi")
    wait_answered(page, 1)
    assert last_body(engine)["messages"] == [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Hi"},
    ]
    # Changed for the conversation: the next answer gets the new one.
    page.get_by_label("System prompt").fill("Answer in French.")
    page.get_by_role("button", name="Save system prompt").click()
    expect(page.locator("#system-saved")).to_have_text("Saved.")
    page.reload()
    expect(page.get_by_label("System prompt")).to_have_value("Answer in French.")
    send(page, "Again")
    wait_answered(page, 2)
    assert last_body(engine)["messages"][0] == {"role": "system", "content": "Answer in French."}


def test_conversations_persist_rename_and_delete(logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page = logged_in.page
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete …?"
    open_chat(page)
    send(page, "Plans for the trip")
    wait_answered(page, 1)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".message")).to_have_count(0)
    send(page, "Recipe for soup")
    wait_answered(page, 1)
    titles = page.locator("#conversations a.conversation-title")
    expect(titles).to_have_text(["Recipe for soup", "Plans for the trip"])
    # Rename, and it stays renamed after a reload.
    page.get_by_role("button", name="Rename Plans for the trip").click()
    page.get_by_label("New title").fill("Holiday")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(titles).to_have_text(["Recipe for soup", "Holiday"])
    page.reload()
    expect(titles).to_have_text(["Recipe for soup", "Holiday"])
    # Open the other conversation: its messages come from the server.
    titles.nth(1).click()
    expect(page.locator(".message.user .body")).to_have_text(["Plans for the trip"])
    assert page.locator(".message.assistant .body").inner_text().split() == REPLY
    # Delete it: gone from the list, after a reload too, and its address is a 404.
    address = page.url
    page.get_by_role("button", name="Delete Holiday").click()
    expect(titles).to_have_text(["Recipe for soup"])
    page.reload()
    expect(titles).to_have_text(["Recipe for soup"])
    assert page.goto(address).status == 404  # type: ignore[union-attr]


def test_html_in_an_answer_never_runs(logged_in: LoggedIn, engine: FakeUpstream) -> None:
    page = logged_in.page
    steer(
        engine,
        reply=(
            'Look: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>\n\n'
            '<div onmouseover="window.__xss=3">block html</div>\n\n'
            "[a link](javascript:window.__xss=4) ![pic](x onerror=window.__xss=5)"
        ),
    )
    open_chat(page)
    send(page, "Say something dangerous")
    wait_answered(page, 1)
    body = page.locator(".message.assistant .body")
    expect(body).to_contain_text('<img src=x onerror="window.__xss=1">')  # shown as text
    expect(body).to_contain_text("<script>window.__xss=2</script>")
    assert body.locator("script, img[onerror], [onerror], [onmouseover], div").count() == 0
    hrefs = body.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert all(not (href or "").lower().startswith("javascript:") for href in hrefs)
    page.locator(".message.assistant").hover()
    assert page.evaluate("window.__xss") is None
    page.reload()  # stored, and just as harmless when loaded from the server
    expect(page.locator(".message.assistant .body")).to_contain_text("<script>window.__xss=2</script>")
    assert page.evaluate("window.__xss") is None


def test_a_reasoning_models_thinking_is_shown_folded_above_its_answer(
    logged_in: LoggedIn, engine: FakeUpstream
) -> None:
    page = logged_in.page
    thought = "the user asks why so I weigh it"
    steer(engine, reasoning=thought, reasoning_field="think", delay_ms=150)  # inline <think> tags cut across events
    open_chat(page, THINKER)
    send(page, "Why?")
    thinking = page.locator(".message.assistant details.thinking")
    expect(thinking.locator("summary")).to_have_text("Thinking…")  # open while the model thinks
    expect(thinking).to_have_js_property("open", True)
    wait_answered(page, 1)
    expect(thinking.locator("summary")).to_have_text("Thought")
    expect(thinking).to_have_js_property("open", False)  # folded once the answer came
    assert answers(page)[0].split() == REPLY  # no tags, no thinking in the answer
    thinking.locator("summary").click()
    assert thinking.locator(".thought").inner_text().split() == thought.split()
    page.reload()  # kept with the answer
    expect(page.locator(".message.assistant details.thinking .thought")).to_have_text(re.compile("weigh it"))
    expect(page.locator(".message.user details.thinking")).to_be_hidden()  # only answers think
    # A plain model's answer shows no thinking.
    steer(engine)
    page.get_by_role("button", name="New chat").click()
    open_chat(page, MODEL)
    send(page, "Hello")
    wait_answered(page, 1)
    expect(page.locator(".message.assistant details.thinking")).to_be_hidden()


def test_streaming_renders_once_per_frame_and_only_the_streamed_message(
    logged_in: LoggedIn, engine: FakeUpstream
) -> None:
    page = logged_in.page
    open_chat(page)
    send(page, "warm up")
    wait_answered(page, 1)
    # Mark the messages on the page: a re-render of the conversation would replace them.
    page.evaluate("document.querySelectorAll('.message').forEach(m => { m.__kept = true; })")
    first = page.locator(".message.assistant .body").first
    first_renders = first.get_attribute("data-renders")
    words = 400
    steer(engine, reply=" ".join(f"w{i}" for i in range(words)))  # 400 events, as fast as the gateway relays
    send(page, "go fast")
    wait_answered(page, 2)
    assert page.locator(".message.assistant .body").last.inner_text().split() == [f"w{i}" for i in range(words)]
    kept = page.evaluate("[...document.querySelectorAll('.message')].map(m => m.__kept === true)")
    assert kept == [True, True, False, False]  # the earlier messages were never rebuilt
    assert first.get_attribute("data-renders") == first_renders  # not rendered again while the other streamed
    renders = int(page.locator(".message.assistant .body").last.get_attribute("data-renders") or 0)
    assert 1 <= renders < words / 2  # coalesced per animation frame, not one render per token


def test_unavailable_models_and_a_used_up_quota(
    web_gateway: LiveGateway, logged_in: LoggedIn, engine: FakeUpstream
) -> None:
    page, email = logged_in.page, logged_in.account.email
    open_chat(page)
    picker = page.get_by_label("Model")
    expect(picker.locator(f'option[value="{NO_CHAT_QUOTA}"]')).to_be_disabled()
    expect(picker.locator(f'option[value="{NO_CHAT_QUOTA}"]')).to_contain_text("no web chat quota for this model")
    expect(picker.locator(f'option[value="{API_ONLY}"]')).to_be_disabled()
    expect(picker.locator(f'option[value="{API_ONLY}"]')).to_contain_text("not offered in the web chat")
    expect(picker.locator(f'option[value="{SMALL}"]')).to_be_enabled()
    # A quota that one answer uses up exactly.
    limit = (1 + 4) + len(REPLY)
    web_gateway.cli("quota", "set", "--account", email, "--model", SMALL, "--bucket", "chat", "--tokens", str(limit))

    def applied() -> bool:
        page.reload()
        expect(page.locator("#chat[data-ready=true]")).to_be_attached()
        picker.select_option(SMALL)
        return f"of {limit} tokens" in page.locator("#quota").inner_text()

    wait_for(applied, what="the quota override on the page")
    send(page, "Hi")
    wait_answered(page, 1)
    quota = page.locator("#quota")
    expect(quota).to_contain_text(f"Chat quota left: 0 of {limit} tokens")
    expect(quota).to_contain_text(f"Today's chat quota for {SMALL} is used up; it resets at ")
    expect(quota).to_contain_text(" 00:00 UTC")
    send(page, "Once more")
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text(f"Your chat quota for {SMALL} is used up.")
    expect(notice).to_contain_text(re.compile(r"It resets at \d{4}-\d\d-\d\d 00:00 UTC\."))
    expect(page.locator(".message.assistant")).to_have_count(1)  # no answer, no charge
    asked = page.locator(".message.user").last  # the question is kept, to resend once the quota is back
    expect(asked.locator(".body")).to_have_text("Once more")
    expect(asked.get_by_role("button", name="Regenerate")).to_be_visible()
    assert [e.outcome for e in usage_events(web_gateway, email)] == ["ok"]
