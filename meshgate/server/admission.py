"""Admission: may this request run, and what does it hold while it does?

Before any upstream work: the key's model scope, the context-length check, and one atomic
reservation on the account's window (and the key's budget, for a scoped key).

Prompt tokens start as a cheap upper bound (`catalog/tokens.py`). The engine's exact count
costs a round trip, so it is asked for only where the bound does not fit — the bound plus
the completion exceeds the context or what is left of the quota — and only after a cheap
lower bound says the request could fit at all (a quota of 0 never makes an engine tokenize
7 MiB). Where the bound fits, admission does no I/O beyond the ledger.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshgate.catalog.spec import ModelSpec
from meshgate.protocol.errors import ApiError, context_length_exceeded, insufficient_quota
from meshgate.quota.cycles import PER, current_period
from meshgate.quota.ledger import Budget, BudgetKey, Grant, Ledger, Reservation, WindowKey, utc_day, window_reset
from meshgate.quota.policy import QuotaPolicy
from meshgate.server.auth import Principal
from meshgate.server.http import Headers

SURFACE_NAMES = {"api": "the API", "chat": "web chat", "embeddings": "embeddings"}

# Counts the prompt exactly (None when the engine cannot): called only when the bound does not fit.
Counter = Callable[[], Awaitable[int | None]]


@dataclass(slots=True)
class Admission:
    reservation: Reservation
    prompt_estimate: int  # prompt tokens as the gateway counted them (a bound without a tokenizer)
    max_tokens: int | None  # completion tokens per choice the upstream may generate (None for embeddings)
    exact: bool = False  # prompt_estimate is the engine's own count


@dataclass(slots=True)
class Demand:
    """What a request may cost, as far as the gateway can tell before counting exactly."""

    prompt_bound: int  # at least the prompt's tokens
    prompt_floor: int  # at most the prompt's tokens
    max_tokens: int | None = None  # per choice, as the client asked (None: what is left)
    choices: int = 1
    exact: bool = False  # prompt_bound is the exact count
    # Without max_tokens: at most this many per choice (the web chat's answer length), not all that is left.
    completion_cap: int | None = None


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


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def key_budget(principal: Principal, now: float | None = None) -> Budget | None:
    """The current period of a scoped key's budget, or None for a key without one."""
    if principal.budget_tokens is None or principal.budget_cycle is None or principal.key_id is None:
        return None
    period, resets_at = current_period(principal.budget_cycle, time.time() if now is None else now)
    return Budget(BudgetKey(principal.key_id, period), principal.budget_tokens, resets_at)


def check_scope(principal: Principal, spec: ModelSpec) -> None:
    """A scoped key may use only its models: 403 for the others."""
    if principal.models is not None and spec.id not in principal.models:
        raise ApiError(
            403,
            f"This API key may not use the model `{spec.id}`; it is limited to: {', '.join(sorted(principal.models))}.",
            type="invalid_request_error",
            code="model_not_allowed_for_key",
            param="model",
        )


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
        principal: Principal,
        spec: ModelSpec,
        bucket: str,
        demand: Demand,
        count: Counter | None = None,
        context: int | None = None,
    ) -> Admission:
        """Reserve what the request can cost at most: the prompt once, `demand.choices` completions.

        With `max_tokens` given the engine is sent it unchanged: its own context check keeps
        prompt + completion within the context, so usage stays within
        min(prompt + choices * max_tokens, choices * context). Without it, the request gets
        what is left of the context and of the quota, and the engine is told that cap
        (`Admission.max_tokens`). `context` is the model's effective context (the catalog's,
        or less where an engine said so).
        """
        check_scope(principal, spec)
        limit = self.limit_for(principal.account_id, spec, bucket)
        context = context or spec.context_length
        key = WindowKey(principal.account_id, spec.id, bucket, today())
        budget = key_budget(principal)
        n, max_tokens = demand.choices, demand.max_tokens
        if max_tokens is not None and max_tokens >= context:
            raise _too_long(context, demand.prompt_floor, max_tokens)
        # What the cheap lower bound already rules out needs no count.
        if demand.prompt_floor >= context or (max_tokens is not None and demand.prompt_floor + max_tokens > context):
            raise _too_long(context, demand.prompt_floor, max_tokens)
        if limit == 0:
            raise self._quota_error(key, limit, 0, demand.prompt_floor + n)
        prompt, exact = demand.prompt_bound, demand.exact
        fits_context = prompt < context if max_tokens is None else prompt + max_tokens <= context
        if not exact and count is not None and not fits_context:
            prompt, exact = await _recount(count, prompt)
        if exact and (prompt >= context or (max_tokens is not None and prompt + max_tokens > context)):
            raise _too_long(context, prompt, max_tokens)

        cap = demand.completion_cap
        minimum, maximum = _span(prompt, max_tokens, n, context, cap)
        grant = await self.ledger.reserve(request_id, key, limit, minimum, maximum, principal.key_id, budget)
        if not exact and count is not None and (grant.reservation is None or grant.amount < maximum):
            # The quota binds: the bound would refuse a request that fits, or shorten its answer.
            floor_minimum, _ = _span(demand.prompt_floor, max_tokens, n, context, cap)
            if grant.reservation is not None or grant.remaining >= floor_minimum:
                prompt, exact = await _recount(count, prompt)
                if grant.reservation is None:
                    minimum, maximum = _span(prompt, max_tokens, n, context, cap)
                    grant = await self.ledger.reserve(
                        request_id, key, limit, minimum, maximum, principal.key_id, budget
                    )
        if grant.reservation is None:
            raise self._quota_error(key, limit, grant.remaining, minimum, grant, principal, budget)
        if max_tokens is None:
            max_tokens = max(min((grant.amount - prompt) // n, context - prompt, cap or context), 1)
        return Admission(grant.reservation, prompt, max_tokens, exact)

    async def admit_tokens(
        self,
        request_id: str,
        principal: Principal,
        spec: ModelSpec,
        bucket: str,
        demand: Demand,
        count: Counter | None = None,
    ) -> Admission:
        """Admission for requests with no completion (embeddings): reserve the input's tokens."""
        check_scope(principal, spec)
        limit = self.limit_for(principal.account_id, spec, bucket)
        key = WindowKey(principal.account_id, spec.id, bucket, today())
        budget = key_budget(principal)
        if limit == 0:
            raise self._quota_error(key, limit, 0, demand.prompt_floor)
        tokens, exact = demand.prompt_bound, demand.exact
        grant = await self.ledger.reserve(request_id, key, limit, tokens, tokens, principal.key_id, budget)
        could_fit = grant.remaining >= demand.prompt_floor
        if grant.reservation is None and not demand.exact and count is not None and could_fit:
            tokens, exact = await _recount(count, tokens)
            if exact:
                grant = await self.ledger.reserve(request_id, key, limit, tokens, tokens, principal.key_id, budget)
        if grant.reservation is None:
            raise self._quota_error(key, limit, grant.remaining, tokens, grant, principal, budget)
        return Admission(grant.reservation, tokens, None, demand.exact or exact)

    def _quota_error(
        self,
        key: WindowKey,
        limit: int,
        remaining: int,
        needed: int,
        grant: Grant | None = None,
        principal: Principal | None = None,
        budget: Budget | None = None,
    ) -> ApiError:
        if grant is not None and grant.refused_by == "budget" and budget is not None and principal is not None:
            per = PER.get(principal.budget_cycle or "", "cycle")
            error = insufficient_quota(
                f"This API key's budget of {budget.limit} tokens per {per} is used up: this request needs up to "
                f"{needed} tokens and {remaining} remain until {_iso(budget.resets_at)}, when the budget refreshes.",
                headers=self.rate_headers(key, limit, remaining),
            )
            error.quota = (key.model, key.bucket, "key_budget")
            return error
        reset_at = _iso(self.reset_epoch(key.day))
        if limit == 0:
            message = f"Your account has no daily quota for `{key.model}` here ({key.bucket})."
        else:
            message = (
                f"You exceeded your daily token quota for `{key.model}` ({key.bucket}): this request needs up to "
                f"{needed} tokens and {remaining} of {limit} remain until {reset_at}. "
                "Send a smaller max_tokens or wait for the reset."
            )
        error = insufficient_quota(message, headers=self.rate_headers(key, limit, remaining))
        error.quota = (key.model, key.bucket, "account")
        return error


def _span(prompt: int, max_tokens: int | None, choices: int, context: int, cap: int | None) -> tuple[int, int]:
    """(minimum, maximum) to reserve for a chat request."""
    if max_tokens is not None:
        amount = min(prompt + choices * max_tokens, choices * context)
        return amount, amount
    room = max(min(context - prompt, cap or context), 1)  # completion room per choice, as far as the gateway knows
    return prompt + choices, prompt + choices * room


async def _recount(count: Counter, bound: int) -> tuple[int, bool]:
    counted = await count()
    if counted is None:
        return bound, False
    return counted, True


def _too_long(context: int, prompt: int, max_tokens: int | None) -> ApiError:
    if max_tokens is None:
        return context_length_exceeded(
            f"This model's maximum context length is {context} tokens. However, your messages resulted in "
            f"{prompt} tokens. Please reduce the length of the messages."
        )
    return context_length_exceeded(
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
        "completion). Please reduce the length of the messages or completion."
    )
