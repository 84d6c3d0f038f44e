"""Which daily limit applies to a window: the catalog's, unless an account override says otherwise."""

from __future__ import annotations

from meshgate.catalog.spec import ModelSpec


class QuotaPolicy:
    def __init__(self) -> None:
        self._overrides: dict[tuple[int, str, str], int] = {}

    def replace_overrides(self, overrides: dict[tuple[int, str, str], int]) -> None:
        self._overrides = overrides

    def limit(self, account_id: int, spec: ModelSpec, bucket: str) -> int | None:
        """Tokens per UTC day, or None if the model is not offered in this bucket for the account.

        An override also offers a bucket the catalog leaves out: the operator granted it explicitly.
        """
        override = self._overrides.get((account_id, spec.id, bucket)) if self._overrides else None
        if override is not None:
            return override
        return spec.daily_quota.get(bucket)  # type: ignore[call-overload]
