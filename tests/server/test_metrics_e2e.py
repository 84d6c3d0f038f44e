"""Observability end to end: `/metrics` after known traffic, `x-request-id` on every answer, JSON logs.

A gateway of its own (counters from zero), logging JSON lines; the `openai` SDK as the client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import FakeUpstream, LiveGateway, catalog_for, start_gateway, stop
from tests.server.metrics_text import samples, value

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
EMBED = "BAAI/bge-multilingual-gemma2"
SECRET_PROMPT = "zebra-marmalade-7431 is my private prompt"


@pytest.fixture(scope="module")
def observed(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    home: Path = tmp_path_factory.mktemp("observed")
    live = start_gateway(home, catalog_for(fake_upstream.url), {"MESHGATE_LOG_FORMAT": "json"})
    yield live
    assert live.process is not None
    stop(live.process)


def scrape(gateway: LiveGateway, **headers: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", headers=headers, timeout=10)


def test_metrics_count_what_was_sent(observed: LiveGateway) -> None:
    name, key = observed.new_account("metrics")
    client = observed.client(key)
    prompt_in = completion_out = 0
    for _ in range(3):
        answer = client.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "count me"}], max_tokens=3
        )
        assert answer.usage is not None
        prompt_in += answer.usage.prompt_tokens
        completion_out += answer.usage.completion_tokens
    for _ in range(2):
        chunks = list(
            client.chat.completions.create(
                model=LLAMA,
                messages=[{"role": "user", "content": "stream me"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        prompt_in += usage.prompt_tokens
        completion_out += usage.completion_tokens
    legacy = client.completions.create(model=LLAMA, prompt="legacy prompt", max_tokens=2)
    assert legacy.usage is not None
    prompt_in += legacy.usage.prompt_tokens
    completion_out += legacy.usage.completion_tokens
    embedded = client.embeddings.create(model=EMBED, input="embed me")
    with pytest.raises(openai.APIStatusError) as failed:  # the engine fails: 502, charged nothing
        client.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "x"}], max_tokens=2, extra_body={"mock": {"status": 500}}
        )
    assert failed.value.status_code == 502
    with pytest.raises(openai.NotFoundError):  # a model the catalog does not have: never a label
        client.chat.completions.create(model="no/such-model-9f3", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=LLAMA, messages=[], max_tokens=2)
    observed.set_quota(name, key, LLAMA, "api", 5)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}], max_tokens=50)

    response = scrape(observed)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    metrics = samples(text)
    api = {"model": LLAMA, "bucket": "api"}
    chat = {**api, "endpoint": "chat/completions"}
    assert value(metrics, "meshgate_requests_total", **chat, status="2xx") == 5
    assert value(metrics, "meshgate_requests_total", **chat, status="5xx") == 1
    assert value(metrics, "meshgate_requests_total", **chat, status="4xx") == 1  # the 429
    assert value(metrics, "meshgate_requests_total", **api, endpoint="completions", status="2xx") == 1
    embeddings = {"model": EMBED, "bucket": "embeddings"}
    assert value(metrics, "meshgate_requests_total", **embeddings, endpoint="embeddings", status="2xx") == 1
    # tokens in and out: exactly the usage the clients were told
    assert value(metrics, "meshgate_prompt_tokens_total", **api) == prompt_in
    assert value(metrics, "meshgate_completion_tokens_total", **api) == completion_out
    assert embedded.usage is not None
    assert value(metrics, "meshgate_prompt_tokens_total", **embeddings) == embedded.usage.prompt_tokens
    assert value(metrics, "meshgate_quota_refusals_total", **api, limit="account") == 1
    assert value(metrics, "meshgate_quota_refusals_total", **api, limit="key_budget") == 0
    assert value(metrics, "meshgate_upstream_errors_total", **api, kind="status") == 1
    assert value(metrics, "meshgate_request_duration_seconds_count", **chat) == 6
    assert value(metrics, "meshgate_time_to_first_token_seconds_count", **api) == 2
    assert value(metrics, "meshgate_requests_in_flight", **api) == 0
    # refused before any model was known (the unknown model, the empty messages): no model label
    unrouted = {"model": "", "bucket": "", "endpoint": "chat/completions", "status": "4xx"}
    assert value(metrics, "meshgate_requests_total", **unrouted) == 2
    assert "no/such-model-9f3" not in text and key not in text and key[:12] not in text and name not in text


def test_the_metrics_token_option(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> None:
    live = start_gateway(
        tmp_path_factory.mktemp("metrics-token"), catalog_for(fake_upstream.url), {"MESHGATE_METRICS_TOKEN": "s3cr3t"}
    )
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cr3t"}):
            refused = scrape(live, **headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        allowed = scrape(live, Authorization="Bearer s3cr3t")
        assert allowed.status_code == 200 and "meshgate_requests_total" in allowed.text
        assert "s3cr3t" not in allowed.text
    finally:
        assert live.process is not None
        stop(live.process)


def test_x_request_id_on_every_answer(observed: LiveGateway) -> None:
    _, key = observed.new_account("ids")
    auth = {"Authorization": f"Bearer {key}"}
    base = observed.base_url
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ok = httpx.post(base + "/chat/completions", json=body, headers=auth)
    assert ok.status_code == 200 and ok.headers["x-request-id"].startswith("chatcmpl-")
    kept = httpx.post(base + "/chat/completions", json=body, headers={**auth, "x-request-id": "client-trace-42"})
    assert kept.headers["x-request-id"] == "client-trace-42"
    for bad in ("a" * 129, "two words", "new\tline"):
        replaced = httpx.post(base + "/chat/completions", json=body, headers={**auth, "x-request-id": bad})
        assert replaced.headers["x-request-id"].startswith("chatcmpl-")
    with httpx.stream("POST", base + "/chat/completions", json={**body, "stream": True}, headers=auth) as stream:
        assert stream.headers["x-request-id"].startswith("chatcmpl-")
        stream.read()
    legacy = httpx.post(base + "/completions", json={"model": LLAMA, "prompt": "p", "max_tokens": 1}, headers=auth)
    assert legacy.headers["x-request-id"].startswith("cmpl-")
    embedded = httpx.post(base + "/embeddings", json={"model": EMBED, "input": "e"}, headers=auth)
    assert embedded.headers["x-request-id"].startswith("embd-")
    for response in (
        httpx.post(base + "/chat/completions", json=body),  # 401
        httpx.post(base + "/chat/completions", json={**body, "max_token": 1}, headers=auth),  # 400
        httpx.get(base + "/no/such/endpoint", headers=auth),  # 404
        httpx.get(f"http://127.0.0.1:{observed.port}/metrics"),
    ):
        assert response.headers["x-request-id"].startswith(("req-", "chatcmpl-")), response.headers
    own = httpx.get(base + "/no/such/endpoint", headers={"x-request-id": "mine-404"})
    assert own.status_code == 404 and own.headers["x-request-id"] == "mine-404"
    ids = {ok.headers["x-request-id"], legacy.headers["x-request-id"], embedded.headers["x-request-id"]}
    assert len(ids) == 3


def log_lines(gateway: LiveGateway) -> list[dict[str, Any]]:
    lines = (gateway.home / "serve.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_json_logs_name_the_request_and_hold_no_secrets(observed: LiveGateway) -> None:
    _, key = observed.new_account("logs")
    client = observed.client(key)
    auth = {"Authorization": f"Bearer {key}"}
    messages = [{"role": "user", "content": SECRET_PROMPT}]
    # an engine that reports impossible usage is logged as an error, naming the request
    client.chat.completions.create(
        model=LLAMA,
        messages=messages,
        max_tokens=2,
        extra_body={"mock": {"bad_usage": -1}},
        extra_headers={"x-request-id": "trace-logged-1"},
    )
    # and traffic that fails every way the prompt could leak: engine errors, bad fields, bad JSON, a bad key
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=LLAMA, messages=messages, extra_body={"mock": {"status": 500}})
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=LLAMA, messages=messages, extra_body={"mock": {"status": 400}})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=LLAMA, messages=messages, extra_body={"n_predict": 3})
    httpx.post(
        observed.base_url + "/chat/completions", content=b'{"messages": "' + SECRET_PROMPT.encode(), headers=auth
    )
    httpx.post(
        observed.base_url + "/chat/completions",
        json={"model": LLAMA, "messages": messages},
        headers={"Authorization": f"Bearer {key}x"},
    )
    with pytest.raises(openai.APIError):  # a stream the engine drops: an error event
        list(
            client.chat.completions.create(
                model=LLAMA, messages=messages, stream=True, max_tokens=3, extra_body={"mock": {"drop_after": 1}}
            )
        )
    client.chat.completions.create(  # the request's own id, when the client sends none
        model=LLAMA, messages=messages, max_tokens=2, extra_body={"mock": {"bad_usage": -1}}
    )
    deadline = time.monotonic() + 10
    while not any(line.get("request_id") == "trace-logged-1" for line in log_lines(observed)):
        assert time.monotonic() < deadline, (observed.home / "serve.log").read_text()[-2000:]
        time.sleep(0.1)
    lines = log_lines(observed)  # every line is one JSON object
    logged = next(line for line in lines if line.get("request_id") == "trace-logged-1")
    assert (
        logged["level"] == "ERROR" and logged["logger"].startswith("meshgate") and "invalid usage" in logged["message"]
    )
    assert set(logged) >= {"time", "level", "logger", "message", "request_id"}
    assert any(str(line.get("request_id", "")).startswith("chatcmpl-") for line in lines)
    text = (observed.home / "serve.log").read_text()
    assert key not in text and key[:12] not in text and "Bearer" not in text
    assert "zebra-marmalade" not in text
