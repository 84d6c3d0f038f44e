"""Worker token authentication for the registration endpoints (`server/workers_api.py`).

Worker tokens (`mgw-…`) and API keys (`mg-…`) are different credentials: an API key presented
here is refused with a message that says so, as a worker token is on the OpenAI endpoints
(`server/auth.py`). Tokens are looked up once and re-read at most every `ttl` seconds, so a
revocation stops heartbeats within about a second; unknown ids are remembered for a while,
and both caches are bounded, so a flood of made-up tokens costs neither memory nor queries.
A valid token is held to a request rate (`WorkerRateLimit`), so a looping or stolen one can
hammer neither Redis nor the database.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import Any

from meshgate.accounts.keys import key_id_of, matches
from meshgate.accounts.worker_tokens import TOKEN_LENGTH, WorkerToken, WorkerTokenStore, token_id_of
from meshgate.protocol.errors import ApiError
from meshgate.server.auth import RecentlyUnknown, bearer_secret
from meshgate.server.http import Scope

_MAX_AUTHORIZATION = len(b"Bearer ") + TOKEN_LENGTH + 8
_MAX_TOKENS = 10_000
NEEDS_WORKER_TOKEN = (
    "This endpoint takes a worker token: 'Authorization: Bearer mgw-…' "
    "(create one with `meshgate workers token create`)."
)


def invalid_worker_token(message: str = "Incorrect worker token provided.") -> ApiError:
    return ApiError(401, message, code="invalid_worker_token")


class WorkerRateLimit:
    """A token bucket per worker token, in this process: `rate` requests a second, `burst` at once.

    The gateway sizes it at twice what a token's workers need at most (every registered worker
    heartbeating, all of them registering again at once after a restart), so a healthy fleet
    never meets it.
    """

    def __init__(self, rate: float, burst: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # token id -> (tokens, at)

    @classmethod
    def for_fleet(cls, workers_per_token: int, heartbeat_seconds: float) -> WorkerRateLimit:
        return cls(rate=2 * workers_per_token / heartbeat_seconds, burst=2 * workers_per_token)

    def check(self, token_id: str) -> None:
        """Take one request from the token's bucket, or 429 with when to come back."""
        now = self._clock()
        buckets = self._buckets
        tokens, at = buckets.pop(token_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            buckets[token_id] = (tokens, now)
            wait = max(1, math.ceil((1 - tokens) / self.rate))
            raise ApiError(
                429,
                f"this worker token sends more than {self.rate:g} requests a second; slow down",
                code="rate_limit_exceeded",
                headers=[(b"retry-after", str(wait).encode())],
            )
        if len(buckets) >= _MAX_TOKENS:
            buckets.popitem(last=False)  # the least recently seen: a full bucket when it comes back
        buckets[token_id] = (tokens - 1, now)


class WorkerAuthenticator:
    def __init__(self, store: WorkerTokenStore, ttl: float = 1.0, limit: WorkerRateLimit | None = None) -> None:
        self._store = store
        self._ttl = ttl
        self._limit = limit
        self._tokens: OrderedDict[str, tuple[WorkerToken, float]] = OrderedDict()
        self._unknown = RecentlyUnknown(2.0, _MAX_TOKENS)

    async def authenticate(self, scope: Scope) -> WorkerToken:
        secret = bearer(scope)
        token_id = token_id_of(secret)
        if token_id is None:
            if key_id_of(secret) is not None:
                raise invalid_worker_token("API keys cannot register workers. " + NEEDS_WORKER_TOKEN)
            raise invalid_worker_token()
        token = await self._lookup(token_id)
        if token is None or not matches(secret, token.secret_hash):
            raise invalid_worker_token()
        if token.revoked_at is not None:
            raise invalid_worker_token("This worker token has been revoked.")
        if self._limit is not None:
            self._limit.check(token.id)
        return token

    async def _lookup(self, token_id: str) -> WorkerToken | None:
        cached = self._tokens.get(token_id)
        if cached is not None and time.monotonic() - cached[1] < self._ttl:
            return cached[0]
        if token_id in self._unknown:
            return None
        token = await asyncio.to_thread(self._store.get, token_id)
        if token is None:
            self._unknown.add(token_id)
            self._tokens.pop(token_id, None)
            return None
        tokens = self._tokens
        if token_id not in tokens and len(tokens) >= _MAX_TOKENS:
            tokens.popitem(last=False)
        tokens[token_id] = (token, time.monotonic())
        return token


def bearer(scope: Scope) -> str:
    """The presented credential, or 401 if there is none of a plausible size."""
    return bearer_secret(
        scope,
        _MAX_AUTHORIZATION,
        invalid_worker_token,
        "You didn't provide a worker token. " + NEEDS_WORKER_TOKEN,
        "The Authorization header must be 'Bearer TOKEN'.",
    )
