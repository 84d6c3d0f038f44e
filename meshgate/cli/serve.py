"""`meshgate serve`: load the catalog, prepare the database, start local workers and the HTTP server."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from meshgate.accounts.service import AccountStore
from meshgate.catalog.loader import load_catalog_file
from meshgate.catalog.presets import local_default_models
from meshgate.catalog.spec import ModelSpec
from meshgate.config import Settings, load_settings
from meshgate.server.app import App
from meshgate.server.state import Gateway
from meshgate.store.engine import migrate

log = logging.getLogger("meshgate")

LOCAL_ACCOUNT = "local"


def serve(settings: Settings, *, config: str | None, host: str | None, port: int | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(host=host, port=port) if (host or port) else settings
    models = load_catalog_file(config) if config else local_default_models()
    migrate(settings.database_url)
    app = Gateway(settings, models)
    if any(spec.local is not None for spec in models):
        from meshgate.server.local_workers import attach_local_workers

        attach_local_workers(app, models)
    if config is None:
        _welcome(settings, app.store, models)
    log.info("meshgate listening on http://%s:%d/api/v1 (%d models)", settings.host, settings.port, len(models))
    run_server(App(app), settings.host, settings.port)
    return 0


def run_server(app: App, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        backlog=4096,
        proxy_headers=False,  # a middleware layer per request; the gateway does not use client addresses
        server_header=False,
    )


def _welcome(settings: Settings, store: AccountStore, models: list[ModelSpec]) -> None:
    """First run: make a local account and key, and show how to use them."""
    key_file = settings.home / "local-api-key"
    secret = _saved_key(store, key_file)
    if secret is None and not store.list_accounts():
        account = store.create_account(LOCAL_ACCOUNT, is_admin=True)
        _, secret = store.create_key(account.id, "created by meshgate serve")
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secret + "\n")
        key_file.chmod(0o600)
    base = f"http://{settings.host}:{settings.port}/api/v1"
    chat_model = next((m.id for m in models if m.kind == "chat"), "MODEL")
    if secret is None:
        print(f"\nmeshgate: create an API key with `meshgate keys create --account NAME`; API at {base}\n")
        return
    print(
        f"""
==> meshgate is starting on {base}
    API key (account '{LOCAL_ACCOUNT}', also saved in {key_file}):
    {secret}

    curl {base}/chat/completions \\
      -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
      -d '{{"model": "{chat_model}", "messages": [{{"role": "user", "content": "Say this is a test!"}}]}}'

    python3 - <<'EOF'
import openai
client = openai.OpenAI(api_key="{secret}", base_url="{base}/")
response = client.chat.completions.create(
    model="{chat_model}",
    messages=[{{"role": "user", "content": "Hi, I am doing a project using meshgate."}}],
    max_completion_tokens=50,
)
print(response.choices[0].message.content)
EOF
""",
        file=sys.stderr,
        flush=True,
    )


def _saved_key(store: AccountStore, key_file: Path) -> str | None:
    from meshgate.accounts.keys import key_id_of, matches

    try:
        secret = key_file.read_text().strip()
    except OSError:
        return None
    key_id = key_id_of(secret)
    key = store.get_key(key_id) if key_id else None
    if key is None or key.revoked_at is not None or not matches(secret, key.secret_hash):
        return None
    return secret
