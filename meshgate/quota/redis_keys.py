"""Where the shared ledger keeps things in Redis: one naming scheme, used by Python and by the Lua scripts.

Every name starts with the ledger's prefix (default "meshgate:"), so one Redis can hold several
deployments (or tests) side by side:

    <p>w:<day>:<account>:<bucket>:<model>   hash  used, reserved, v    an account's window (day = YYYY-MM-DD)
    <p>b:<period>:<api key id>              hash  used, reserved, v    a key budget's period (cycles.current_period)
    <p>r:<request id>                       hash  a k m u d bk bp p c  an open reservation: its history fields, progress
    <p>s:<request id>                       str   "1" | "r:<tokens>"   settled (or recovered) marker, for idempotency
    <p>deadlines                            zset  member -> ms         every open reservation, scored by its deadline
    <p>outbox                               stream                     charges not yet written to the SQL history

`used` is settled tokens, `reserved` the sum of the amounts of the window's open reservations,
`v` a version bumped by every change (so a process keeps only the newest reply it has seen).
A deadlines member is "<request id>\\x1f<amount>\\x1f<window key>\\x1f<budget key or ''>": everything
needed to release it, so a reservation whose process died is released even if its record is gone.
The day and the period have a fixed length and the model comes last, so no two windows share a name
whatever their model is called.
"""

from __future__ import annotations

from meshgate.quota.ledger import BudgetKey, WindowKey

SEP = "\x1f"  # between the fields of a deadlines member: never part of an id, a model name or a key name


def window_key(prefix: str, key: WindowKey) -> str:
    return f"{prefix}w:{key.day}:{key.account_id}:{key.bucket}:{key.model}"


def budget_key(prefix: str, key: BudgetKey) -> str:
    return f"{prefix}b:{key.period}:{key.api_key_id}"


def record_key(prefix: str, request_id: str) -> str:
    return f"{prefix}r:{request_id}"


def marker_key(prefix: str, request_id: str) -> str:
    return f"{prefix}s:{request_id}"


def deadlines_key(prefix: str) -> str:
    return f"{prefix}deadlines"


def outbox_key(prefix: str) -> str:
    return f"{prefix}outbox"


def member(request_id: str, amount: int, window: str, budget: str | None) -> str:
    """The deadlines member of a reservation; the reserve script builds the same string."""
    return f"{request_id}{SEP}{amount}{SEP}{window}{SEP}{budget or ''}"
