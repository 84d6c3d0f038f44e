"""/usage: today's usage per model and bucket against the quotas, and the last 30 days as charts."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from meshgate.accounts.keys import KEY_PREFIX
from meshgate.web.sessions import require_user
from meshgate.web.state import web_state
from meshgate.web.templating import render
from meshgate.web.usage_data import chart, history, resets_at, today_rows

WEB_CHAT = "web chat"  # usage with no API key: the chat page


async def usage_page(request: Request) -> Response:
    user = await require_user(request)
    state = web_state(request)
    gw = state.gateway
    rows = await today_rows(gw, user.account_id)
    days, events = await history(gw, user.account_id)
    keys = {k.id: k for k in await asyncio.to_thread(state.store.list_keys, user.account_id)}

    def key_label(row_key: str | None) -> str:
        if row_key is None:
            return WEB_CHAT
        key = keys.get(row_key)
        name = key.name if key is not None and key.name else "(no name)"
        return f"{name} ({KEY_PREFIX}{row_key})"

    by_bucket = chart("Tokens per day, by bucket", days, events, lambda r: r.bucket)
    by_key = chart("Tokens per day, by API key", days, events, lambda r: key_label(r.api_key_id))
    context = {
        "rows": [r for r in rows if r["limit"] > 0 or r["used"] > 0],
        "resets_at": resets_at(gw),
        "charts": [
            {"id": "by-bucket", "data": by_bucket, "json": json.dumps(by_bucket)},
            {"id": "by-key", "data": by_key, "json": json.dumps(by_key)},
        ],
    }
    return await render(request, "usage.html", context)


ROUTES: list[BaseRoute] = [Route("/usage", usage_page)]
