"""The web app's settings, from `MESHGATE_*` (the gateway's own settings do not need them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

SIGNUP_MODES = ("open", "invite", "closed")


@dataclass(frozen=True, slots=True)
class WebSettings:
    signup: str = (
        "open"  # open: anyone may sign up; invite: with a code; closed: accounts come from the CLI or an admin
    )
    session_seconds: float = 7 * 86400.0  # a session's whole life; then the browser logs in again
    trust_forwarded_proto: bool = False  # behind a TLS proxy: believe its X-Forwarded-Proto for the Secure flag
    trust_forwarded_for: bool = False  # behind a proxy: the client address is the last X-Forwarded-For entry
    login_failures_per_account: int = 5  # per window, then 429 for that account
    login_failures_per_ip: int = 20
    login_window_seconds: float = 900.0
    # An answer's length at most (0: up to what the quota and the context leave). Without it one
    # answer reserves the whole quota left, and a second tab's answer is refused meanwhile.
    chat_max_tokens: int = 4096


def load_web_settings(env: dict[str, str] | None = None) -> WebSettings:
    env = dict(os.environ) if env is None else env
    signup = env.get("MESHGATE_SIGNUP", "open").strip().lower()
    if signup not in SIGNUP_MODES:
        raise ValueError(f"MESHGATE_SIGNUP must be one of {', '.join(SIGNUP_MODES)}, not {signup!r}")
    return WebSettings(
        signup=signup,
        session_seconds=float(env.get("MESHGATE_SESSION_HOURS", "168")) * 3600.0,
        trust_forwarded_proto=env.get("MESHGATE_TRUST_FORWARDED_PROTO", "").lower() in ("1", "true", "yes"),
        trust_forwarded_for=env.get("MESHGATE_TRUST_FORWARDED_FOR", "").lower() in ("1", "true", "yes"),
        login_failures_per_account=int(env.get("MESHGATE_LOGIN_FAILURES_PER_ACCOUNT", "5")),
        login_failures_per_ip=int(env.get("MESHGATE_LOGIN_FAILURES_PER_IP", "20")),
        login_window_seconds=float(env.get("MESHGATE_LOGIN_WINDOW_SECONDS", "900")),
        chat_max_tokens=_non_negative(env, "MESHGATE_CHAT_MAX_TOKENS", 4096),
    )


def _non_negative(env: dict[str, str], name: str, default: int) -> int:
    value = int(env.get(name, str(default)))
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, not {value}")
    return value
