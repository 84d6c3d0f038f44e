"""The web app's pieces in one process (Starlette's TestClient): sign-up modes, the Secure flag,
session expiry, the login limiter's bounds, the password hash."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from meshgate.accounts.sessions import SessionStore
from meshgate.config import load_settings
from meshgate.server.app import App
from meshgate.server.state import Gateway
from meshgate.store.engine import MIGRATIONS, migrate
from meshgate.web.app import create_web_app
from meshgate.web.ratelimit import MemoryFailureLimiter
from meshgate.web.settings import WebSettings, load_web_settings

PASSWORD = "a fine password"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    settings = dataclasses.replace(load_settings(), home=tmp_path, database_url=f"sqlite:///{tmp_path}/meshgate.db")
    migrate(settings.database_url)
    yield Gateway(settings, [])


def client_for(gateway: Gateway, base_url: str = "http://testserver", **web: object) -> TestClient:
    app = App(gateway, fallback=create_web_app(gateway, WebSettings(**web)))  # type: ignore[arg-type]
    return TestClient(app, base_url=base_url, follow_redirects=False)


def token(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def sign_up(client: TestClient, email: str, invite: str = "") -> object:
    form = {"email": email, "password": PASSWORD, "invite": invite, "csrf_token": token(client, "/signup")}
    return client.post("/signup", data=form)


def test_invite_only_sign_up(gateway: Gateway) -> None:
    client = client_for(gateway, signup="invite")
    assert 'name="invite"' in client.get("/signup").text
    refused = sign_up(client, "a@example.com", "inv-made-up")
    assert refused.status_code == 403 and "invite code" in refused.text  # type: ignore[attr-defined]
    code = SessionStore(gateway.store.engine).create_invite(None)
    assert sign_up(client, "a@example.com", code).status_code == 303  # type: ignore[attr-defined]
    again = client_for(gateway, signup="invite")
    reused = sign_up(again, "b@example.com", code)
    assert reused.status_code == 403  # type: ignore[attr-defined]
    assert [a.name for a in gateway.store.list_accounts()] == ["a@example.com"]
    expired = SessionStore(gateway.store.engine).create_invite(None, lifetime=-1)
    assert sign_up(again, "b@example.com", expired).status_code == 403  # type: ignore[attr-defined]


def test_closed_sign_up(gateway: Gateway) -> None:
    client = client_for(gateway, signup="closed")
    page = client.get("/signup")
    assert "Sign-up is closed" in page.text and 'action="/signup"' not in page.text
    assert sign_up(client, "a@example.com").status_code == 403  # type: ignore[attr-defined]
    assert 'href="/signup"' not in client.get("/login").text
    assert gateway.store.list_accounts() == []


def test_secure_cookie_over_https_and_trusted_proxies(gateway: Gateway) -> None:
    https = client_for(gateway, base_url="https://testserver")
    response = sign_up(https, "a@example.com")
    assert "secure" in response.headers["set-cookie"].lower()  # type: ignore[attr-defined]

    def login_cookie(client: TestClient, headers: dict[str, str]) -> str:
        form = {"email": "a@example.com", "password": PASSWORD, "csrf_token": token(client, "/login")}
        answer = client.post("/login", data=form, headers=headers)
        assert answer.status_code == 303, answer.text
        return answer.headers["set-cookie"].lower()

    proxied = {"x-forwarded-proto": "https"}
    assert "secure" not in login_cookie(client_for(gateway), proxied)  # an untrusted header changes nothing
    assert "secure" in login_cookie(client_for(gateway, trust_forwarded_proto=True), proxied)


def test_sessions_expire(gateway: Gateway) -> None:
    account = gateway.store.create_account("a@example.com", password=PASSWORD)
    sessions = SessionStore(gateway.store.engine)
    live, _ = sessions.create(account.id, 60)
    dead, _ = sessions.create(account.id, -1)
    assert sessions.lookup(live) is not None and sessions.lookup(dead) is None
    assert sessions.lookup("") is None and sessions.lookup("x" * 1000) is None
    client = client_for(gateway, session_seconds=-1.0)
    form = {"email": "a@example.com", "password": PASSWORD, "csrf_token": token(client, "/login")}
    assert client.post("/login", data=form).status_code == 303
    assert client.get("/keys").headers["location"] == "/login?next=/keys"  # the session was already over


def test_passwords_are_argon2id(gateway: Gateway) -> None:
    account = gateway.store.create_account("cli-account")
    assert not gateway.store.has_password(account.id)
    gateway.store.set_password(account.id, PASSWORD)
    with gateway.store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT password_hash FROM accounts").scalar()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert gateway.store.check_password("cli-account", PASSWORD) is not None
    assert gateway.store.check_password("cli-account", PASSWORD + "x") is None
    assert gateway.store.check_password("nobody", PASSWORD) is None


async def test_failure_limiter_window_and_memory_bound() -> None:
    limiter = MemoryFailureLimiter(limit=3, window=60.0, max_keys=100)
    for i in range(3):
        assert limiter.wait_at("a", float(i)) == 0
        limiter.fail_at("a", float(i))
    assert limiter.wait_at("a", 10.0) == pytest.approx(50.0)
    assert limiter.wait_at("a", 60.5) == 0  # the first failure aged out
    for i in range(10_000):
        limiter.fail_at(f"ip-{i}", 100.0)
    assert len(limiter._failures) == 100  # the least recently failed are dropped
    await limiter.clear("ip-9999")
    assert limiter.wait_at("ip-9999", 100.0) == 0


def test_web_settings_from_the_environment() -> None:
    settings = load_web_settings({"MESHGATE_SIGNUP": "Invite", "MESHGATE_SESSION_HOURS": "2"})
    assert settings.signup == "invite" and settings.session_seconds == 7200
    with pytest.raises(ValueError, match="MESHGATE_SIGNUP"):
        load_web_settings({"MESHGATE_SIGNUP": "maybe"})
    assert time.time() > 0


def test_migration_0005_up_and_down(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "m.sqlite"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0005")
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"web_sessions", "web_invites"} <= tables
    command.downgrade(config, "0004")
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not {"web_sessions", "web_invites"} & tables


def test_per_address_limit_behind_a_trusted_proxy(gateway: Gateway) -> None:
    gateway.store.create_account("a@example.com", password=PASSWORD)

    def attempt(client: TestClient, address: str) -> int:
        form = {"email": "a@example.com", "password": "wrong password", "csrf_token": token(client, "/login")}
        return client.post("/login", data=form, headers={"x-forwarded-for": f"198.51.100.9, {address}"}).status_code

    proxied = client_for(gateway, trust_forwarded_for=True, login_failures_per_ip=2, login_failures_per_account=100)
    assert [attempt(proxied, "203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert attempt(proxied, "203.0.113.2") == 401  # another client behind the same proxy is not locked out
    direct = client_for(gateway, login_failures_per_ip=2, login_failures_per_account=100)  # the header is ignored
    assert [attempt(direct, f"203.0.113.{i}") for i in range(3, 6)] == [401, 401, 429]
