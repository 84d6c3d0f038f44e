#!/usr/bin/env python3
"""Scale-out benchmark: requests/s through 1 and 2 gateway processes on the Redis ledger, and the embedded one.

Loopback only; every load run is bounded (wrk -d). It starts, each its own and stopped at the end:
the shared harness's fast mock upstream (`../shared/bench/mock_upstream.py`), a private Redis on a free
port (so `INFO commandstats` counts only the gateways' commands), and a fresh PostgreSQL schema in
MESHGATE_TEST_DATABASE_URL's database (default postgresql://postgres@127.0.0.1:5432/test) for the Redis
rows. Rows:

  embedded, 1 process     SQLite + the embedded ledger (`make serve`'s default)
  redis, SQLite history   the Redis ledger with its history in SQLite: what PostgreSQL costs, apart
  redis, 1 process        PostgreSQL + the Redis ledger, `serve --processes 1`
  redis, 2 processes      the same, `serve --processes 2` (one socket, two gateway processes)

For each: non-streaming chat at --conc (default 64) for --duration seconds after a warm-up, wrk's RPS and
p50/p99, and on Redis the commands per request (every command the gateways sent during the run, their
background ticks included) and the quota scripts (EVALSHA/EVAL) per request. The calls of one event-loop
tick share a pipeline, so round trips per request are at most the commands per request.

Also measured: the cost of one key/override refresh (what every gateway process runs each
MESHGATE_AUTH_REFRESH_SECONDS) on PostgreSQL with --accounts accounts of 2 keys each, 1 % disabled.

  bench/scaleout.py                    # ~2 min
  bench/scaleout.py --duration 20 --conc 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "bench"
QUOTA = 10**15
DATABASE = os.environ.get("MESHGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
MESHGATE = [sys.executable, "-m", "meshgate.cli.main"]


def log(*parts: object) -> None:
    print("[scaleout]", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before port {port} answered")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not answer within {timeout} s")


def wait_health(port: int, proc: subprocess.Popen[bytes], processes: int, timeout: float = 90.0) -> None:
    """Until /health answers through the gateway."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    # The parent's socket accepts before its children are up; the first to answer is ready,
                    # the others start alongside it: a few seconds more and they are all in.
                    time.sleep(0 if processes == 1 else 5)
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway on port {port} was not ready within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def catalog(mock_port: int) -> str:
    return (
        f'[[models]]\nid = "mock-model"\nkind = "chat"\ncontext_length = 131072\n'
        f"daily_quota = {{ api = {QUOTA}, chat = {QUOTA} }}\n"
        f'[[models.upstreams]]\nurl = "http://127.0.0.1:{mock_port}/v1"\n'
    )


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*MESHGATE, *args], env=env, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"meshgate {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def redis_stats(port: int) -> dict[str, int]:
    """Calls per command the private Redis has processed (INFO, which asks, left out)."""
    import redis

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def wrk(url: str, key: str, body: Path, conc: int, seconds: float) -> dict[str, float]:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_KEY": key, "WRK_HEADERS": ""}
    command = [
        "wrk",
        "-t2",
        f"-c{conc}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(SHARED / "wrk_post.lua"),
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    data = json.loads(line[8:])
    secs = data["duration_us"] / 1e6
    errors = sum(data[k] for k in data if k.startswith("err_"))
    return {
        "requests": data["requests"],
        "errors": errors,
        "rps": data["requests"] / secs,
        "p50_ms": data["p50_us"] / 1000,
        "p99_ms": data["p99_us"] / 1000,
    }


def one_row(
    name: str, mock_port: int, env: dict[str, str], processes: int, a: argparse.Namespace, redis_port: int | None
) -> dict[str, object]:
    home = Path(env["MESHGATE_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(catalog(mock_port))
    account = f"bench-{home.name}"
    cli(env, "accounts", "create", account)
    key = cli(env, "keys", "create", "--account", account).strip().splitlines()[-1]
    port = free_port()
    serve = [*MESHGATE, "serve", "--config", str(home / "catalog.toml"), "--port", str(port)]
    serve += ["--processes", str(processes)]
    log_file = open(home / "serve.log", "wb")  # noqa: SIM115 - the server writes to it until it stops
    proc = subprocess.Popen(serve, env=env, cwd=REPO, stdout=log_file, stderr=log_file)
    try:
        wait_health(port, proc, processes)
        url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
        body = home / "body.json"
        body.write_text(json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}))
        wrk(url, key, body, a.conc, a.warmup)
        before = redis_stats(redis_port) if redis_port else {}
        result = wrk(url, key, body, a.conc, a.duration)
        after = redis_stats(redis_port) if redis_port else {}
    finally:
        stop(proc)
        log_file.close()
    row: dict[str, object] = {"setup": name, **result}
    if redis_port:
        requests = max(1, int(result["requests"]))
        delta = {k: (n - before.get(k, 0)) / requests for k, n in after.items() if n > before.get(k, 0)}
        row["redis_commands_per_request"] = sum(delta.values())
        row["quota_scripts_per_request"] = delta.get("evalsha", 0.0) + delta.get("eval", 0.0)
        row["redis_per_command"] = {k: round(v, 3) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])}
    log(json.dumps(row))
    return row


def refresh_cost(url: str, accounts: int) -> dict[str, float]:
    """Seconds per refresh (keys to refuse + overrides version) on PostgreSQL with `accounts` accounts."""
    from sqlalchemy import insert, text

    from meshgate.accounts.service import AccountStore
    from meshgate.server.auth import _changes
    from meshgate.store.engine import migrate, sync_engine
    from meshgate.store.tables import accounts as accounts_table
    from meshgate.store.tables import api_keys

    migrate(url)
    engine = sync_engine(url)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(
            insert(accounts_table),
            [
                {"name": f"a{i}", "is_admin": False, "disabled": i % 100 == 0, "created_at": now}
                for i in range(accounts)
            ],
        )
        conn.execute(
            insert(api_keys),
            [
                {"id": f"k{i}", "account_id": 1 + i // 2, "name": "", "secret_hash": "0" * 64, "created_at": now}
                for i in range(2 * accounts)
            ],
        )
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))  # as autovacuum would have by now on a live database
    store = AccountStore(engine)
    runs = 50
    started = time.perf_counter()
    for _ in range(runs):
        revoked, disabled = _changes(engine, time.time() - 6)  # what KeyAuthenticator.refresh reads
        store.overrides_version()  # and Gateway.refresh
    per = (time.perf_counter() - started) / runs
    engine.dispose()
    return {
        "accounts": accounts,
        "keys": 2 * accounts,
        "disabled": len(disabled) + len(revoked),
        "ms_per_refresh": per * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conc", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--json", help="write the rows here too")
    a = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        raise SystemExit("needs wrk and redis-server (apt-get install wrk redis-server)")
    sys.path.insert(0, str(REPO))
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from meshgate.config import normalize_database_url

    work = Path(tempfile.mkdtemp(prefix="meshgate-scaleout-"))
    procs: list[subprocess.Popen[bytes]] = []
    schema = f"bench_scaleout_{os.urandom(4).hex()}"
    admin = create_engine(normalize_database_url(DATABASE), poolclass=NullPool)
    try:
        mock_port, redis_port = free_port(), free_port()
        mock = subprocess.Popen([sys.executable, str(SHARED / "mock_upstream.py"), "--port", str(mock_port)])
        procs.append(mock)
        redis_args = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        redis_proc = subprocess.Popen([*redis_args, "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
        procs.append(redis_proc)
        wait_port(mock_port, mock)
        wait_port(redis_port, redis_proc)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        base = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
        base["MESHGATE_AUTH_REFRESH_SECONDS"] = "1"
        joiner = "&" if "?" in DATABASE else "?"
        postgres = f"{DATABASE}{joiner}options=-csearch_path%3D{schema}"
        shared = {"MESHGATE_DATABASE_URL": postgres, "MESHGATE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        # The two Redis rows: one database, the accounts apart (another account), Redis keys apart (prefix).
        shared2 = {**shared, "MESHGATE_REDIS_PREFIX": "bench2:"}
        sqlite_history = {"MESHGATE_REDIS_URL": shared["MESHGATE_REDIS_URL"], "MESHGATE_REDIS_PREFIX": "bench3:"}
        rows = [
            one_row("embedded, 1 process", mock_port, {**base, "MESHGATE_HOME": str(work / "e1")}, 1, a, None),
            one_row(
                "redis, SQLite history, 1 process",
                mock_port,
                {**base, **sqlite_history, "MESHGATE_HOME": str(work / "s1")},
                1,
                a,
                redis_port,
            ),
            one_row(
                "redis, 1 process", mock_port, {**base, **shared, "MESHGATE_HOME": str(work / "r1")}, 1, a, redis_port
            ),
            one_row(
                "redis, 2 processes",
                mock_port,
                {**base, **shared2, "MESHGATE_HOME": str(work / "r2")},
                2,
                a,
                redis_port,
            ),
        ]
        refresh_schema = f"{schema}_refresh"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {refresh_schema}"))
        refresh = refresh_cost(f"{DATABASE}{joiner}options=-csearch_path%3D{refresh_schema}", a.accounts)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {refresh_schema} CASCADE"))
    finally:
        for proc in procs:
            stop(proc)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ncores: {os.cpu_count()}; load average at the end: {os.getloadavg()[0]:.1f}; chat, c={a.conc}, {a.duration:g} s\n"
    )
    print("| setup | requests/s | p50 ms | p99 ms | errors | Redis commands / request | quota scripts / request |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        commands = row.get("redis_commands_per_request")
        scripts = row.get("quota_scripts_per_request")
        print(
            f"| {row['setup']} | {row['rps']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']:.0f}"
            f" | {'-' if commands is None else f'{commands:.2f}'} | {'-' if scripts is None else f'{scripts:.2f}'} |"
        )
    print(
        f"\nrefresh on PostgreSQL: {refresh['ms_per_refresh']:.2f} ms per refresh with {refresh['accounts']:.0f}"
        f" accounts, {refresh['keys']:.0f} keys, {refresh['disabled']:.0f} of the accounts disabled"
    )
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "refresh": refresh}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
