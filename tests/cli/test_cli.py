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
