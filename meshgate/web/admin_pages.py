"""/admin (admins only; 403 for everyone else): accounts, quota overrides, invites, models, platform usage.

Changes take effect at once in this process (the key cache and the quota policy are
updated here) and in other gateway processes at their next refresh (about a second).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from meshgate.catalog.spec import BUCKETS
from meshgate.server.state import Gateway
from meshgate.web.sessions import WebUser, require_admin, require_csrf
from meshgate.web.state import WebState, web_state
from meshgate.web.templating import render
from meshgate.web.usage_data import chart, history

ACTIONS = ("disable", "enable", "make-admin", "remove-admin")


def upstream_rows(gw: Gateway) -> list[dict[str, Any]]:
    """Each model with its replicas and their health as the router sees it now."""
    now = time.time()
    models = []
    for route in gw.routes.values():
        replicas = []
        for replica in route.replicas.replicas:
            down_for = max(replica.down_until - now, 0.0)
            if not replica.healthy:
                health = "unhealthy"
            elif down_for > 0:
                health = f"down (retry in {down_for:.0f} s)"
            else:
                health = "up"
            replicas.append(
                {
                    "url": replica.spec.url,
                    "model": replica.spec.model or route.spec.id,
                    "source": getattr(replica, "source", "catalog"),
                    "health": health,
                    "ok": health == "up",
                    "in_flight": replica.in_flight,
                    "failures": replica.failures,
                }
            )
        models.append(
            {
                "id": route.spec.id,
                "kind": route.spec.kind,
                "context_length": route.spec.context_length,
                "quota": {b: route.spec.daily_quota.get(b) for b in BUCKETS},
                "replicas": replicas,
            }
        )
    return models


async def _page(request: Request, user: WebUser, status: int = 200, **context: Any) -> Response:
    state = web_state(request)
    gw = state.gateway
    accounts = await asyncio.to_thread(state.store.list_accounts)
    overrides = await asyncio.to_thread(state.store.quota_overrides)
    per_account: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (account_id, model, bucket), tokens in sorted(overrides.items()):
        per_account[account_id].append({"model": model, "bucket": bucket, "tokens": tokens})
    invites = await asyncio.to_thread(state.sessions.list_invites)
    days, events = await history(gw, None)
    by_bucket = chart("Platform tokens per day, by bucket", days, events, lambda r: r.bucket)
    by_model = chart("Platform tokens per day, by model", days, events, lambda r: r.model)
    values = {
        "accounts": accounts,
        "overrides": per_account,
        "models": upstream_rows(gw),
        "model_ids": sorted(gw.routes),
        "buckets": BUCKETS,
        "invites": invites,
        "names": {a.id: a.name for a in accounts},
        "charts": [
            {"id": "platform-by-bucket", "data": by_bucket, "json": json.dumps(by_bucket)},
            {"id": "platform-by-model", "data": by_model, "json": json.dumps(by_model)},
        ],
        **context,
    }
    return await render(request, "admin.html", values, status)


async def admin_page(request: Request) -> Response:
    user = await require_admin(request)
    return await _page(request, user)


async def _account_of(state: WebState, request: Request) -> Any:
    try:
        account_id = int(request.path_params["account_id"])
    except ValueError:
        raise HTTPException(404, "no such account") from None
    account = await asyncio.to_thread(state.store.get_account, account_id)
    if account is None:
        raise HTTPException(404, "no such account")
    return account


async def account_action(request: Request) -> Response:
    user = await require_admin(request)
    await require_csrf(request, user)
    state = web_state(request)
    account = await _account_of(state, request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise HTTPException(404, "no such action")
    if account.id == user.account_id and action in ("disable", "remove-admin"):
        return await _page(request, user, 400, error="You cannot disable yourself or remove your own admin rights.")
    if action in ("disable", "enable"):
        await asyncio.to_thread(state.store.set_disabled, account.name, action == "disable")
        if action == "disable":  # its keys are refused from now on in this process; others at their refresh
            keys = await asyncio.to_thread(state.store.list_keys, account.id)
            state.gateway.auth.forget([k.id for k in keys])
    else:
        await asyncio.to_thread(state.store.set_admin, account.id, action == "make-admin")
    return RedirectResponse("/admin#accounts", 303)


async def set_quota(request: Request) -> Response:
    user = await require_admin(request)
    await require_csrf(request, user)
    state = web_state(request)
    account = await _account_of(state, request)
    form = await request.form()
    model, bucket = str(form.get("model", "")), str(form.get("bucket", ""))
    tokens_text = str(form.get("tokens", "")).strip().replace(",", "").replace("_", "")
    if model not in state.gateway.routes or bucket not in BUCKETS:
        return await _page(request, user, 400, error="Choose a model and a bucket of the catalog.")
    if tokens_text in ("", "default"):
        await asyncio.to_thread(state.store.remove_quota, account.id, model, bucket)
    elif tokens_text.isdigit():
        await asyncio.to_thread(state.store.set_quota, account.id, model, bucket, int(tokens_text))
    else:
        return await _page(request, user, 400, error="The quota is a whole number of tokens per day (0 or more).")
    state.gateway.policy.replace_overrides(await asyncio.to_thread(state.store.quota_overrides))
    return RedirectResponse("/admin#accounts", 303)


async def create_invite(request: Request) -> Response:
    user = await require_admin(request)
    await require_csrf(request, user)
    code = await asyncio.to_thread(web_state(request).sessions.create_invite, user.account_id)
    link = f"{request.base_url}signup?invite={code}"
    return await _page(request, user, new_invite={"code": code, "link": link})


ROUTES: list[BaseRoute] = [
    Route("/admin", admin_page, methods=["GET"]),
    Route("/admin/accounts/{account_id}/quota", set_quota, methods=["POST"]),
    Route("/admin/accounts/{account_id}/{action}", account_action, methods=["POST"]),
    Route("/admin/invites", create_invite, methods=["POST"]),
]
