"""Images: passed to vision models, limited before any work, their tokens charged as the engine reports."""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway
from tests.features.conftest import TOOLS, VISION

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


def _ask(*urls: str) -> list[Any]:
    parts: list[Any] = [{"type": "text", "text": "What is in the picture?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


def test_images_reach_a_vision_model_and_their_tokens_are_charged(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    name, key = account
    messages = _ask(PNG, "https://example.com/cat.png")
    completion = features.client(key).chat.completions.create(
        model=VISION, messages=messages, max_tokens=5, extra_body={"mock": {"image_tokens": 700}}
    )
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["messages"][0]["content"] == messages[0]["content"]  # the http URL unfetched
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens == 2 * 700 + 5 + 4  # images + "What is in the picture?" + 4
    assert features.settled(name, 1) == [(usage.prompt_tokens, 5, "ok")]


def test_the_reservation_counts_an_image_as_tokens_not_bytes(features: LiveGateway, account: tuple[str, str]) -> None:
    """A 5 MB image is reserved as the catalog's image_tokens (1000 here), not as millions of tokens of text."""
    name, key = account
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (5 * 1024 * 1024)).decode()
    features.set_quota(name, key, VISION, "api", 3000)  # far below the image's 7 MB of base64
    completion = features.client(key).chat.completions.create(
        model=VISION, messages=_ask(big), max_tokens=5, extra_body={"mock": {"image_tokens": 900}}
    )
    assert completion.usage is not None and completion.usage.prompt_tokens == 900 + 9


def test_a_model_without_vision_refuses_images_before_any_work(
    features: LiveGateway, fake_upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    _, key = account
    before = fake_upstream.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=TOOLS, messages=_ask(PNG), max_tokens=5)
    assert info.value.param == "messages[0].content[1]" and info.value.code == "images_not_supported"
    assert fake_upstream.stats()["requests"] == before
    assert features.window(key, TOOLS)["reserved"] == 0


@pytest.mark.parametrize(
    ("urls", "param", "code"),
    [
        ([PNG] * 11, "messages[0].content[11]", "too_many_images"),
        (["ftp://example.com/cat.png"], "messages[0].content[1].image_url", None),
        (["data:image/png,rawbytes"], "messages[0].content[1].image_url", None),
    ],
)
def test_image_limits(
    features: LiveGateway, account: tuple[str, str], urls: list[str], param: str, code: str | None
) -> None:
    _, key = account
    with pytest.raises(openai.BadRequestError) as info:
        features.client(key).chat.completions.create(model=VISION, messages=_ask(*urls), max_tokens=5)
    assert info.value.param == param and info.value.code == code


def test_an_image_over_20_mb_is_refused(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Its decoded size counts (the base64 text is a third larger); the body limit raised to let it arrive."""
    from tests.conftest import start_gateway, stop
    from tests.features.conftest import _model

    live = start_gateway(
        tmp_path_factory.mktemp("big-images"),
        _model(VISION, fake_upstream.url, "vision = true"),
        {"MESHGATE_MAX_BODY_BYTES": str(40 * 1024 * 1024)},
    )
    try:
        _, key = live.new_account()
        client = live.client(key, timeout=120)
        just = "data:image/png;base64," + base64.b64encode(b"\0" * (20 * 1024 * 1024)).decode()
        over = "data:image/png;base64," + base64.b64encode(b"\0" * (20 * 1024 * 1024 + 1)).decode()
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=VISION, messages=_ask(over), max_tokens=5)
        assert info.value.code == "image_too_large" and info.value.param == "messages[0].content[1].image_url"
        client.chat.completions.create(model=VISION, messages=_ask(just), max_tokens=1)  # 20 MB itself is fine
    finally:
        assert live.process is not None
        stop(live.process)
