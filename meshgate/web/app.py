"""The web app as one ASGI app: `create_web_app(gateway)`; `server.App` sends it every non-API path.

Interface for page modules (chat.py builds on it):

- `create_web_app(gateway) -> ASGIApp`: Starlette; routes of `accounts_pages`, `keys_pages`,
  `usage_pages`, `admin_pages` and `chat.ROUTES` (a list of Starlette routes), `/static/…`
  from `meshgate/web/static/`, security headers on every answer (`security.py`: the CSP
  allows no inline script or style). `web_state(request)` (`state.py`) gives the `Gateway`
  (`.gateway`), the `AccountStore` (`.store`), the sessions and the web settings.
- `sessions.py`: `WebUser(account_id, name, is_admin, csrf_token)`; `await current_user(request)`
  (or None); `await require_user(request)` (a page redirects to /login, a path under /web-api/
  answers 401 JSON); `await require_csrf(request, user)` (header `X-CSRF-Token` or form field
  `csrf_token`; 403); `await require_admin(request)` (403).
- `templating.py`: `await render(request, "x.html", {...})` adds `user`, `csrf_token`, `nav`.
  `templates/base.html` has blocks `title`, `content`, `scripts` (only `<script src=…>`), and
  `<meta name="csrf-token">` for scripts to send as `X-CSRF-Token`.
- Errors: an `HTTPException` becomes a page, or `{"error": {"message": …}}` under /web-api/.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from meshgate.server.state import Gateway
from meshgate.web import accounts_pages, admin_pages, chat, keys_pages, usage_pages
from meshgate.web.security import SecurityHeaders
from meshgate.web.sessions import current_user, wants_json
from meshgate.web.settings import WebSettings, load_web_settings
from meshgate.web.state import WebState
from meshgate.web.templating import render

STATIC = Path(__file__).parent / "static"


async def home(request: Request) -> Response:
    user = await current_user(request)
    return RedirectResponse("/chat" if user is not None else "/login", status_code=303)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if 300 <= exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=headers)
    if wants_json(request):
        return JSONResponse({"error": {"message": exc.detail, "status": exc.status_code}}, exc.status_code, headers)
    response = await render(request, "error.html", {"status": exc.status_code, "message": exc.detail}, exc.status_code)
    response.headers.update(headers)
    return response


def create_web_app(gateway: Gateway, settings: WebSettings | None = None) -> ASGIApp:
    routes: list[BaseRoute] = [
        Route("/", home),
        *accounts_pages.ROUTES,
        *keys_pages.ROUTES,
        *usage_pages.ROUTES,
        *admin_pages.ROUTES,
        *chat.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.web = WebState.build(gateway, settings or load_web_settings())
    return SecurityHeaders(app)
