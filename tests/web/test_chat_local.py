"""The web chat with the real local model: `meshgate serve` with no config (llama.cpp, SmolLM2), in Chromium.

Short on purpose: a person signs up, chats with the local model, sees its answer stream in,
and the `chat` bucket is charged what the engine generated.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.conftest import LOCAL_CHAT, LiveGateway, local_default_gateway
from tests.web.chat_helpers import wait_events
from tests.web.conftest import new_email, sign_up, wait_for

CHAT = LOCAL_CHAT


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with local_default_gateway(tmp_path_factory.mktemp("web-local")) as (live, _):
        yield live


def test_chat_with_the_local_model(local_gateway: LiveGateway, browser: Browser) -> None:
    context = browser.new_context(base_url=f"http://127.0.0.1:{local_gateway.port}")
    context.set_default_timeout(60_000)  # a real model on a shared CPU
    try:
        page = context.new_page()
        email = new_email("local")
        sign_up(page, email)
        page.goto("/chat")
        expect(page.locator("#chat[data-ready=true]")).to_be_attached()
        page.get_by_label("Model").select_option(CHAT)
        page.get_by_label("Message", exact=True).fill("What is the capital of France?")
        page.get_by_role("button", name="Send", exact=True).click()
        body = page.locator(".message.assistant .body")
        wait_for(lambda: len(body.inner_text().split()) >= 3, timeout=90, what="the local model's answer")
        stop_button = page.get_by_role("button", name="Stop", exact=True)
        try:  # a long answer: stop it; a short one may finish before (or while) the click lands
            stop_button.click(timeout=2000)
        except PlaywrightTimeoutError:
            expect(stop_button).to_be_hidden()  # the answer finished by itself meanwhile
        expect(page.get_by_role("button", name="Send", exact=True)).to_be_visible()
        (event,) = wait_events(local_gateway, email, 1, timeout=60)
        assert (event.bucket, event.model) == ("chat", CHAT)
        assert event.outcome in ("ok", "client_disconnect")
        assert event.prompt > 5 and event.completion >= 3
        expect(page.locator(".message.assistant .meta")).to_contain_text(
            f"{event.prompt + event.completion} tokens charged"
        )
    finally:
        context.close()
