"""The database schema (SQLAlchemy Core). Alembic migrations in `migrations/` create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the public prefix carried in the key itself
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False, default=""),
    Column("secret_hash", String(64), nullable=False),  # sha256 hex of the whole key
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True, index=True),
    Column("expires_at", Float, nullable=True),  # None: the key does not expire
    # Scoped keys: a JSON array of catalog model ids (None: every model), and a token budget
    # per refresh cycle (quota/cycles.py: 8h, daily, weekly, monthly); None: only the account's quotas.
    Column("models", Text, nullable=True),
    Column("budget_tokens", BigInteger, nullable=True),
    Column("budget_cycle", String(16), nullable=True),
)

quota_overrides = Table(
    "quota_overrides",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("bucket", String(16), primary_key=True),
    Column("tokens", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Tokens charged per (account, model, bucket, UTC day): the durable side of the ledger.
quota_usage = Table(
    "quota_usage",
    metadata,
    Column("account_id", Integer, primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("bucket", String(16), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("used", BigInteger, nullable=False),
)

# Tokens charged per (API key, budget period): the durable side of a key's budget window.
key_budget_usage = Table(
    "key_budget_usage",
    metadata,
    Column("api_key_id", String(32), primary_key=True),
    Column("period", String(32), primary_key=True),  # cycles.current_period: the period's UTC start
    Column("used", BigInteger, nullable=False),
)

# One row per settled request: the usage history, and the idempotency record of settlement.
usage_events = Table(
    "usage_events",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("account_id", Integer, nullable=False),
    Column("api_key_id", String(32), nullable=True),
    Column("model", String(256), nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("day", String(10), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # ok, client_disconnect, upstream_error
    Column("created_at", Float, nullable=False),
    Index("ix_usage_events_account_day", "account_id", "day"),
    UniqueConstraint("request_id", name="uq_usage_events_request"),
)

# What each request in flight has delivered so far (`Ledger.progress`), flushed once a second and
# deleted in the transaction that records the request's usage event: rows left over after a crash
# are what the dead process had delivered, charged on the next start-up (outcome "recovered").
open_reservations = Table(
    "open_reservations",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("account_id", Integer, nullable=False),
    Column("api_key_id", String(32), nullable=True),
    Column("model", String(256), nullable=False),
    Column("bucket", String(16), nullable=False),
    Column("day", String(10), nullable=False),
    Column("budget_key_id", String(32), nullable=True),  # the key budget charged too, if any
    Column("budget_period", String(32), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
