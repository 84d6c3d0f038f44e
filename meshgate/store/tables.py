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
    text,
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
    # Partial: the key refresh of every gateway process reads the disabled accounts once a second.
    Index("ix_accounts_disabled", "id", postgresql_where=text("disabled"), sqlite_where=text("disabled")),
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
    Column("outcome", String(32), nullable=False),  # ok, client_disconnect, cut_at_limit, upstream_error, recovered
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

# Browser sessions (meshgate/accounts/sessions.py): only the SHA-256 of the cookie's id is kept.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

# Invite codes for MESHGATE_SIGNUP=invite, hashed like sessions; a code signs up one account.
web_invites = Table(
    "web_invites",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("code_prefix", String(16), nullable=False),  # shown in listings, never enough to use
    Column("created_by", Integer, nullable=True),  # None: made with the CLI
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("used_by", Integer, nullable=True),
    Column("used_at", Float, nullable=True),
)

# The web chat's conversations (meshgate/web/conversations.py). The id is random and unguessable; every
# query is also filtered by account_id, so another account's id answers 404 like an unknown one.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("model", String(256), nullable=False),
    Column("system_prompt", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_conversations_account_updated", "account_id", "updated_at"),
)

# A conversation's messages in order of id. An assistant message keeps what its answer was charged
# (prompt and completion tokens), how it ended (stop, length, stopped by the user, error) and, for a
# reasoning model, its reasoning apart from its content.
conversation_messages = Table(
    "conversation_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(32), ForeignKey("conversations.id"), nullable=False),
    Column("role", String(16), nullable=False),  # user, assistant
    Column("content", Text, nullable=False),
    Column("reasoning", Text, nullable=True),
    Column("model", String(256), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("finish", String(16), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_conversation_messages_conversation", "conversation_id", "id"),
)

# Worker tokens (meshgate/accounts/worker_tokens.py): `meshgate worker` registers engines with one.
# Stored like API keys: the public id, the SHA-256 of the whole token; `models` limits what it may serve.
worker_tokens = Table(
    "worker_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, default=""),
    Column("secret_hash", String(64), nullable=False),
    Column("models", Text, nullable=True),  # a JSON array of catalog model ids; None: every model
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
