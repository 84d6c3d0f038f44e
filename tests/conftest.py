"""Shared fixtures: a fake OpenAI-compatible engine and live `meshgate serve` processes on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
MESHGATE = [sys.executable, "-m", "meshgate.cli.main"]

# Where live gateways keep their state: "sqlite" (the default: SQLite + the embedded ledger) or
# "postgres-redis" (each gateway on a fresh PostgreSQL schema and its own Redis key prefix).
BACKEND = os.environ.get("MESHGATE_TEST_BACKEND", "sqlite")
TEST_DATABASE_URL = os.environ.get("MESHGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("MESHGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_SHARED_MADE: list[tuple[str, str]] = []  # (schema, Redis prefix) made by this run, dropped at its end
_SERVICE_PROBLEM: list[str | None] = []  # cached: why PostgreSQL or Redis cannot be used, or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "embedded_ledger: about SQLite + the embedded ledger; not run on postgres-redis")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "sqlite":
        return
    skip = pytest.mark.skip(reason=f"about the embedded ledger; MESHGATE_TEST_BACKEND={BACKEND}")
    for item in items:
        if "embedded_ledger" in item.keywords:
            item.add_marker(skip)


def _service_problem() -> str | None:
    if not _SERVICE_PROBLEM:
        problem = None
        try:
            import redis
            from sqlalchemy import create_engine, text
            from sqlalchemy.pool import NullPool

            client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
            engine = create_engine(_psycopg(TEST_DATABASE_URL), poolclass=NullPool, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            problem = f"PostgreSQL ({TEST_DATABASE_URL}) or Redis ({TEST_REDIS_URL}) is not reachable: {exc}"
        _SERVICE_PROBLEM.append(problem)
    return _SERVICE_PROBLEM[0]


def unavailable(problem: str) -> NoReturn:
    """Something a test needs (a service, the browser) is missing: skipped, but failed under CI=true,
    which `make test` sets once it has installed and started everything, so nothing skips quietly there."""
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def require_services() -> None:
    """PostgreSQL and Redis answer, else `unavailable`."""
    problem = _service_problem()
    if problem is not None:
        unavailable(problem)


def require_redis(url: str = TEST_REDIS_URL) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {url} is unreachable: {exc}")


def _psycopg(url: str) -> str:
    from meshgate.config import normalize_database_url

    return normalize_database_url(url)


def shared_backend(tag: str = "gw") -> dict[str, str]:
    """The environment of gateways sharing one fresh PostgreSQL schema and one Redis key prefix."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    require_services()
    schema = f"mgtest_{tag}_{os.urandom(5).hex()}"
    engine = create_engine(_psycopg(TEST_DATABASE_URL), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    prefix = f"mgtest:{schema}:"
    _SHARED_MADE.append((schema, prefix))
    joiner = "&" if "?" in TEST_DATABASE_URL else "?"
    return {
        "MESHGATE_DATABASE_URL": f"{TEST_DATABASE_URL}{joiner}options=-csearch_path%3D{schema}",
        "MESHGATE_REDIS_URL": TEST_REDIS_URL,
        "MESHGATE_REDIS_PREFIX": prefix,
    }


def drop_shared(schema: str, prefix: str) -> None:
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(_psycopg(TEST_DATABASE_URL), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_shared_backends() -> Iterator[None]:
    yield
    while _SHARED_MADE:
        schema, prefix = _SHARED_MADE.pop()
        try:
            drop_shared(schema, prefix)
        except Exception as exc:  # the services went away: nothing to keep clean there
            print(f"could not drop {schema} / {prefix}*: {exc}", file=sys.stderr)


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


def until_served(call: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    """Repeat `call` while the gateway answers 503 (a local worker still loading its model): a clean
    503 while loading, never a hang or a 500. `what` says why it failed, once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except openai.APIStatusError as error:
            assert error.status_code == 503, error
            assert time.monotonic() < deadline, what()
            time.sleep(0.5)


LOCAL_CHAT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # `meshgate serve`'s default chat model (llama.cpp)
LOCAL_EMBED = "sentence-transformers/all-MiniLM-L6-v2"  # and its default embedding model


@contextlib.contextmanager
def local_default_gateway(home: Path) -> Iterator[tuple[LiveGateway, str]]:
    """`meshgate serve` with no config (`make serve`: the local models on SQLite), once both of its
    models answer; (gateway, the key it wrote for the local account)."""
    port = free_port()
    env = {**os.environ, "MESHGATE_HOME": str(home), "MESHGATE_AUTH_REFRESH_SECONDS": "0.2"}
    env.pop("MESHGATE_DATABASE_URL", None)
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - written by the server until it stops
    process = subprocess.Popen([*MESHGATE, "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log)
    live = LiveGateway(home, port, process, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, process=process)
        key = (home / "local-api-key").read_text().strip()
        client = live.client(key)

        def both() -> None:
            client.chat.completions.create(model=LOCAL_CHAT, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            client.embeddings.create(model=LOCAL_EMBED, input="hi")

        until_served(both, 180, lambda: (home / "serve.log").read_text()[-3000:])
        yield live, key
    finally:
        stop(process)
        log.close()


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

    @property
    def database_url(self) -> str:
        return self.env.get("MESHGATE_DATABASE_URL") or f"sqlite:///{self.home / 'meshgate.db'}"

    def query(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        """Rows of one SQL statement on the gateway's database (SQLite or PostgreSQL), `:name` parameters."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(_psycopg(self.database_url), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*MESHGATE, *args], env=self.env, cwd=ROOT, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"meshgate {' '.join(args)} failed: {result.stderr}")
        return result

    def new_account(self, prefix: str = "user") -> tuple[str, str]:
        """A fresh account and an API key for it: (name, secret).

        Written to the gateway's database from this process, as `meshgate accounts create` and
        `keys create` do (tests/cli tests those commands): two CLI processes cost ~2 s a test."""
        from meshgate.accounts.service import AccountStore
        from meshgate.store.engine import sync_engine

        name = f"{prefix}-{os.urandom(4).hex()}"
        engine = sync_engine(self.database_url)
        try:
            store = AccountStore(engine)
            _, secret = store.create_key(store.create_account(name).id)
        finally:
            engine.dispose()
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
            rows = self.query(
                "SELECT prompt_tokens, completion_tokens, outcome FROM usage_events e JOIN accounts a"
                " ON a.id = e.account_id WHERE a.name = :name ORDER BY e.created_at",
                name=account,
            )
            if len(rows) >= count or time.monotonic() > deadline:
                return [(int(p), int(c), str(o)) for p, c, o in rows]  # type: ignore[call-overload]
            time.sleep(0.02)

    def set_quota(self, account: str, key: str, model: str, bucket: str, tokens: int) -> None:
        """Override a quota and wait until the running gateway applies it."""
        self.cli("quota", "set", "--account", account, "--model", model, "--bucket", bucket, "--tokens", str(tokens))
        deadline = time.monotonic() + 10
        while self.window(key, model, bucket)["limit"] != tokens:
            assert time.monotonic() < deadline, "the gateway did not pick up the quota override"
            time.sleep(0.05)


def start_gateway(
    home: Path,
    catalog: str,
    extra_env: dict[str, str] | None = None,
    max_open_files: int | None = None,
    *,
    backend: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> LiveGateway:
    """A live `meshgate serve`; `max_open_files` sets its RLIMIT_NOFILE (soft and hard).

    `backend`: the environment of a shared PostgreSQL + Redis (`shared_backend()`), to run replicas on
    the same state; without it the gateway has a state of its own, on MESHGATE_TEST_BACKEND.
    `args`: more `serve` flags (e.g. "--processes", "2").
    """
    home.mkdir(parents=True, exist_ok=True)
    config = home / "catalog.toml"
    config.write_text(catalog)
    port = free_port()
    if backend is None and BACKEND == "postgres-redis":
        backend = shared_backend()
    outside = ("MESHGATE_DATABASE_URL", "MESHGATE_REDIS_URL", "MESHGATE_REDIS_PREFIX", "MESHGATE_PROCESSES")
    env = {
        **{k: v for k, v in os.environ.items() if k not in outside},
        "MESHGATE_HOME": str(home),
        "MESHGATE_AUTH_REFRESH_SECONDS": "0.2",
        "MESHGATE_EXTRA_FIELDS": "mock",  # the fake engine is steered by a `mock` field
        "PYTHONUNBUFFERED": "1",
        **(backend or {}),
        **(extra_env or {}),
    }
    gateway = LiveGateway(home, port, env=env)
    log = open(home / "serve.log", "ab")  # noqa: SIM115 - the process writes to it until it stops
    gateway.process = subprocess.Popen(
        [*MESHGATE, "serve", "--config", str(config), "--port", str(port), *args],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
        preexec_fn=None if max_open_files is None else lambda: _limit_open_files(max_open_files),
    )
    wait_http(f"http://127.0.0.1:{port}/health", timeout=60, process=gateway.process)  # a loaded machine
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
