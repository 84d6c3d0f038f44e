"""What the chat tests share: steering the fake engine, reading the ledger, a logged-in HTTP client, the stream."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tests.conftest import FakeUpstream, LiveGateway
from tests.web.conftest import csrf_of, http_sign_up, new_email

MODEL = "meta-llama/Llama-3.3-70B-Instruct"  # chat 1,000,000 / api 500,000 a day in catalog_for
SMALL = "web-only/Chat-Model"  # chat 1,000 a day, no API quota
NO_CHAT_QUOTA = "meta-llama/Llama-3.2-90B-Vision-Instruct"  # chat 0
API_ONLY = "Qwen/Qwen2.5-VL-32B-Instruct"  # no chat bucket at all


def steer(upstream: FakeUpstream, **mock: Any) -> None:
    """The fake engine's `mock` for the requests that carry none (the web chat builds its own bodies)."""
    response = httpx.post(f"http://127.0.0.1:{upstream.port}/mock/defaults", json=mock, timeout=10)
    assert response.status_code == 200, response.text


def last_body(upstream: FakeUpstream) -> dict[str, Any]:
    body = upstream.stats()["last_body"]
    assert isinstance(body, dict)
    return body


@dataclass(frozen=True)
class Event:
    request_id: str
    bucket: str
    model: str
    prompt: int
    completion: int
    outcome: str


def usage_events(gw: LiveGateway, email: str) -> list[Event]:
    """The account's settled requests, oldest first (its name is the email it signed up with)."""
    rows = gw.query(
        "SELECT e.request_id, e.bucket, e.model, e.prompt_tokens, e.completion_tokens, e.outcome"
        " FROM usage_events e JOIN accounts a ON a.id = e.account_id WHERE a.name = :name ORDER BY e.created_at",
        name=email,
    )
    return [Event(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), str(r[5])) for r in rows]  # type: ignore[call-overload]


def wait_events(gw: LiveGateway, email: str, count: int, timeout: float = 15.0) -> list[Event]:
    deadline = time.monotonic() + timeout
    while True:
        events = usage_events(gw, email)
        if len(events) >= count:
            return events
        assert time.monotonic() < deadline, f"{len(events)} usage events of {email}, expected {count}"
        time.sleep(0.05)


class ChatClient:
    """A logged-in account's JSON calls, with its CSRF token (as the page sends them)."""

    def __init__(self, gw: LiveGateway, email: str | None = None) -> None:
        self.email = email or new_email("chat")
        self.http = http_sign_up(gw, self.email)
        self.csrf = csrf_of(self.http.get("/chat").text)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-csrf-token": self.csrf}

    def create(self, model: str = MODEL, system_prompt: str = "") -> dict[str, Any]:
        response = self.http.post(
            "/web-api/conversations", json={"model": model, "system_prompt": system_prompt}, headers=self.headers
        )
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        response = self.http.get(f"/web-api/conversations/{conversation_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def stream(self, path: str, body: dict[str, Any]) -> Answer:
        """POST a stream endpoint and read it to its end."""
        with self.http.stream("POST", path, json=body, headers=self.headers) as response:
            if response.status_code != 200:
                response.read()
                return Answer(response.status_code, [], [], response.json())
            return Answer.read(response)

    def send(self, conversation_id: str, content: str, **extra: Any) -> Answer:
        return self.stream(f"/web-api/conversations/{conversation_id}/messages", {"content": content, **extra})

    def close(self) -> None:
        self.http.close()


@dataclass
class Answer:
    status: int
    chunks: list[dict[str, Any]]  # the OpenAI chunks
    meta: list[dict[str, Any]]  # the chat's own events: start, done
    error: dict[str, Any] | None = None

    @classmethod
    def read(cls, response: httpx.Response, stop_after: int | None = None) -> Answer:
        """Read events; with `stop_after`, hang up after that many content chunks (the Stop button)."""
        answer = cls(response.status_code, [], [])
        for event_name, data in sse_events(response):
            if data == b"[DONE]":
                continue
            parsed = orjson.loads(data)
            if event_name == "meshgate":
                answer.meta.append(parsed)
                continue
            answer.chunks.append(parsed)
            if stop_after is not None and len(answer.content_chunks()) >= stop_after:
                break
        return answer

    def content_chunks(self) -> list[str]:
        return [
            c["choices"][0]["delta"]["content"]
            for c in self.chunks
            if c.get("choices") and c["choices"][0].get("delta", {}).get("content")
        ]

    @property
    def text(self) -> str:
        return "".join(self.content_chunks())

    @property
    def done(self) -> dict[str, Any]:
        return next(m for m in self.meta if m["type"] == "done")

    @property
    def start(self) -> dict[str, Any]:
        return next(m for m in self.meta if m["type"] == "start")


def sse_events(response: httpx.Response) -> Any:
    """(event name, data) per server-sent event."""
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            name = "message"
            data = []
            for line in raw.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].strip())
            if data:
                yield name, b"\n".join(data)
