"""Who is logged in, and the checks every page and state-changing call makes.

- `current_user(request)`: the `WebUser` of the session cookie, or None (looked up once per request).
- `require_user(request)`: the user, or: a page redirects to /login?next=…; a path under
  /web-api/ answers 401 JSON.
- `require_csrf(request, user)`: the token from header `X-CSRF-Token` or form field
  `csrf_token` must equal the session's (before log-in: the `meshgate_csrf` cookie's);
  403 otherwise. A cross-site `Origin` is refused too.
- `require_admin(request)`: the user if an admin, else 403.
- `start_session` / `end_session`: set or clear the cookie after log-in / log-out.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from meshgate.web.state import web_state

SESSION_COOKIE = "meshgate_session"
CSRF_COOKIE = "meshgate_csrf"  # before log-in: a double-submit token for the log-in and sign-up forms
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
JSON_PREFIX = "/web-api/"


@dataclass(frozen=True, slots=True)
class WebUser:
    account_id: int
    name: str
    is_admin: bool
    csrf_token: str


class LoginRequired(HTTPException):
    """Raised by `require_user` on a page: the app's handler redirects to the log-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(303, "log in first", headers={"location": "/login?next=" + quote(next_path, safe="/")})


def wants_json(request: Request) -> bool:
    return request.url.path.startswith(JSON_PREFIX)


async def current_user(request: Request) -> WebUser | None:
    if "web_user" in request.scope.get("state", {}):
        cached: WebUser | None = request.state.web_user
        return cached
    user = None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        session = await asyncio.to_thread(web_state(request).sessions.lookup, token)
        if session is not None and not session.disabled:
            user = WebUser(session.account_id, session.name, session.is_admin, session.csrf_token)
    request.state.web_user = user
    return user


async def require_user(request: Request) -> WebUser:
    user = await current_user(request)
    if user is not None:
        return user
    if wants_json(request):
        raise HTTPException(401, "log in first")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise LoginRequired(target)


async def require_admin(request: Request) -> WebUser:
    user = await require_user(request)
    if not user.is_admin:
        raise HTTPException(403, "this page is for admins")
    return user


def anonymous_csrf(request: Request) -> str:
    """The pre-log-in CSRF token: the cookie's, or a new one `templating.render` will set."""
    token = request.cookies.get(CSRF_COOKIE) or request.scope.get("state", {}).get("new_csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


async def require_csrf(request: Request, user: WebUser | None) -> None:
    """403 unless the request carries this session's CSRF token (and is not cross-site)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "cross-site request refused")
    expected = user.csrf_token if user is not None else request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "the form has expired or did not come from this site: reload the page and try again")


def is_https(request: Request) -> bool:
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "")
    return web_state(request).settings.trust_forwarded_proto and forwarded.split(",")[0].strip() == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=is_https(request))


async def start_session(request: Request, response: Response, account_id: int) -> None:
    state = web_state(request)
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a new id at every log-in: a planted cookie is never promoted to a session
        await asyncio.to_thread(state.sessions.delete, old)
    token, _ = await asyncio.to_thread(state.sessions.create, account_id, state.settings.session_seconds)
    set_cookie(request, response, SESSION_COOKIE, token, int(state.settings.session_seconds))


async def end_session(request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await asyncio.to_thread(web_state(request).sessions.delete, token)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request))


def safe_next(target: str | None) -> str:
    """Only a path on this site: no open redirect through ?next=."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
