"""What the web app's handlers share: the gateway, the web settings, sessions, login limits.

`web_state(request)` finds it from any request the web app serves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.requests import Request

from meshgate.accounts.service import AccountStore
from meshgate.accounts.sessions import SessionStore
from meshgate.server.state import Gateway
from meshgate.web.ratelimit import FailureLimiter, MemoryFailureLimiter, RedisFailureLimiter
from meshgate.web.settings import WebSettings


@dataclass
class WebState:
    gateway: Gateway
    settings: WebSettings
    sessions: SessionStore
    login_per_account: FailureLimiter
    login_per_ip: FailureLimiter
    signup_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # "the first account is admin" stays one account

    @property
    def store(self) -> AccountStore:
        return self.gateway.store

    @classmethod
    def build(cls, gateway: Gateway, settings: WebSettings) -> WebState:
        window = settings.login_window_seconds
        per_account, per_ip = settings.login_failures_per_account, settings.login_failures_per_ip
        redis_url = gateway.settings.redis_url
        limiters: tuple[FailureLimiter, FailureLimiter]
        if redis_url:  # several processes or servers: one count for all of them
            client = Redis.from_url(redis_url, socket_timeout=2)
            gateway.on_shutdown.append(client.aclose)
            prefix = gateway.settings.redis_prefix + "login:"
            limiters = (
                RedisFailureLimiter(client, prefix + "a:", per_account, window),
                RedisFailureLimiter(client, prefix + "i:", per_ip, window),
            )
        else:
            limiters = (MemoryFailureLimiter(per_account, window), MemoryFailureLimiter(per_ip, window))
        return cls(gateway, settings, SessionStore(gateway.store.engine), *limiters)


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state
