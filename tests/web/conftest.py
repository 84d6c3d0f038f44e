"""Browser tests of the web app: Playwright (sync API) driving Debian's Chromium against a live `meshgate serve`.

Fixtures for every test module here (the chat's too):

- `web_gateway` (module): a live gateway on a fresh database and the fake engine
  (`catalog_for`), its login limit lowered to 3 failures per account.
- `browser` (module): headless `/usr/bin/chromium` (Playwright's own download is not
  reachable here; `make test` installs Debian's with apt).
- `new_page(...)`: a fresh browser context (own cookies) and page with `base_url` set.
- `admin_user` (module): the gateway's first account, signed up over HTTP, hence its admin.
- `logged_in` (function): `LoggedIn(page, account)`, a page logged in as a freshly signed-up
  non-admin account; `user_page` is just its page.
- `sign_up(page, email, password)`, `log_in(page, email, password)`: through the forms, as a person.
- `http_session(gw, account)`: an httpx client logged in over plain HTTP, with its CSRF token.

Sync Playwright runs its own event loop in a greenlet: these tests are plain (not async) functions.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import ROOT, FakeUpstream, LiveGateway, catalog_for, start_gateway, stop, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
expect.set_options(timeout=15_000)  # a loaded machine: argon2 and the gateway share two cores with the tests
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@dataclass(frozen=True)
class WebAccount:
    email: str
    password: str = PASSWORD


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{os.urandom(4).hex()}@example.com"


# A page where writing to the clipboard fails, as on plain http from another host (add_init_script).
NO_CLIPBOARD = (
    "Object.defineProperty(navigator, 'clipboard', "
    "{value: {writeText: () => Promise.reject(new DOMException('not allowed', 'NotAllowedError'))}})"
)


# A reasoning model for the web chat: the engine's reasoning field or inline <think> tags.
THINKER = "deepseek-ai/DeepSeek-R1"


def web_catalog(upstream_url: str) -> str:
    """catalog_for's models and a reasoning one."""
    return (
        catalog_for(upstream_url)
        + f"""
[[models]]
id = "{THINKER}"
kind = "chat"
context_length = 32000
reasoning = true
think_tags = true
daily_quota = {{ chat = 100000 }}
[[models.upstreams]]
url = "{upstream_url}"
"""
    )


def start_web_gateway(home: Path, upstream: FakeUpstream, **env: str) -> LiveGateway:
    defaults = {"MESHGATE_LOGIN_FAILURES_PER_ACCOUNT": "3"}
    return start_gateway(home, web_catalog(upstream.url), {**defaults, **env})


@pytest.fixture(scope="module")
def web_gateway(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    live = start_web_gateway(tmp_path_factory.mktemp("web"), fake_upstream)
    yield live
    assert live.process is not None
    stop(live.process)


def web_url(gw: LiveGateway) -> str:
    return f"http://127.0.0.1:{gw.port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():  # pragma: no cover - `make test` installs it
        unavailable(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Browser, web_gateway: LiveGateway) -> Iterator[Callable[..., Page]]:
    """Makes pages, each in a context of its own (own cookies); all closed after the test."""
    contexts = []

    def make(viewport: tuple[int, int] = (1280, 800)) -> Page:
        context = browser.new_context(
            base_url=web_url(web_gateway), viewport={"width": viewport[0], "height": viewport[1]}
        )
        context.set_default_timeout(20_000)  # a loaded machine: argon2 and the gateway share two cores
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_up(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(lambda url: "/signup" not in url)


def log_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")


def http_sign_up(gw: LiveGateway, email: str, password: str = PASSWORD) -> httpx.Client:
    """Signs up over plain HTTP (the forms, with their CSRF token): a logged-in client."""
    client = httpx.Client(base_url=web_url(gw), timeout=30.0)
    token = csrf_of(client.get("/signup").text)
    response = client.post("/signup", data={"email": email, "password": password, "csrf_token": token})
    assert response.status_code == 303, response.text
    return client


def http_session(gw: LiveGateway, account: WebAccount) -> httpx.Client:
    client = httpx.Client(base_url=web_url(gw), timeout=30.0)
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"email": account.email, "password": account.password, "csrf_token": token})
    assert response.status_code == 303, response.text
    return client


def csrf_of(html: str) -> str:
    match = CSRF_META.search(html)
    assert match, "no csrf-token meta in the page"
    return match.group(1)


@pytest.fixture(scope="module")
def admin_user(web_gateway: LiveGateway) -> WebAccount:
    """The first account of the module's gateway: an admin. Requested before any other sign-up."""
    account = WebAccount(new_email("admin"))
    http_sign_up(web_gateway, account.email, account.password).close()
    return account


@dataclass
class LoggedIn:
    page: Page
    account: WebAccount


@pytest.fixture
def logged_in(new_page: Callable[..., Page], admin_user: WebAccount) -> LoggedIn:
    """A page logged in as a fresh non-admin account (the admin exists first), and that account."""
    page = new_page()
    account = WebAccount(new_email())
    sign_up(page, account.email, account.password)
    return LoggedIn(page, account)


@pytest.fixture
def user_page(logged_in: LoggedIn) -> Page:
    return logged_in.page


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def screenshot(page: Page, name: str) -> None:
    """The README's pictures, retaken by `make screenshots` only: a test run leaves the tree clean."""
    if os.environ.get("MESHGATE_UPDATE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
