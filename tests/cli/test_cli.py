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
    env = {**os.environ, "MESHGATE_HOME": str(tmp_path / "home")}
    env.pop("MESHGATE_DATABASE_URL", None)

    def meshgate(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
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
