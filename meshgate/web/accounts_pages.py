"""Sign up, log in, log out, change password.

Web sign-ups are accounts whose name is the email address (lowercased); accounts made with
the CLI log in with their name in the same field. The first account to get a password,
while none has one, becomes an admin.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from meshgate.accounts.passwords import PasswordError, check_new_password
from meshgate.accounts.service import AccountError
from meshgate.web.sessions import (
    current_user,
    end_session,
    require_csrf,
    require_user,
    safe_next,
    start_session,
)
from meshgate.web.state import web_state
from meshgate.web.templating import render

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_NAME = 128


def normalize_email(text: str) -> str:
    return text.strip().lower()


def client_ip(request: Request) -> str:
    """The address the per-IP log-in limit counts: the peer's, or what a trusted proxy says it saw."""
    if web_state(request).settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return request.client.host if request.client else "unknown"


async def _field(request: Request, name: str) -> str:
    value = (await request.form()).get(name, "")
    return value if isinstance(value, str) else ""


# -- sign up


async def signup_page(request: Request) -> Response:
    if await current_user(request) is not None:
        return RedirectResponse("/", 303)
    return await render(request, "signup.html", {"email": "", "invite": request.query_params.get("invite", "")})


async def signup(request: Request) -> Response:
    await require_csrf(request, None)
    state = web_state(request)
    mode = state.settings.signup
    email = normalize_email(await _field(request, "email"))
    password = await _field(request, "password")
    invite = (await _field(request, "invite")).strip()

    async def again(message: str, status: int = 400) -> Response:
        context = {"email": email, "invite": invite, "error": message}
        return await render(request, "signup.html", context, status)

    if mode == "closed":
        return await again("Sign-up is closed on this server: ask an admin for an account.", 403)
    if len(email) > MAX_NAME or not EMAIL.fullmatch(email):
        return await again("Enter a valid email address.")
    try:
        check_new_password(password)
    except PasswordError as error:
        return await again(str(error).capitalize() + ".")
    if mode == "invite" and not await asyncio.to_thread(state.sessions.invite_usable, invite):
        return await again("This server signs up with an invite code: that code is not valid (or already used).", 403)
    async with state.signup_lock:  # one sign-up at a time: exactly one first admin, one use per code
        first = not await asyncio.to_thread(state.store.any_password_set)
        try:
            account = await asyncio.to_thread(state.store.create_account, email, is_admin=first, password=password)
        except AccountError:
            return await again("An account with this email already exists: log in instead.", 409)
        if mode == "invite" and not await asyncio.to_thread(state.sessions.use_invite, invite, account.id):
            await asyncio.to_thread(state.store.set_disabled, account.name, True)  # pragma: no cover - raced
            return await again("That invite code was just used.", 403)
    response = RedirectResponse("/", 303)
    await start_session(request, response, account.id)
    return response


# -- log in / out


async def login_page(request: Request) -> Response:
    if await current_user(request) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), 303)
    return await render(request, "login.html", {"email": "", "next": safe_next(request.query_params.get("next"))})


async def login(request: Request) -> Response:
    await require_csrf(request, None)
    state = web_state(request)
    given = (await _field(request, "email")).strip()
    password = await _field(request, "password")
    target = safe_next(await _field(request, "next"))
    ip = client_ip(request)
    name = normalize_email(given) if "@" in given else given
    account_key = "account:" + name[:MAX_NAME]

    wait = max(await state.login_per_account.retry_after(account_key), await state.login_per_ip.retry_after("ip:" + ip))
    if wait > 0:
        minutes = max(int(wait // 60) + 1, 1)
        context = {"email": given, "next": target, "error": f"Too many failed log-ins: try again in {minutes} min."}
        response = await render(request, "login.html", context, 429)
        response.headers["retry-after"] = str(int(wait) + 1)
        return response
    account = await asyncio.to_thread(state.store.check_password, name, password) if name else None
    if account is None:
        await state.login_per_account.fail(account_key)
        await state.login_per_ip.fail("ip:" + ip)
        context = {"email": given, "next": target, "error": "Wrong email or password."}
        return await render(request, "login.html", context, 401)
    if account.disabled:
        context = {"email": given, "next": target, "error": "This account is disabled: ask an admin."}
        return await render(request, "login.html", context, 403)
    await state.login_per_account.clear(account_key)
    response = RedirectResponse(target, 303)
    await start_session(request, response, account.id)
    return response


async def logout(request: Request) -> Response:
    user = await current_user(request)
    await require_csrf(request, user)
    response = RedirectResponse("/login", 303)
    await end_session(request, response)
    return response


# -- change password


async def password_page(request: Request) -> Response:
    await require_user(request)
    return await render(request, "password.html", {})


async def change_password(request: Request) -> Response:
    user = await require_user(request)
    await require_csrf(request, user)
    state = web_state(request)
    current = await _field(request, "current_password")
    new = await _field(request, "new_password")
    if await state.login_per_account.retry_after("account:" + user.name) > 0:
        return await render(request, "password.html", {"error": "Too many wrong passwords: try again later."}, 429)
    if await asyncio.to_thread(state.store.check_password, user.name, current) is None:
        await state.login_per_account.fail("account:" + user.name)
        return await render(request, "password.html", {"error": "The current password is wrong."}, 400)
    try:
        await asyncio.to_thread(state.store.set_password, user.account_id, new)
    except PasswordError as error:
        return await render(request, "password.html", {"error": str(error).capitalize() + "."}, 400)
    # Every other browser logged in as this account is logged out; this one stays.
    await asyncio.to_thread(
        state.sessions.delete_for_account, user.account_id, keep=request.cookies.get("meshgate_session")
    )
    return await render(request, "password.html", {"message": "Password changed. Other sessions were logged out."})


ROUTES: list[BaseRoute] = [
    Route("/signup", signup_page, methods=["GET"]),
    Route("/signup", signup, methods=["POST"]),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/account/password", password_page, methods=["GET"]),
    Route("/account/password", change_password, methods=["POST"]),
]
