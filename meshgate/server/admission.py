"""Admission: the context-length check and the atomic quota reservation, before any upstream work."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from meshgate.catalog.spec import ModelSpec
from meshgate.protocol.errors import ApiError, context_length_exceeded, insufficient_quota
from meshgate.quota.ledger import Ledger, Reservation, WindowKey, utc_day, window_reset
from meshgate.quota.policy import QuotaPolicy
from meshgate.server.http import Headers

SURFACE_NAMES = {"api": "the API", "chat": "web chat", "embeddings": "embeddings"}


@dataclass(slots=True)
class Admission:
    reservation: Reservation
    prompt_estimate: int  # prompt tokens as the gateway counted them (a bound without a tokenizer)
    max_tokens: int | None  # completion tokens the upstream may generate (None for embeddings)


_day_cache: tuple[int, str] = (-1, "")


def today() -> str:
    """`utc_day()`, worked out once per UTC day instead of per request."""
    global _day_cache
    day_number = int(time.time() // 86400)
    cached_number, day = _day_cache
    if cached_number != day_number:
        day = utc_day(dt.datetime.fromtimestamp(day_number * 86400, dt.UTC))
        _day_cache = (day_number, day)
    return day


def format_duration(seconds: float) -> str:
    """`x-ratelimit-reset-tokens` as OpenAI writes it: 1h2m3s, 4m0s, 12s."""
    seconds = max(int(seconds + 0.999), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Admitter:
    def __init__(self, ledger: Ledger, policy: QuotaPolicy) -> None:
        self.ledger = ledger
        self.policy = policy
        self._reset_cache: tuple[str, float] = ("", 0.0)

    def limit_for(self, account_id: int, spec: ModelSpec, bucket: str) -> int:
        limit = self.policy.limit(account_id, spec, bucket)
        if limit is None:
            raise ApiError(
                400,
                f"The model `{spec.id}` is not offered for {SURFACE_NAMES.get(bucket, bucket)}.",
                code="model_not_available_for_surface",
                param="model",
            )
        return limit

    def reset_epoch(self, day: str) -> float:
        cached_day, epoch = self._reset_cache
        if cached_day != day:
            epoch = window_reset(day).timestamp()
            self._reset_cache = (day, epoch)
        return epoch

    def rate_headers(self, key: WindowKey, limit: int, remaining: int) -> Headers:
        reset_in = self.reset_epoch(key.day) - time.time()
        return [
            (b"x-ratelimit-limit-tokens", str(limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(remaining, 0)).encode()),
            (b"x-ratelimit-reset-tokens", format_duration(reset_in).encode()),
        ]

    async def headers_after(self, reservation: Reservation) -> Headers:
        usage = await self.ledger.window(reservation.key)
        return self.rate_headers(reservation.key, reservation.limit, reservation.limit - usage.used - usage.reserved)

    async def admit_chat(
        self,
        request_id: str,
        account_id: int,
        api_key_id: str | None,
        spec: ModelSpec,
        bucket: str,
        prompt_tokens: int,
        prompt_exact: bool,
        max_tokens: int | None,
        choices: int = 1,
    ) -> Admission:
        """Reserve what the request can cost at most: the prompt once, `choices` completions.

        `prompt_tokens` is exact or an upper bound. With `max_tokens` given the engine is sent
        it unchanged: its own context check keeps prompt + completion within the context, so
        usage stays within min(prompt + choices * max_tokens, choices * context). Without it,
        the request gets what is left of the context and of the quota, and the engine is told
        that cap (`Admission.max_tokens`).
        """
        limit = self.limit_for(account_id, spec, bucket)
        context = spec.context_length
        if max_tokens is not None and (
            max_tokens >= context or (prompt_exact and prompt_tokens + max_tokens > context)
        ):
            raise context_length_exceeded(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        if prompt_exact and prompt_tokens >= context:
            raise context_length_exceeded(
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{prompt_tokens} tokens. Please reduce the length of the messages."
            )
        if max_tokens is not None:
            minimum = maximum = min(prompt_tokens + choices * max_tokens, choices * context)
        else:
            room = max(context - prompt_tokens, 1)  # completion room per choice, as far as the gateway knows
            minimum, maximum = prompt_tokens + choices, prompt_tokens + choices * room
        key = WindowKey(account_id, spec.id, bucket, today())
        grant = await self.ledger.reserve(request_id, key, limit, minimum, maximum, api_key_id)
        if grant.reservation is None:
            raise self._quota_error(key, limit, grant.remaining, minimum)
        if max_tokens is None:
            max_tokens = max((grant.amount - prompt_tokens) // choices, 1)
        return Admission(grant.reservation, prompt_tokens, max_tokens)

    async def admit_tokens(
        self, request_id: str, account_id: int, api_key_id: str | None, spec: ModelSpec, bucket: str, tokens: int
    ) -> Admission:
        """Admission for requests with no completion (embeddings): reserve the input's tokens."""
        limit = self.limit_for(account_id, spec, bucket)
        key = WindowKey(account_id, spec.id, bucket, today())
        grant = await self.ledger.reserve(request_id, key, limit, tokens, tokens, api_key_id)
        if grant.reservation is None:
            raise self._quota_error(key, limit, grant.remaining, tokens)
        return Admission(grant.reservation, tokens, None)

    def _quota_error(self, key: WindowKey, limit: int, remaining: int, needed: int) -> ApiError:
        reset_at = dt.datetime.fromtimestamp(self.reset_epoch(key.day), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if limit == 0:
            message = f"Your account has no daily quota for `{key.model}` here ({key.bucket})."
        else:
            message = (
                f"You exceeded your daily token quota for `{key.model}` ({key.bucket}): this request needs up to "
                f"{needed} tokens and {remaining} of {limit} remain until {reset_at}. "
                "Send a smaller max_tokens or wait for the reset."
            )
        return insufficient_quota(message, headers=self.rate_headers(key, limit, remaining))
