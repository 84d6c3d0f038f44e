"""What the chat page's model picker shows: the catalog's chat models and the web chat quota left on each.

The same policy and ledger windows admission uses (bucket "chat"), so what the picker says is
what a request will meet: a model with no chat quota (0) or none at all (not offered in the
web chat) is unavailable, with the reason; a used-up quota names its reset time.
"""

from __future__ import annotations

from typing import Any

from meshgate.catalog.spec import ModelSpec
from meshgate.server.admission import today
from meshgate.server.state import Gateway
from meshgate.web.format import iso
from meshgate.web.usage_data import resets_at as reset_epoch

BUCKET = "chat"


def chat_models(gw: Gateway) -> list[ModelSpec]:
    return [route.spec for route in gw.routes.values() if route.spec.kind == "chat"]


def resets_at(gw: Gateway) -> str:
    """When today's chat quotas reset, as the page shows it (ISO 8601, UTC)."""
    return iso(reset_epoch(gw))


async def chat_quota(gw: Gateway, account_id: int, spec: ModelSpec) -> dict[str, Any]:
    """One model's entry in the picker: available or why not, and today's chat quota on it."""
    day = today()
    limit = gw.admitter.policy.limit(account_id, spec, BUCKET)
    info: dict[str, Any] = {
        "id": spec.id,
        "context_length": spec.context_length,
        "limit": limit,
        "used": 0,
        "remaining": 0,
        "resets_at": iso(gw.admitter.reset_epoch(day)),
        "available": False,
        "exhausted": False,
        "reason": None,
    }
    if limit is None:
        info["reason"] = "not offered in the web chat"
        return info
    if limit == 0:
        info["reason"] = "no web chat quota for this model"
        return info
    row = await gw.quota_row(account_id, spec, BUCKET, day) or {"used": 0, "remaining": 0}
    remaining = row["remaining"]
    info.update(used=row["used"], remaining=remaining, available=True)
    if remaining == 0:
        info["exhausted"] = True
        info["reason"] = f"today's chat quota is used up; it resets at {info['resets_at']}"
    return info


async def picker(gw: Gateway, account_id: int) -> list[dict[str, Any]]:
    return [await chat_quota(gw, account_id, spec) for spec in chat_models(gw)]
