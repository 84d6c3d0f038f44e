"""Shared fixtures: a fake OpenAI-compatible engine and live `meshgate serve` processes on loopback."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
MESHGATE = [sys.executable, "-m", "meshgate.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FakeUpstream:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, object]:
        return httpx.get(f"http://127.0.0.1:{self.port}/mock/stats").json()  # type: ignore[no-any-return]


def start_fake_upstream(port: int | None = None, *args: str) -> FakeUpstream:
    """A fake engine process; `args` are its flags, e.g. "--no-tokenize", "--max-model-len", "4096"."""
    port = port or free_port()
    command = [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port), *args]
    process = subprocess.Popen(command, cwd=ROOT)
    wait_http(f"http://127.0.0.1:{port}/health", process=process)
    return FakeUpstream(port, process)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = start_fake_upstream()
    yield upstream
    stop(upstream.process)


def catalog_for(upstream_url: str, chat_quota: int = 500_000, context: int = 128_000) -> str:
    return f"""
[[models]]
id = "meta-llama/Llama-3.3-70B-Instruct"
kind = "chat"
context_length = {context}
daily_quota = {{ chat = 1000000, api = {chat_quota} }}
owned_by = "io-intelligence"
[[models.upstreams]]
url = "{upstream_url}"
model = "served-llama"

[[models]]
id = "Qwen/Qwen2.5-VL-32B-Instruct"
kind = "chat"
context_length = 32000
daily_quota = {{ api = 200000 }}
[[models.upstreams]]
url = "{upstream_url}"

[[models]]
id = "meta-llama/Llama-3.2-90B-Vision-Instruct"
kind = "chat"
context_length = 16000
daily_quota = {{ chat = 0, api = 0 }}
[[models.upstreams]]
url = "{upstream_url}"

[[models]]
id = "web-only/Chat-Model"
kind = "chat"
context_length = 8000
daily_quota = {{ chat = 1000 }}
[[models.upstreams]]
url = "{upstream_url}"

[[models]]
id = "BAAI/bge-multilingual-gemma2"
kind = "embedding"
context_length = 4096
daily_quota = {{ embeddings = 1000000 }}
[[models.upstreams]]
url = "{upstream_url}"
"""


@dataclass
class LiveGateway:
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*MESHGATE, *args], env=self.env, cwd=ROOT, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"meshgate {' '.join(args)} failed: {result.stderr}")
        return result

    def new_account(self, prefix: str = "user") -> tuple[str, str]:
        """A fresh account and an API key for it: (name, secret)."""
        name = f"{prefix}-{os.urandom(4).hex()}"
        self.cli("accounts", "create", name)
        secret = self.cli("keys", "create", "--account", name).stdout.strip().splitlines()[-1]
        return name, secret

    def client(self, key: str, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.base_url + "/", max_retries=0, **kwargs)  # type: ignore[arg-type]

    def usage(self, key: str) -> dict[str, object]:
        response = httpx.get(self.base_url + "/usage", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def window(self, key: str, model: str, bucket: str = "api") -> dict[str, int]:
        for row in self.usage(key)["data"]:  # type: ignore[attr-defined]
            if row["model"] == model and row["bucket"] == bucket:
                return row  # type: ignore[no-any-return]
        raise KeyError((model, bucket))

    def settled(self, account: str, count: int = 0, timeout: float = 5.0) -> list[tuple[int, int, str]]:
        """The account's settled requests as (prompt, completion, outcome), oldest first, once there
        are at least `count` of them (or `timeout` has passed)."""
        deadline = time.monotonic() + timeout
        while True:
            db = sqlite3.connect(self.home / "meshgate.db")
            try:
                rows = db.execute(
                    "SELECT prompt_tokens, completion_tokens, outcome FROM usage_events e JOIN accounts a"
                    " ON a.id = e.account_id WHERE a.name = ? ORDER BY e.created_at",
                    (account,),
                ).fetchall()
            finally:
                db.close()
            if len(rows) >= count or time.monotonic() > deadline:
                return [(int(p), int(c), str(o)) for p, c, o in rows]
            time.sleep(0.02)

    def set_quota(self, account: str, key: str, model: str, bucket: str, tokens: int) -> None:
        """Override a quota and wait until the running gateway applies it."""
        self.cli("quota", "set", "--account", account, "--model", model, "--bucket", bucket, "--tokens", str(tokens))
        deadline = time.monotonic() + 10
        while self.window(key, model, bucket)["limit"] != tokens:
            assert time.monotonic() < deadline, "the gateway did not pick up the quota override"
            time.sleep(0.05)


def start_gateway(
    home: Path, catalog: str, extra_env: dict[str, str] | None = None, max_open_files: int | None = None
) -> LiveGateway:
    """A live `meshgate serve`; `max_open_files` sets its RLIMIT_NOFILE (soft and hard)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "catalog.toml"
    config.write_text(catalog)
    port = free_port()
    env = {
        **os.environ,
        "MESHGATE_HOME": str(home),
        "MESHGATE_AUTH_REFRESH_SECONDS": "0.2",
        "MESHGATE_EXTRA_FIELDS": "mock",  # the fake engine is steered by a `mock` field
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    env.pop("MESHGATE_DATABASE_URL", None)
    gateway = LiveGateway(home, port, env=env)
    log = open(home / "serve.log", "ab")  # noqa: SIM115 - the process writes to it until it stops
    gateway.process = subprocess.Popen(
        [*MESHGATE, "serve", "--config", str(config), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
        preexec_fn=None if max_open_files is None else lambda: _limit_open_files(max_open_files),
    )
    wait_http(f"http://127.0.0.1:{port}/health", process=gateway.process)
    return gateway


def _limit_open_files(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.fixture(scope="session")
def gateway(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    live = start_gateway(tmp_path_factory.mktemp("gateway"), catalog_for(fake_upstream.url))
    yield live
    assert live.process is not None
    stop(live.process)


@pytest.fixture
def account(gateway: LiveGateway) -> tuple[str, str]:
    return gateway.new_account()
