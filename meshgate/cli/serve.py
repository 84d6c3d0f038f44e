"""`meshgate serve`: load the catalog, prepare the database, start local workers and the HTTP server."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import sys
from pathlib import Path

from meshgate.accounts.service import AccountStore
from meshgate.catalog.loader import load_catalog_file
from meshgate.catalog.presets import local_default_models
from meshgate.catalog.spec import ModelSpec
from meshgate.cli.home import prepare_home, write_secret
from meshgate.cli.processes import Supervisor, child_argv, listen_socket, refusal, resolve_processes
from meshgate.config import Settings, load_settings
from meshgate.server.app import App
from meshgate.server.logs import configure_logging
from meshgate.server.state import Gateway
from meshgate.store.engine import migrate

log = logging.getLogger("meshgate")

LOCAL_ACCOUNT = "local"


def serve(
    settings: Settings,
    *,
    config: str | None,
    host: str | None,
    port: int | None,
    processes: int = 1,
    listen_fd: int | None = None,
) -> int:
    configure_logging(settings.log_format)  # text or JSON lines, with the request id where there is one
    settings = load_settings(host=host, port=port) if (host or port) else settings
    models = load_catalog_file(config) if config else local_default_models()
    if listen_fd is not None:  # one of `--processes N`'s children: the parent checked and migrated
        run_server(gateway_app(Gateway(settings, models)), settings, sock=socket.socket(fileno=listen_fd))
        return 0
    count = resolve_processes(processes)
    problem = refusal(settings, count, models)
    if problem is not None:
        print(f"meshgate: {problem}", file=sys.stderr)
        return 2
    prepare_home(settings)
    migrate(settings.database_url)
    if count > 1:
        assert config is not None  # refusal(): the local default models need one process
        sock = listen_socket(settings.host, settings.port)
        bound = int(sock.getsockname()[1])
        log.info("meshgate listening on http://%s:%d/api/v1 with %d processes", settings.host, bound, count)
        argv = child_argv(os.path.abspath(config), settings.host, bound, sock.fileno())
        return Supervisor(argv, count, sock.fileno()).run()
    app = Gateway(settings, models)
    if any(spec.local is not None for spec in models):
        from meshgate.server.local_workers import attach_local_workers

        attach_local_workers(app, models)
    if config is None:
        _welcome(settings, app.store, models)
    log.info("meshgate listening on http://%s:%d/api/v1 (%d models)", settings.host, settings.port, len(models))
    run_server(gateway_app(app), settings)
    return 0


def gateway_app(gateway: Gateway) -> App:
    """The API, and the web app on every path outside it."""
    from meshgate.web.app import create_web_app

    return App(gateway, fallback=create_web_app(gateway))


def run_server(app: App, settings: Settings, sock: socket.socket | None = None) -> None:
    """Serve `app` with the edge limits; on `sock` if given (inherited from `--processes`), else bind."""
    import uvicorn

    from meshgate.server.edge import EdgeLimits, connection_bound, protocol_class

    limits = EdgeLimits(
        max_head_bytes=settings.max_head_bytes,
        head_timeout=settings.head_timeout,
        body_timeout=settings.body_timeout,
        max_connections=connection_bound(settings.max_connections),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=protocol_class(limits),  # httptools, with limits on heads, bodies and connections
            ws="none",  # no WebSockets: an upgrade would hand the connection to a protocol that keeps no count
            lifespan="on",
            access_log=False,
            log_level="warning",
            log_config=None,  # uvicorn logs through the root logger: one format, JSON too
            timeout_keep_alive=75,
            backlog=4096,
            proxy_headers=False,  # a middleware layer per request; the gateway does not use client addresses
            server_header=False,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the app's startup failed


def _welcome(settings: Settings, store: AccountStore, models: list[ModelSpec]) -> None:
    """First run: make a local account and key, and show how to use them.

    The key is printed once, when it is created; later starts say where it is saved,
    so it does not end up in every log of the server's output.
    """
    key_file = settings.home / "local-api-key"
    base = f"http://{settings.host}:{settings.port}/api/v1"
    chat_model = next((m.id for m in models if m.kind == "chat"), "MODEL")
    if _saved_key(store, key_file) is not None:
        about = f"API key of account '{LOCAL_ACCOUNT}': in {key_file} (shown only when it was created)"
        shell, python = f"$(cat {shlex.quote(str(key_file))})", f"open({str(key_file)!r}).read().strip()"
    elif store.list_accounts():
        print(f"\nmeshgate: create an API key with `meshgate keys create --account NAME`; API at {base}\n")
        return
    else:
        account = store.create_account(LOCAL_ACCOUNT, is_admin=True)
        _, secret = store.create_key(account.id, "created by meshgate serve")
        write_secret(key_file, secret + "\n")
        about = f"API key of account '{LOCAL_ACCOUNT}', shown this once (also saved in {key_file}):\n    {secret}"
        shell, python = secret, f'"{secret}"'
    print(
        f"""
==> meshgate is starting on {base}
    {about}

    curl {base}/chat/completions \\
      -H "Authorization: Bearer {shell}" -H "Content-Type: application/json" \\
      -d '{{"model": "{chat_model}", "messages": [{{"role": "user", "content": "Say this is a test!"}}]}}'

    python3 - <<'EOF'
import openai
client = openai.OpenAI(api_key={python}, base_url="{base}/")
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
