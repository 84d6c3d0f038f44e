"""The web app's security properties, over plain HTTP against the live gateway (no browser needed)."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser

import httpx
import openai
import pytest

from tests.conftest import LiveGateway
from tests.web.conftest import WebAccount, csrf_of, http_session, http_sign_up, new_email, web_url

PAGES = ("/keys", "/usage", "/account/password", "/chat", "/no-such-page")  # as a logged-in user
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class InlineCode(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts, handlers, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(names["src"] or "")
        if tag == "style":
            self.problems.append("<style> element")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name == "style":
                self.problems.append(f"{tag} style=")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.problems.append(f"{tag} {name}=javascript:")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script body")


@pytest.fixture(scope="module")
def alice(web_gateway: LiveGateway, admin_user: WebAccount) -> tuple[WebAccount, httpx.Client]:
    account = WebAccount(new_email("alice"))
    return account, http_sign_up(web_gateway, account.email, account.password)


@pytest.fixture(scope="module")
def admin_client(web_gateway: LiveGateway, admin_user: WebAccount) -> httpx.Client:
    return http_session(web_gateway, admin_user)


def create_key(client: httpx.Client, name: str) -> tuple[str, str]:
    token = csrf_of(client.get("/keys").text)
    page = client.post("/keys", data={"name": name, "csrf_token": token})
    assert page.status_code == 200, page.text
    secret = re.search(r'data-testid="new-secret">([^<]+)<', page.text)
    assert secret
    return secret.group(1).split("-")[1], secret.group(1)


def test_state_changing_requests_need_the_csrf_token(alice: tuple[WebAccount, httpx.Client]) -> None:
    _, client = alice
    token = csrf_of(client.get("/keys").text)
    key_id, _ = create_key(client, "csrf")
    attempts = [
        ("/keys", {"name": "no token"}),
        ("/keys", {"name": "wrong token", "csrf_token": "x" * len(token)}),
        (f"/keys/{key_id}/revoke", {}),
        ("/account/password", {"current_password": "x", "new_password": "yyyyyyyy"}),
        ("/logout", {}),
    ]
    for path, form in attempts:
        response = client.post(path, data=form)
        assert response.status_code == 403, (path, response.status_code)
        assert "did not come from this site" in response.text
    # The right token from another site is refused too (Origin), and a header token works like the field.
    cross = client.post("/keys", data={"name": "x", "csrf_token": token}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    ok = client.post(f"/keys/{key_id}/revoke", headers={"x-csrf-token": token})
    assert ok.status_code == 303
    # Log-in and sign-up forms carry a pre-session token (double submit): without it, 403.
    anonymous = httpx.Client(base_url=str(client.base_url))
    assert anonymous.post("/login", data={"email": "a@b.co", "password": "whatever1"}).status_code == 403
    assert anonymous.post("/signup", data={"email": "new@b.co", "password": "whatever1"}).status_code == 403


def test_another_accounts_key_is_not_found(web_gateway: LiveGateway, alice: tuple[WebAccount, httpx.Client]) -> None:
    _, client = alice
    bob = http_sign_up(web_gateway, new_email("bob"))
    bob_key, bob_secret = create_key(bob, "bob's")
    token = csrf_of(client.get("/keys").text)
    stolen = client.post(f"/keys/{bob_key}/revoke", data={"csrf_token": token})
    unknown = client.post("/keys/nosuchkey0/revoke", data={"csrf_token": token})
    assert stolen.status_code == unknown.status_code == 404
    assert bob_key not in client.get("/keys").text
    web_gateway.client(bob_secret).models.list()  # still works


def test_session_cookie_flags_and_storage(web_gateway: LiveGateway, admin_user: WebAccount) -> None:
    client = httpx.Client(base_url=web_url(web_gateway))
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"email": admin_user.email, "password": admin_user.password, "csrf_token": token},
        headers={"x-forwarded-proto": "https"},  # not trusted unless MESHGATE_TRUST_FORWARDED_PROTO is set
    )
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("meshgate_session="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags  # plain http on loopback
    session_id = cookie.split(";")[0].split("=", 1)[1]
    stored = [row[0] for row in web_gateway.query("SELECT id_hash FROM web_sessions")]
    assert session_id not in stored and hashlib.sha256(session_id.encode()).hexdigest() in stored
    # Log-out ends the session on the server, not only in the browser.
    token = csrf_of(client.get("/keys").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    replay = httpx.get(web_url(web_gateway) + "/keys", cookies={"meshgate_session": session_id})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/login")


def test_headers_and_no_inline_script_on_any_page(
    web_gateway: LiveGateway, alice: tuple[WebAccount, httpx.Client], admin_client: httpx.Client
) -> None:
    _, client = alice
    anonymous = httpx.Client(base_url=web_url(web_gateway))
    pages = [(anonymous, p) for p in ("/login", "/signup", "/no-such-page")]
    pages += [(client, p) for p in PAGES] + [(admin_client, "/admin"), (client, "/admin")]
    scripts: set[str] = set()
    for who, path in pages:
        response = who.get(path)
        assert response.status_code in (200, 403, 404), (path, response.status_code)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        parser = InlineCode()
        parser.feed(response.text)
        assert parser.problems == [], (path, parser.problems)
        assert "http://" not in re.sub(r"(base_url=|<code>)[^<]*", "", response.text).replace(web_url(web_gateway), "")
        scripts.update(parser.scripts)
    assert scripts >= {"/static/keys.js", "/static/charts.js", "/static/vendor/uplot/uPlot.iife.min.js"}
    for src in scripts:  # every script the pages load is served by the gateway itself (no CDN)
        asset = anonymous.get(src)
        assert asset.status_code == 200 and "javascript" in asset.headers["content-type"], src
        assert asset.headers["x-content-type-options"] == "nosniff"


def test_a_keys_secret_appears_only_once(
    web_gateway: LiveGateway, alice: tuple[WebAccount, httpx.Client], admin_client: httpx.Client
) -> None:
    _, client = alice
    key_id, secret = create_key(client, "once")
    web_gateway.client(secret).chat.completions.create(
        model="meta-llama/Llama-3.3-70B-Instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    for who, path in [(client, p) for p in PAGES] + [(admin_client, "/admin")]:
        text = who.get(path).text
        assert secret not in text and secret.split("-")[-1] not in text, path
    stored = web_gateway.query("SELECT secret_hash FROM api_keys WHERE id = :id", id=key_id)
    assert stored == [(hashlib.sha256(secret.encode()).hexdigest(),)]


def test_non_admins_get_403_on_every_admin_path(
    web_gateway: LiveGateway, alice: tuple[WebAccount, httpx.Client]
) -> None:
    _, client = alice
    token = csrf_of(client.get("/keys").text)
    assert client.get("/admin").status_code == 403
    for path in (
        "/admin/invites",
        "/admin/accounts/1/make-admin",
        "/admin/accounts/1/disable",
        "/admin/accounts/1/quota",
    ):
        assert client.post(path, data={"csrf_token": token}).status_code == 403, path
    assert web_gateway.query("SELECT disabled FROM accounts WHERE id = 1") == [(0,)] or web_gateway.query(
        "SELECT disabled FROM accounts WHERE id = 1"
    ) == [(False,)]


def test_api_paths_never_reach_the_web_app(web_gateway: LiveGateway) -> None:
    for path in ("/api/v1/nope", "/v1/nope", "/api", "/v1", "/api/v1/keys"):
        response = httpx.get(web_url(web_gateway) + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path
        assert "content-security-policy" not in response.headers
    wrong_method = httpx.get(web_url(web_gateway) + "/api/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(web_url(web_gateway) + "/health").text == "ok"
    with pytest.raises(openai.AuthenticationError):
        web_gateway.client("mg-not-a-key").models.list()


def test_log_in_redirects_only_within_the_site(web_gateway: LiveGateway, admin_user: WebAccount) -> None:
    for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"), ("/usage", "/usage")):
        client = httpx.Client(base_url=web_url(web_gateway))
        token = csrf_of(client.get("/login", params={"next": target}).text)
        form = {"email": admin_user.email, "password": admin_user.password, "csrf_token": token, "next": target}
        assert client.post("/login", data=form).headers["location"] == expected
