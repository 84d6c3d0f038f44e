"""/keys: create, list and revoke the account's own API keys.

A new key's secret is in the answer to the POST that created it and nowhere else (the
database keeps its hash; the page is `no-store`). Another account's key id answers 404,
exactly like an unknown one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from meshgate.accounts.keys import KEY_PREFIX
from meshgate.accounts.service import AccountError, ApiKey
from meshgate.quota.cycles import CYCLES, PER, current_period
from meshgate.quota.ledger import BudgetKey
from meshgate.web.sessions import WebUser, require_csrf, require_user
from meshgate.web.state import WebState, web_state
from meshgate.web.templating import render

MAX_NAME = 128


async def _key_row(state: WebState, key: ApiKey, now: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": key.id,
        "name": key.name or "(no name)",
        "prefix": f"{KEY_PREFIX}{key.id}-…",
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked": key.revoked_at is not None,
        "expired": key.expires_at is not None and key.expires_at <= now,
        "expires_at": key.expires_at,
        "models": list(key.models) if key.models is not None else None,
        "budget": None,
    }
    if key.budget_tokens is not None and key.budget_cycle is not None:
        period, resets_at = current_period(key.budget_cycle, now)
        window = await state.gateway.ledger.budget_window(BudgetKey(key.id, period))
        row["budget"] = {
            "limit": key.budget_tokens,
            "per": PER[key.budget_cycle],
            "used": window.used + window.reserved,
            "resets_at": resets_at,
        }
    return row


async def _page(request: Request, user: WebUser, status: int = 200, **context: Any) -> Response:
    state = web_state(request)
    keys = await asyncio.to_thread(state.store.list_keys, user.account_id)
    now = time.time()
    rows = [await _key_row(state, key, now) for key in reversed(keys)]  # newest first
    values = {
        "keys": [r for r in rows if not r["revoked"]],
        "revoked": [r for r in rows if r["revoked"]],
        "models": sorted(state.gateway.routes),
        "cycles": CYCLES,
        "form": {},
        **context,
    }
    return await render(request, "keys.html", values, status)


async def keys_page(request: Request) -> Response:
    user = await require_user(request)
    return await _page(request, user)


async def create_key(request: Request) -> Response:
    user = await require_user(request)
    await require_csrf(request, user)
    state = web_state(request)
    form = await request.form()
    name = str(form.get("name", "")).strip()
    models = [str(m) for m in form.getlist("models") if str(m) in state.gateway.routes]
    budget_text = str(form.get("budget_tokens", "")).strip().replace(",", "").replace("_", "")
    cycle = str(form.get("budget_cycle", "")).strip() or None
    keep = {"name": name, "models": models, "budget_tokens": budget_text, "budget_cycle": cycle or ""}

    async def again(message: str) -> Response:
        return await _page(request, user, 400, error=message, form=keep)

    if not name:
        return await again("Give the key a name, so you know later where it is used.")
    if len(name) > MAX_NAME:
        return await again(f"The name is longer than {MAX_NAME} characters.")
    budget: int | None = None
    if budget_text:
        if not budget_text.isdigit() or int(budget_text) < 1:
            return await again("The budget is a whole number of tokens, at least 1.")
        budget = int(budget_text)
        cycle = cycle or "daily"
    else:
        cycle = None
    try:
        key, secret = await asyncio.to_thread(
            state.store.create_key,
            user.account_id,
            name,
            models=models or None,
            budget_tokens=budget,
            budget_cycle=cycle,
        )
    except AccountError as error:
        return await again(str(error))
    return await _page(request, user, 200, new_key={"name": key.name, "secret": secret})


async def revoke_key(request: Request) -> Response:
    user = await require_user(request)
    await require_csrf(request, user)
    state = web_state(request)
    key_id = request.path_params["key_id"]
    key = await asyncio.to_thread(state.store.get_key, key_id)
    if key is None or key.account_id != user.account_id:
        raise HTTPException(404, "no such key")
    if key.revoked_at is None:
        await asyncio.to_thread(state.store.revoke_key, key_id)
        state.gateway.auth.forget([key_id])  # this process refuses it at once, not at its next refresh
    return RedirectResponse("/keys", 303)


ROUTES: list[BaseRoute] = [
    Route("/keys", keys_page, methods=["GET"]),
    Route("/keys", create_key, methods=["POST"]),
    Route("/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
]
