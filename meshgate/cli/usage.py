"""`meshgate usage`: an account's tokens per model and bucket for one UTC day."""

from __future__ import annotations

from meshgate.accounts.service import Account, AccountStore
from meshgate.quota.ledger import utc_day


def print_usage(store: AccountStore, account: Account, day: str | None) -> int:
    day = day or utc_day()
    rows = store.usage_rows(account.id, day)
    overrides = {(m, b): t for (a, m, b), t in store.quota_overrides().items() if a == account.id}
    print(f"usage of {account.name} on {day} (UTC)")
    print("model\tbucket\tused\toverride")
    if not rows:
        print("(no usage)")
    for (model, bucket), used in sorted(rows.items()):
        override = overrides.get((model, bucket))
        print(f"{model}\t{bucket}\t{used}\t{'-' if override is None else override}")
    return 0
