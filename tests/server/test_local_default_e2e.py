"""`meshgate serve` with no config: real local models behind the same API, keys and quotas."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    LOCAL_CHAT,
    LOCAL_EMBED,
    LiveGateway,
    local_default_gateway,
)

CHAT, EMBED = LOCAL_CHAT, LOCAL_EMBED


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, str]]:
    home = tmp_path_factory.mktemp("local-default")
    with local_default_gateway(home) as (live, key):
        assert key in (home / "serve.log").read_text()  # printed for the user, with the snippets
        yield live, key


def test_real_chat_answer_with_usage(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    client = live.client(key)
    before = live.window(key, CHAT)["used"]
    completion = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, seed=1
    )
    text = completion.choices[0].message.content
    assert text and text.strip()
    assert completion.model == CHAT
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert live.window(key, CHAT)["used"] - before == usage.total_tokens  # quotas count local models too


def test_real_streaming(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    stream = live.client(key).chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and len([c for c in chunks if c.choices]) > 3
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 16


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_real_embeddings_rank_by_meaning(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    result = live.client(key).embeddings.create(
        model=EMBED,
        input=["What is the capital of France?", "Paris is the capital of France.", "Bananas are yellow."],
    )
    query, paris, bananas = (d.embedding for d in result.data)
    assert len(query) == 384
    assert _cosine(query, paris) > _cosine(query, bananas) + 0.2
    assert result.usage.prompt_tokens > 10


def test_local_quota_is_enforced(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    used = live.window(key, CHAT)["used"]
    live.set_quota("local", key, CHAT, "api", used + 150)
    client = live.client(key)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=200)
    assert info.value.code == "insufficient_quota"
    live.set_quota("local", key, CHAT, "api", 500_000)


def test_killed_worker_gives_503_then_comes_back(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    assert live.process is not None
    pid = _child_pid(live.process.pid, "meshgate.engines.llamacpp")
    os.kill(pid, signal.SIGKILL)
    client = live.client(key, timeout=30)
    saw_503 = False
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, "the worker did not come back"
        try:
            client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        except openai.APIStatusError as error:
            assert error.status_code == 503 and error.code == "no_upstream"
            saw_503 = True
            time.sleep(0.2)
            continue
        except openai.APIConnectionError as error:
            raise AssertionError("a request during the restart failed at the connection level") from error
        if saw_503:
            break
        time.sleep(0.05)  # the kill may not have been noticed yet
    assert _child_pid(live.process.pid, "meshgate.engines.llamacpp") != pid
    assert live.window(key, CHAT)["reserved"] == 0


def _child_pid(parent: int, marker: str) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and marker in cmdline:
            return int(proc.name)
    raise AssertionError(f"no child of {parent} runs {marker}")


def test_python_snippet_from_the_banner_runs(local: tuple[LiveGateway, str]) -> None:
    live, _ = local
    log = (live.home / "serve.log").read_text()
    snippet = log[log.index("import openai") : log.index("EOF", log.index("import openai"))]
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert httpx.get(live.base_url.replace("/api/v1", "/health")).status_code == 200


def test_n_above_one_is_refused_for_the_local_engine(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    with pytest.raises(openai.BadRequestError) as info:
        live.client(key).chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=2
        )
    assert info.value.param == "n"


def test_admission_counts_the_prompt_with_the_models_own_tokenizer(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    client = live.client(key)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=1).usage.prompt_tokens  # type: ignore[arg-type, union-attr]
    # one token past the context, by the model's own count: refused before any work
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT, messages=messages, max_tokens=8192 - prompt + 1)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded" and f"{prompt} in the messages" in info.value.message
    # a quota with room for exactly prompt + 3 tokens admits max_tokens=3 (a byte bound would not)
    used = live.window(key, CHAT)["used"]
    live.set_quota("local", key, CHAT, "api", used + prompt + 3)
    try:
        completion = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=3)  # type: ignore[arg-type]
        assert completion.usage is not None and completion.usage.prompt_tokens == prompt
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=CHAT, messages=messages, max_tokens=3)  # type: ignore[arg-type]
    finally:
        live.set_quota("local", key, CHAT, "api", 500_000)


def test_legacy_completions_on_the_local_engine(local: tuple[LiveGateway, str]) -> None:
    live, key = local
    client = live.client(key)
    before = live.window(key, CHAT)["used"]
    completion = client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=4, logprobs=2)
    assert completion.model == CHAT and completion.choices[0].text
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 4
    chunks = list(client.completions.create(model=CHAT, prompt="One, two,", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    window = live.window(key, CHAT)
    assert window["reserved"] == 0 and window["used"] > before + usage.total_tokens
    for fields, param in (({"echo": True}, "echo"), ({"n": 2}, "n"), ({"prompt": ["a", "b"]}, "prompt")):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(**{"model": CHAT, "prompt": "x", "max_tokens": 2, **fields})  # type: ignore[call-overload]
        assert info.value.param == param
