"""`meshgate worker` (run beside an engine) and `meshgate workers token|list` (the operator's side)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

import httpx

from meshgate.accounts.worker_tokens import WorkerTokenStore
from meshgate.cli.home import prepare_home
from meshgate.config import Settings
from meshgate.protocol.errors import ApiError
from meshgate.store.engine import migrate, sync_engine
from meshgate.workers.registration import ENGINES, MAX_CONCURRENCY, normalize_upstream

TOKEN_ENV = "MESHGATE_WORKER_TOKEN"


def add_parsers(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="run beside an inference engine: register it with a gateway and keep it there while it is healthy",
        description="Checks the engine's health, registers it as a replica of a catalog model, heartbeats its "
        "load every ~2 s, stops heartbeating while the engine is unhealthy, deregisters on SIGTERM/SIGINT.",
    )
    worker.add_argument("--gateway", required=True, help="the gateway's URL, e.g. http://gateway:8000")
    worker.add_argument("--token", help=f"a worker token from `meshgate workers token create` (env {TOKEN_ENV})")
    worker.add_argument("--model", required=True, help="the catalog model id the engine serves")
    worker.add_argument(
        "--upstream",
        required=True,
        help="the engine's OpenAI base URL as the gateway reaches it, e.g. http://10.0.0.5:8000/v1",
    )
    worker.add_argument(
        "--max-concurrency", type=int, help="requests the engine should get at once (per gateway process)"
    )
    worker.add_argument(
        "--engine", default="auto", choices=["auto", *ENGINES], help="how to check health and read load (default: auto)"
    )
    worker.add_argument("--served-model", help="the engine's name for the model (default: as its /v1/models says)")
    worker.add_argument("--interval", type=float, help=argparse.SUPPRESS)  # heartbeat period; default: the gateway's

    workers = sub.add_parser("workers", help="worker tokens, and the replicas of every model").add_subparsers(
        dest="action", required=True
    )
    token = workers.add_parser("token", help="tokens that let `meshgate worker` register").add_subparsers(
        dest="token_action", required=True
    )
    create = token.add_parser("create", help="create a worker token; it is printed once, on the last line")
    create.add_argument("--name", default="", help="a label for the token")
    create.add_argument("--models", help="comma-separated catalog model ids it may register (default: all)")
    token.add_parser("list", help="list worker tokens")
    token.add_parser("revoke", help="revoke a worker token (its workers drop out within seconds)").add_argument(
        "token_id"
    )
    listing = workers.add_parser("list", help="every replica of every model, as a running gateway sees it")
    listing.add_argument("--gateway", help="the gateway's URL (default: http://MESHGATE_HOST:MESHGATE_PORT)")
    listing.add_argument("--token", help=f"a worker token or an admin account's API key (env {TOKEN_ENV})")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        return _worker(args)
    if args.action == "list":
        return _list(args, settings)
    prepare_home(settings)
    migrate(settings.database_url)
    store = WorkerTokenStore(sync_engine(settings.database_url))
    if args.token_action == "create":
        models = [m for m in args.models.split(",")] if args.models else None
        token, secret = store.create(args.name, models)
        scope = "all models" if token.models is None else ",".join(token.models)
        print(f"created worker token {token.id} ({scope})")
        print("the token is shown this once:")
        print(secret)
    elif args.token_action == "list":
        print("id\tname\tcreated\tlast used\tstatus\tmodels")
        for token in store.list():
            status = "revoked" if token.revoked_at else "active"
            scope = "all" if token.models is None else ",".join(token.models)
            print(
                f"{token.id}\t{token.name}\t{_when(token.created_at)}\t{_when(token.last_used_at)}\t{status}\t{scope}"
            )
    else:
        token = store.revoke(args.token_id)
        print(f"revoked worker token {token.id}")
    return 0


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None


def _worker(args: argparse.Namespace) -> int:
    from meshgate.workers.agent import AgentConfig, run_agent

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per heartbeat
    token = _token(args)
    if token is None:
        print(f"meshgate worker: give a worker token with --token or {TOKEN_ENV}", file=sys.stderr)
        return 2
    try:
        upstream = normalize_upstream(args.upstream, "--upstream")
    except ApiError as exc:
        print(f"meshgate worker: {exc.message}", file=sys.stderr)
        return 2
    if args.max_concurrency is not None and not 1 <= args.max_concurrency <= MAX_CONCURRENCY:
        print(f"meshgate worker: --max-concurrency must be from 1 to {MAX_CONCURRENCY}", file=sys.stderr)
        return 2
    config = AgentConfig(
        gateway=args.gateway,
        token=token,
        model=args.model,
        upstream=upstream,
        max_concurrency=args.max_concurrency,
        engine=args.engine,
        served_model=args.served_model,
        interval=args.interval,
    )
    return asyncio.run(run_agent(config))


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from meshgate.workers.agent import gateway_root

    token = _token(args)
    if token is None:
        print(
            f"meshgate workers list: give a worker token or an admin API key (--token or {TOKEN_ENV})", file=sys.stderr
        )
        return 2
    root = gateway_root(args.gateway or f"http://{settings.host}:{settings.port}")
    try:
        response = httpx.get(root + "/internal/workers", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"meshgate workers list: cannot reach {root}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"meshgate workers list: {response.status_code} {response.text[:300]}", file=sys.stderr)
        return 1
    now = time.time()
    print("model\tsource\tupstream\tserved as\thealth\tin flight here\trunning\twaiting\tkv cache\tmax\tlast heartbeat")
    for row in response.json()["data"]:
        beat = row["last_heartbeat"]
        print(
            "\t".join(
                [
                    row["model"],
                    row["source"],
                    row["url"],
                    row["served_model"],
                    "up" if row["healthy"] else "down",
                    str(row["in_flight"]),
                    _dash(row["running"]),
                    _dash(row["waiting"]),
                    "-" if row["kv_cache"] is None else f"{row['kv_cache']:.0%}",
                    _dash(row["max_concurrency"]),
                    "-" if beat is None else f"{max(now - beat, 0):.1f} s ago",
                ]
            )
        )
    return 0


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
