"""Worker token authentication for the registration endpoints (`server/workers_api.py`).

Worker tokens (`mgw-…`) and API keys (`mg-…`) are different credentials: an API key presented
here is refused with a message that says so, as a worker token is on the OpenAI endpoints
(`server/auth.py`). Tokens are looked up once and re-read at most every `ttl` seconds, so a
revocation stops heartbeats within about a second; unknown ids are remembered for a while,
and both caches are bounded, so a flood of made-up tokens costs neither memory nor queries.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from meshgate.accounts.keys import key_id_of, matches
from meshgate.accounts.worker_tokens import TOKEN_LENGTH, WorkerToken, WorkerTokenStore, token_id_of
from meshgate.protocol.errors import ApiError
from meshgate.server.auth import RecentlyUnknown
from meshgate.server.http import Scope, header

_MAX_AUTHORIZATION = len(b"Bearer ") + TOKEN_LENGTH + 8
_MAX_TOKENS = 10_000
NEEDS_WORKER_TOKEN = (
    "This endpoint takes a worker token: 'Authorization: Bearer mgw-…' "
    "(create one with `meshgate workers token create`)."
)


def invalid_worker_token(message: str = "Incorrect worker token provided.") -> ApiError:
    return ApiError(401, message, code="invalid_worker_token")


class WorkerAuthenticator:
    def __init__(self, store: WorkerTokenStore, ttl: float = 1.0) -> None:
        self._store = store
        self._ttl = ttl
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
    raw = header(scope, b"authorization")
    if raw is None:
        raise invalid_worker_token("You didn't provide a worker token. " + NEEDS_WORKER_TOKEN)
    if len(raw) > _MAX_AUTHORIZATION:
        raise invalid_worker_token()
    scheme, _, token = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        raise invalid_worker_token("The Authorization header must be 'Bearer TOKEN'.")
    return token.strip().decode("latin-1")
