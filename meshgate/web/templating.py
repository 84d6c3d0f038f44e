"""`render(request, template, context)`: a page from `templates/`, with the user, CSRF token and nav.

Jinja2 autoescapes every value; templates put data for scripts in `data-*` attributes
(never inline `<script>`: the CSP forbids it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from meshgate.web.format import FILTERS
from meshgate.web.sessions import CSRF_COOKIE, anonymous_csrf, current_user, set_cookie
from meshgate.web.state import web_state

TEMPLATES = Path(__file__).parent / "templates"
env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(FILTERS)

NAV = (("Chat", "/chat", False), ("Keys", "/keys", False), ("Usage", "/usage", False), ("Admin", "/admin", True))


def nav_for(request: Request, is_admin: bool) -> list[dict[str, Any]]:
    path = request.url.path
    return [
        {"label": label, "href": href, "active": path == href or path.startswith(href + "/")}
        for label, href, admin_only in NAV
        if is_admin or not admin_only
    ]


async def render(
    request: Request, template_name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    user = await current_user(request)
    csrf = user.csrf_token if user is not None else anonymous_csrf(request)
    values: dict[str, Any] = {
        "request": request,
        "user": user,
        "csrf_token": csrf,
        "nav": nav_for(request, bool(user and user.is_admin)) if user else [],
        "signup_mode": web_state(request).settings.signup,
    }
    values.update(context or {})
    html = env.get_template(template_name).render(values)
    response = HTMLResponse(html, status_code=status_code)
    if user is None and request.cookies.get(CSRF_COOKIE) != csrf:
        set_cookie(request, response, CSRF_COOKIE, csrf, None)
    return response
