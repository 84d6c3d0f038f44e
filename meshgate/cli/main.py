"""`meshgate` command line: serve, accounts, keys, quota, usage, models."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from meshgate.accounts.service import AccountError, AccountStore, ApiKey
from meshgate.catalog.loader import CatalogError
from meshgate.cli import workers
from meshgate.cli.home import prepare_home
from meshgate.config import Settings, load_settings
from meshgate.quota.cycles import CYCLES, PER, current_period
from meshgate.store.engine import migrate, sync_engine


def _store(settings: Settings) -> AccountStore:
    prepare_home(settings)  # a database first made by the CLI is private too
    migrate(settings.database_url)
    return AccountStore(sync_engine(settings.database_url))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="Self-hosted OpenAI-compatible LLM API platform.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (with no --config: the local default models)")
    serve.add_argument("--config", help="catalog TOML file ([[models]] tables)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, env MESHGATE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, env MESHGATE_PORT)")
    serve.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("MESHGATE_PROCESSES", "1")),
        help="gateway processes on this machine (0: one per core; more than 1 needs MESHGATE_REDIS_URL;"
        " default 1, env MESHGATE_PROCESSES)",
    )
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a child of --processes N

    accounts = sub.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", required=True)
    create = accounts.add_parser("create", help="create an account")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="make the account an administrator")
    accounts.add_parser("list", help="list accounts")
    for action, text in (("disable", "refuse the account's keys (within seconds)"), ("enable", "accept them again")):
        accounts.add_parser(action, help=text).add_argument("name")
    from meshgate.cli import web_accounts

    web_accounts.add_parsers(accounts)  # set-password, invite

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="create a key; its secret is printed once, on the last line")
    key_create.add_argument("--account", required=True)
    key_create.add_argument("--name", default="", help="a label for the key")
    key_create.add_argument("--expires-in", type=_duration, help="e.g. 90d, 12h, 30m (default: never)")
    key_create.add_argument(
        "--models", type=_model_list, help="comma-separated model ids the key may use (default: all)"
    )
    key_create.add_argument("--budget", type=int, metavar="TOKENS", help="the key's own token budget per --cycle")
    key_create.add_argument(
        "--cycle", choices=CYCLES, help="when the budget refreshes (UTC): 8h, daily, weekly, monthly"
    )
    key_list = keys.add_parser("list", help="list an account's keys")
    key_list.add_argument("--account", required=True)
    key_revoke = keys.add_parser("revoke", help="revoke a key (takes effect within seconds)")
    key_revoke.add_argument("key_id")

    quota = sub.add_parser("quota", help="per-account quota overrides").add_subparsers(dest="action", required=True)
    quota_set = quota.add_parser("set", help="override the catalog's daily quota for one account")
    quota_set.add_argument("--account", required=True)
    quota_set.add_argument("--model", required=True)
    quota_set.add_argument("--bucket", required=True, choices=["api", "chat", "embeddings"])
    quota_set.add_argument("--tokens", required=True, type=int)

    usage = sub.add_parser("usage", help="an account's token usage for a UTC day")
    usage.add_argument("--account", required=True)
    usage.add_argument("--day", help="YYYY-MM-DD (default: today, UTC)")

    models = sub.add_parser("models", help="the model catalog").add_subparsers(dest="action", required=True)
    models_list = models.add_parser("list", help="list the models of a catalog")
    models_list.add_argument("--config", help="catalog TOML file (default: the local default models)")
    pull = models.add_parser("pull", help="download a GGUF from the Hugging Face hub: REPO/FILE")
    pull.add_argument("ref", help="e.g. bartowski/Qwen2.5-0.5B-Instruct-GGUF/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")
    pull.add_argument("--dest", help="folder (default: $MESHGATE_HOME/models)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    preset = models.add_parser("preset", help="print a built-in catalog as TOML")
    preset.add_argument("name", choices=["io-intelligence", "local"])
    preset.add_argument("--upstream", default="http://127.0.0.1:8001/v1", help="upstream URL for every model")
    workers.add_parsers(sub)  # `meshgate worker`, `meshgate workers token|list`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    try:
        return _dispatch(args, settings)
    except (AccountError, CatalogError) as exc:
        print(f"meshgate: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from meshgate.cli.serve import serve

        return serve(
            settings,
            config=args.config,
            host=args.host,
            port=args.port,
            processes=args.processes,
            listen_fd=args.listen_fd,
        )
    if args.command == "models":
        from meshgate.cli import models

        return models.run(args, settings)
    if args.command in ("worker", "workers"):
        return workers.run(args, settings)
    store = _store(settings)
    if args.command == "accounts" and args.action in ("set-password", "invite"):
        from meshgate.cli import web_accounts

        return web_accounts.run(args, store)
    if args.command == "accounts":
        if args.action == "create":
            account = store.create_account(args.name, is_admin=args.admin)
            print(f"created account {account.name} (id {account.id})")
        elif args.action in ("disable", "enable"):
            account = store.set_disabled(args.name, args.action == "disable")
            print(f"account {account.name} {args.action}d")
        else:
            for account in store.list_accounts():
                flags = " admin" if account.is_admin else ""
                flags += " disabled" if account.disabled else ""
                print(f"{account.id}\t{account.name}{flags}")
        return 0
    if args.command == "keys":
        return _keys(args, store)
    if args.command == "quota":
        account = store.require_account(args.account)
        store.set_quota(account.id, args.model, args.bucket, args.tokens)
        print(f"{account.name}: {args.model} {args.bucket} = {args.tokens} tokens per day")
        return 0
    if args.command == "usage":
        from meshgate.cli.usage import print_usage

        return print_usage(store, store.require_account(args.account), args.day)
    raise AssertionError(args.command)


def _keys(args: argparse.Namespace, store: AccountStore) -> int:
    if args.action == "create":
        account = store.require_account(args.account)
        key, secret = store.create_key(
            account.id,
            args.name,
            args.expires_in,
            models=args.models,
            budget_tokens=args.budget,
            budget_cycle=args.cycle,
        )
        expiry = f", expires {_when(key.expires_at)} UTC" if key.expires_at else ""
        print(f"created key {key.id} for {account.name}{expiry}")
        print(f"scope: {_scope(key)}; budget: {_budget(key)}")
        print("the secret is shown this once:")
        print(secret)
    elif args.action == "list":
        account = store.require_account(args.account)
        print("id\tname\tcreated\tlast used\texpires\tstatus\tscope\tbudget\tused this cycle\trefreshes (UTC)")
        now = time.time()
        for key in store.list_keys(account.id):
            expired = key.expires_at is not None and key.expires_at <= now
            status = "revoked" if key.revoked_at else "expired" if expired else "active"
            used, refreshes = "-", "-"
            if key.budget_cycle is not None:
                period, ends_at = current_period(key.budget_cycle, now)
                used, refreshes = str(store.budget_used(key.id, period)), _when(ends_at)
            print(
                f"{key.id}\t{key.name}\t{_when(key.created_at)}\t{_when(key.last_used_at)}"
                f"\t{_when(key.expires_at)}\t{status}\t{_scope(key)}\t{_budget(key)}\t{used}\t{refreshes}"
            )
    else:
        key = store.revoke_key(args.key_id)
        print(f"revoked key {key.id}")
    return 0


def _scope(key: ApiKey) -> str:
    return "all models" if key.models is None else ",".join(key.models)


def _budget(key: ApiKey) -> str:
    if key.budget_tokens is None or key.budget_cycle is None:
        return "-"
    return f"{key.budget_tokens}/{PER[key.budget_cycle]}"


def _model_list(text: str) -> list[str]:
    """'a/x, b/y' as ['a/x', 'b/y'], for argparse; the store checks what is left."""
    return [part.strip() for part in text.split(",")]


def _duration(text: str) -> float:
    """'90d', '12h', '30m', '45s' (or plain seconds) as seconds, for argparse."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90d, 12h, 30m)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


if __name__ == "__main__":
    sys.exit(main())
