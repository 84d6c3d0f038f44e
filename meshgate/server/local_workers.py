"""Local workers as replicas: the gateway starts them, and routes to them like to any engine.

A worker's replica is out of rotation until its health check passes, and again as
soon as the process dies or stops answering; requests meanwhile get a clean 503.
"""

from __future__ import annotations

import asyncio
import logging
import time

from meshgate.catalog.spec import ModelSpec, UpstreamSpec
from meshgate.engines.launch import engine_command, health_path
from meshgate.server.state import Gateway
from meshgate.workers.local import LocalWorker, free_port
from meshgate.workers.pool import Replica

log = logging.getLogger("meshgate.local")


def attach_local_workers(app: Gateway, models: list[ModelSpec]) -> list[LocalWorker]:
    workers: list[LocalWorker] = []
    for spec in models:
        if spec.local is None:
            continue
        port = free_port()
        replica = Replica(UpstreamSpec(url=f"http://127.0.0.1:{port}/v1", model=spec.id))
        replica.healthy = False  # until the model has loaded
        replica.source = "local"  # as `meshgate workers list` shows it

        def on_state(ready: bool, replica: Replica = replica, name: str = spec.id) -> None:
            replica.healthy = ready
            log.info("local worker %s is %s", name, "ready" if ready else "down; requests get 503 until it is back")

        worker = LocalWorker(
            spec.id,
            engine_command(spec.local, spec.id, spec.context_length, port),
            port,
            health_path=health_path(spec.local.engine),
            on_state=on_state,
        )
        app.routes[spec.id].replicas.replicas.append(replica)
        workers.append(worker)

    async def start() -> None:
        for worker in workers:
            log.info("starting local worker for %s (%s)", worker.name, worker.argv[2])
            await worker.start()
        app.keep_task(asyncio.create_task(_report_ready(workers)))

    async def stop() -> None:
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return workers


async def _report_ready(workers: list[LocalWorker]) -> None:
    started = time.monotonic()
    for worker in workers:
        if await worker.wait_ready(600):
            log.info("%s loaded in %.1f s", worker.name, time.monotonic() - started)
        else:
            log.error("%s did not become ready; see the messages above", worker.name)
