"""Jinja filters: times and token counts as people read them."""

from __future__ import annotations

import time


def utc(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def iso(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def ago(epoch: float | None, now: float | None = None) -> str:
    if epoch is None:
        return "never"
    seconds = max((time.time() if now is None else now) - epoch, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def until(epoch: float, now: float | None = None) -> str:
    seconds = max(epoch - (time.time() if now is None else now), 0)
    hours, rest = divmod(int(seconds), 3600)
    return f"in {hours} h {rest // 60} min" if hours else f"in {rest // 60} min"


def tokens(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


FILTERS = {"utc": utc, "iso": iso, "ago": ago, "until": until, "tokens": tokens}
