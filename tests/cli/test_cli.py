"""The `meshgate` command line, run as a user would, against a fresh MESHGATE_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshgate.catalog.loader import parse_catalog


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    def meshgate(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MESHGATE_HOME": str(tmp_path / "home")}
        env.pop("MESHGATE_DATABASE_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "meshgate.cli.main", *args], env=env, capture_output=True, text=True
        )
        assert result.returncode == code, result.stderr
        return result

    return meshgate


def test_accounts_keys_quota_usage(run) -> None:  # type: ignore[no-untyped-def]
    assert "created account alice" in run("accounts", "create", "alice").stdout
    assert "alice" in run("accounts", "list").stdout
    created = run("keys", "create", "--account", "alice", "--name", "laptop").stdout.splitlines()
    secret = created[-1]
    assert secret.startswith("mg-") and " " not in secret  # alone on the last line
    key_id = secret.split("-")[1]
    listing = run("keys", "list", "--account", "alice").stdout
    assert key_id in listing and "laptop" in listing and "active" in listing and secret not in listing
    assert "revoked" in run("keys", "revoke", key_id).stdout
    assert "revoked" in run("keys", "list", "--account", "alice").stdout
    run("quota", "set", "--account", "alice", "--model", "m/x", "--bucket", "api", "--tokens", "1234")
    usage = run("usage", "--account", "alice").stdout
    assert "usage of alice" in usage and "(no usage)" in usage


def test_errors_are_one_line_and_exit_2(run) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "create", "--account", "nobody", code=2)
    assert "no account named 'nobody'" in result.stderr and "Traceback" not in result.stderr
    run("accounts", "create", "bob")
    assert "already exists" in run("accounts", "create", "bob", code=2).stderr
    assert "no API key" in run("keys", "revoke", "zzzz", code=2).stderr
    run("quota", "set", "--account", "bob", "--model", "m", "--bucket", "web", "--tokens", "1", code=2)


def test_presets_print_loadable_catalogs(run) -> None:  # type: ignore[no-untyped-def]
    text = run("models", "preset", "io-intelligence", "--upstream", "http://10.1.2.3:8000/v1").stdout
    specs = parse_catalog(tomllib.loads(text))
    assert len(specs) == 17 and all(s.upstreams[0].url == "http://10.1.2.3:8000/v1" for s in specs)
    assert "SmolLM2" in run("models", "list").stdout


def test_models_pull_from_a_local_hub(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import functools
    import http.server
    import threading

    served = tmp_path / "hub" / "org" / "repo" / "resolve" / "main"
    served.mkdir(parents=True)
    (served / "tiny.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MESHGATE_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        result = run("models", "pull", "org/repo/tiny.gguf", "--dest", str(tmp_path / "models"), "--quiet")
        path = Path(result.stdout.strip().splitlines()[-1])
        assert path.read_bytes() == (served / "tiny.gguf").read_bytes()
        assert "not found" in run("models", "pull", "org/repo/missing.gguf", "--dest", str(tmp_path), code=1).stderr
    finally:
        server.shutdown()


def test_key_expiry_durations(run) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "frank")
    assert "expires" in run("keys", "create", "--account", "frank", "--expires-in", "90d").stdout
    assert "not a duration" in run("keys", "create", "--account", "frank", "--expires-in", "soon", code=2).stderr
    assert "positive" in run("keys", "create", "--account", "frank", "--expires-in", "0h", code=2).stderr
    assert "\tactive" in run("keys", "list", "--account", "frank").stdout


def _key_rows(listing: str) -> dict[str, dict[str, str]]:
    """`keys list` output as {key id: {column: value}}."""
    header, *lines = listing.splitlines()
    columns = header.split("\t")
    rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]
    return {row["id"]: row for row in rows}


def test_scoped_keys_with_budgets(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    from meshgate.quota.cycles import current_period
    from meshgate.quota.embedded import EmbeddedLedger
    from meshgate.quota.ledger import Budget, BudgetKey, WindowKey, utc_day

    run("accounts", "create", "grace")
    created = run(
        "keys", "create", "--account", "grace", "--name", "ci", "--models", "m/a, m/b",
        "--budget", "12000", "--cycle", "monthly",
    ).stdout.splitlines()  # fmt: skip
    secret = created[-1]
    assert secret.startswith("mg-") and " " not in secret  # still alone on the last line
    assert "scope: m/a,m/b; budget: 12000/month" in created
    scoped = secret.split("-")[1]
    plain = run("keys", "create", "--account", "grace").stdout.splitlines()[-1].split("-")[1]
    eight = run("keys", "create", "--account", "grace", "--budget", "500", "--cycle", "8h").stdout
    eight_id = eight.splitlines()[-1].split("-")[1]
    assert "scope: all models; budget: 500/8h" in eight

    # usage settled by a gateway on the same database shows up as "used this cycle"
    period, refreshes = current_period("monthly", time.time())

    async def spend() -> None:
        ledger = EmbeddedLedger(tmp_path / "home" / "meshgate.db")
        budget = Budget(BudgetKey(scoped, period), 12_000, refreshes)
        grant = await ledger.reserve("req-1", WindowKey(1, "m/a", "api", utc_day()), 100_000, 500, 500, scoped, budget)
        assert grant.reservation is not None
        assert await ledger.settle(grant.reservation, 120, 130) == 250
        await ledger.close()

    asyncio.run(spend())
    rows = _key_rows(run("keys", "list", "--account", "grace").stdout)
    assert rows[scoped]["name"] == "ci" and rows[scoped]["status"] == "active"
    assert rows[scoped]["scope"] == "m/a,m/b" and rows[scoped]["budget"] == "12000/month"
    assert rows[scoped]["used this cycle"] == "250"
    assert rows[scoped]["refreshes (UTC)"] == time.strftime("%Y-%m-%d 00:00:00", time.gmtime(refreshes))
    assert rows[scoped]["refreshes (UTC)"][8:10] == "01"  # the 1st of next month
    assert (rows[plain]["scope"], rows[plain]["budget"], rows[plain]["used this cycle"]) == ("all models", "-", "-")
    assert rows[plain]["refreshes (UTC)"] == "-"
    _, eight_ends = current_period("8h", time.time())
    assert rows[eight_id]["used this cycle"] == "0" and rows[eight_id]["budget"] == "500/8h"
    assert rows[eight_id]["refreshes (UTC)"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(eight_ends))
    assert rows[eight_id]["refreshes (UTC)"][11:] in ("00:00:00", "08:00:00", "16:00:00")


def test_scoped_key_errors_exit_2(run) -> None:  # type: ignore[no-untyped-def]
    run("accounts", "create", "heidi")
    no_cycle = run("keys", "create", "--account", "heidi", "--budget", "100", code=2).stderr
    assert no_cycle.strip() == "meshgate: a budget needs a cycle: one of 8h, daily, weekly, monthly"
    assert (
        "a budget cycle needs a budget" in run("keys", "create", "--account", "heidi", "--cycle", "8h", code=2).stderr
    )
    zero = run("keys", "create", "--account", "heidi", "--budget", "0", "--cycle", "daily", code=2).stderr
    assert ">= 1, not 0" in zero
    assert "invalid choice: 'yearly'" in run("keys", "create", "--account", "heidi", "--cycle", "yearly", code=2).stderr
    assert "non-empty strings" in run("keys", "create", "--account", "heidi", "--models", "m/a,,m/b", code=2).stderr
    assert _key_rows(run("keys", "list", "--account", "heidi").stdout) == {}  # no key was created
