"""Every error a client can meet is the OpenAI envelope with the right status, never a 422 or a trace."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


def post(
    gateway: LiveGateway, key: str | None, body: bytes | dict[str, object], path: str = "/chat/completions"
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else None
    return httpx.post(
        gateway.base_url + path,
        content=content,
        json=None if content is not None else body,
        headers=headers,
        timeout=30,
    )


def assert_envelope(
    response: httpx.Response, status: int, code: str | None = None, type: str | None = None
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    if type is not None:
        assert error["type"] == type
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": MESSAGES}, "model"),
        ({"model": LLAMA}, "messages"),
        ({"model": LLAMA, "messages": []}, "messages"),
        ({"model": LLAMA, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": LLAMA, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": LLAMA, "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
        ({"model": LLAMA, "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": LLAMA, "messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"model": LLAMA, "messages": MESSAGES, "n": 0}, "n"),
        ({"model": LLAMA, "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": LLAMA, "messages": MESSAGES, "stop": [1]}, "stop"),
        ({"model": LLAMA, "messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_requests_are_400(
    gateway: LiveGateway, account: tuple[str, str], body: bytes | dict[str, object], param: str | None
) -> None:
    error = assert_envelope(post(gateway, account[1], body), 400, type="invalid_request_error")
    assert error["param"] == param


def test_invalid_embeddings_input(gateway: LiveGateway, account: tuple[str, str]) -> None:
    body = {"model": "BAAI/bge-multilingual-gemma2", "input": [1.5]}
    assert assert_envelope(post(gateway, account[1], body, "/embeddings"), 400)["param"] == "input"
    body = {"model": "BAAI/bge-multilingual-gemma2", "input": "x", "encoding_format": "hex"}
    assert assert_envelope(post(gateway, account[1], body, "/embeddings"), 400)["param"] == "encoding_format"


def test_wrong_model_kind(gateway: LiveGateway, account: tuple[str, str]) -> None:
    assert_envelope(
        post(gateway, account[1], {"model": "BAAI/bge-multilingual-gemma2", "messages": MESSAGES}),
        400,
        "wrong_model_kind",
    )
    assert_envelope(post(gateway, account[1], {"model": LLAMA, "input": "x"}, "/embeddings"), 400, "wrong_model_kind")


def test_auth_errors(gateway: LiveGateway) -> None:
    body = {"model": LLAMA, "messages": MESSAGES}
    assert_envelope(post(gateway, None, body), 401, "invalid_api_key")
    assert_envelope(post(gateway, "sk-not-ours", body), 401, "invalid_api_key")
    assert_envelope(post(gateway, "mg-abcdefghij-forgedsecretvalue", body), 401, "invalid_api_key")
    response = httpx.get(gateway.base_url + "/models", headers={"Authorization": "Basic abc"})
    assert_envelope(response, 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        gateway.client("mg-zzzzzzzzzz-nope").models.list()


def test_wrong_secret_for_a_real_key_id(gateway: LiveGateway, account: tuple[str, str]) -> None:
    key = account[1]
    forged = key[: key.rindex("-") + 1] + "A" * 32
    assert_envelope(post(gateway, forged, {"model": LLAMA, "messages": MESSAGES}), 401, "invalid_api_key")


def test_unknown_model_is_404(gateway: LiveGateway, account: tuple[str, str]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        gateway.client(account[1]).chat.completions.create(model="nope/nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert_envelope(post(gateway, account[1], {"model": "nope", "input": "x"}, "/embeddings"), 404, "model_not_found")


def test_body_over_the_limit_is_413(gateway: LiveGateway, account: tuple[str, str]) -> None:
    huge = {"model": LLAMA, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert_envelope(post(gateway, account[1], huge), 413, "request_too_large")


def test_unknown_path_and_method(gateway: LiveGateway, account: tuple[str, str]) -> None:
    headers = {"Authorization": f"Bearer {account[1]}"}
    assert_envelope(httpx.get(gateway.base_url + "/nothing", headers=headers), 404)
    assert_envelope(httpx.get(gateway.base_url + "/chat/completions", headers=headers), 405)


def test_bucket_not_offered_is_400(gateway: LiveGateway, account: tuple[str, str]) -> None:
    # "N/A" in the reference: this model is offered in web chat only, not through the API
    body = {"model": "web-only/Chat-Model", "messages": MESSAGES, "max_tokens": 2}
    error = assert_envelope(post(gateway, account[1], body), 400, "model_not_available_for_surface")
    assert error["param"] == "model"


def test_quota_override_of_zero_is_429(gateway: LiveGateway) -> None:
    qwen = {"model": "Qwen/Qwen2.5-VL-32B-Instruct", "messages": MESSAGES, "max_tokens": 2}
    name, key = gateway.new_account()
    assert post(gateway, key, qwen).status_code == 200
    gateway.set_quota(name, key, "Qwen/Qwen2.5-VL-32B-Instruct", "api", 0)
    assert_envelope(post(gateway, key, qwen), 429, "insufficient_quota", "insufficient_quota")


def test_zero_quota_is_429(gateway: LiveGateway, account: tuple[str, str]) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        gateway.client(account[1]).chat.completions.create(
            model="meta-llama/Llama-3.2-90B-Vision-Instruct", messages=MESSAGES, max_tokens=5
        )
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-ratelimit-limit-tokens"] == "0"


def test_quota_exhaustion_429_with_headers(gateway: LiveGateway, fake_upstream: FakeUpstream) -> None:
    name, key = gateway.new_account()
    gateway.set_quota(name, key, LLAMA, "api", 200)
    client = gateway.client(key)
    # "hi" is bounded at 64 + 16 + 2 + 4 (role) = 86 tokens: 86 + 50 are reserved, 5 + 17 charged
    first = client.chat.completions.with_raw_response.create(model=LLAMA, messages=MESSAGES, max_tokens=50)
    assert first.parse().usage.total_tokens == 5 + 17  # type: ignore[union-attr]
    assert first.headers["x-ratelimit-remaining-tokens"] == str(200 - 22)
    # 178 left: the engine counts the prompt as 5, so 5 + 174 does not fit (5 + 173 would)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=174)
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    headers = info.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "200" and headers["x-ratelimit-remaining-tokens"] == "178"
    assert gateway.window(key, LLAMA)["used"] == 22  # the refused request charged nothing
    # without max_tokens the request may generate what is left of the quota, by the engine's count
    assert client.chat.completions.create(model=LLAMA, messages=MESSAGES).usage.completion_tokens == 17  # type: ignore[union-attr]
    assert fake_upstream.stats()["last_body"]["max_tokens"] == 178 - 5  # type: ignore[index]
    window = gateway.window(key, LLAMA)
    assert (window["used"], window["reserved"]) == (44, 0)


def test_context_length_exceeded(gateway: LiveGateway, account: tuple[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client(account[1]).chat.completions.create(
            model="Qwen/Qwen2.5-VL-32B-Instruct", messages=MESSAGES, max_tokens=32000
        )
    assert info.value.code == "context_length_exceeded"
    assert gateway.window(account[1], "Qwen/Qwen2.5-VL-32B-Instruct")["used"] == 0


def test_upstream_errors_map_to_5xx(gateway: LiveGateway, account: tuple[str, str]) -> None:
    key = account[1]
    for status, expected in ((500, 502), (503, 503), (429, 503), (401, 502), (404, 502)):
        body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 3, "mock": {"status": status}}
        assert_envelope(post(gateway, key, body), expected)
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 3, "mock": {"status": 400}}
    assert "mock failure 400" in str(assert_envelope(post(gateway, key, body), 400)["message"])
    window = gateway.window(key, LLAMA)
    assert (window["used"], window["reserved"]) == (0, 0)  # failed requests cost nothing and hold nothing


def test_stream_dropped_by_upstream_ends_with_error_event(gateway: LiveGateway, account: tuple[str, str]) -> None:
    body = {"model": LLAMA, "messages": MESSAGES, "max_tokens": 8, "stream": True, "mock": {"drop_after": 3}}
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {account[1]}"}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert '"error"' in lines[-1]
    window = gateway.window(account[1], LLAMA)
    # charged what was generated before the drop: the prompt and three tokens
    assert window["reserved"] == 0 and window["used"] == 5 + 3


def test_revoked_key_stops_working_within_5_seconds(gateway: LiveGateway) -> None:
    name, key = gateway.new_account()
    client = gateway.client(key)
    client.models.list()
    key_id = key.split("-")[1]
    listing = gateway.cli("keys", "list", "--account", name).stdout
    assert key_id in listing and key not in listing  # the secret is never shown again
    gateway.cli("keys", "revoke", key_id)
    wait_until_key_works(client, False)
    assert "revoked" in gateway.cli("keys", "list", "--account", name).stdout


def test_n_choices_reserve_n_completions(gateway: LiveGateway, fake_upstream: FakeUpstream) -> None:
    name, key = gateway.new_account()
    gateway.set_quota(name, key, LLAMA, "api", 200)
    client = gateway.client(key)
    # the prompt (5, by the engine's count) plus 2 x 98 completion tokens does not fit in 200; 1 x 98 does
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=98, n=2)
    assert client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=98).usage.total_tokens == 22  # type: ignore[union-attr]
    # without max_tokens, each of the choices may use an equal share of what is left: (178 - 5) // 2
    client.chat.completions.create(model=LLAMA, messages=MESSAGES, n=2)
    sent = fake_upstream.stats()["last_body"]
    assert isinstance(sent, dict) and sent["max_tokens"] == 86 and sent["n"] == 2


def test_disabled_account_is_refused_within_5_seconds(gateway: LiveGateway) -> None:
    name, key = gateway.new_account()
    client = gateway.client(key)
    client.models.list()
    gateway.cli("accounts", "disable", name)
    wait_until_key_works(client, False)
    gateway.cli("accounts", "enable", name)
    wait_until_key_works(client, True)


def wait_until_key_works(client: openai.OpenAI, works: bool, within: float = 5.0) -> None:
    """Poll with the client's key until it is accepted (or refused); fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            client.models.list()
            accepted = True
        except openai.AuthenticationError:
            accepted = False
        if accepted == works:
            return
        assert time.monotonic() < deadline, f"the key is still {'refused' if works else 'accepted'} after {within} s"
        time.sleep(0.05)


def test_expired_key_is_refused(gateway: LiveGateway) -> None:
    name, _ = gateway.new_account()
    created = gateway.cli("keys", "create", "--account", name, "--expires-in", "2s").stdout
    assert "expires" in created
    client = gateway.client(created.strip().splitlines()[-1])
    client.models.list()  # valid until it expires, cached or not
    deadline = time.monotonic() + 5
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError as refused:
            assert "expired" in refused.message
            break
        assert time.monotonic() < deadline, "the key was still accepted 5 s after it was created to last 2 s"
        time.sleep(0.05)
    assert "\texpired" in gateway.cli("keys", "list", "--account", name).stdout
