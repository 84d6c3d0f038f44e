"""Chat worker: llama.cpp's own OpenAI-compatible HTTP server (via xllamacpp) on a GGUF file.

Run: python -m meshgate.engines.llamacpp --model PATH|builtin:smollm2 --served-name NAME --port N

llama.cpp's server does the HTTP, the chat template, streaming, usage, parallel slots with
continuous batching, and cancels generation when a client disconnects; this module only
configures it. It serves /v1/chat/completions, /v1/completions, /v1/models and GET /health.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time

from meshgate.engines.builtin import resolve_builtin
from meshgate.engines.chat_template import with_default_system
from meshgate.engines.gguf import chat_template
from meshgate.engines.lifecycle import die_with_parent
from meshgate.engines.templates import with_tools

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer plainly and briefly."

log = logging.getLogger("meshgate.engines.llamacpp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshgate.engines.llamacpp", description=__doc__)
    p.add_argument("--model", required=True, help="GGUF file or builtin:smollm2")
    p.add_argument("--served-name", required=True, help="model name reported in responses")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ctx-size", type=int, default=8192, help="context length of each request slot")
    p.add_argument("--parallel", type=int, default=8, help="concurrent sequences (slots)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--default-system-prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help="system message added when a request has none ('' to disable)",
    )
    p.add_argument("--chat-template-file", help="Jinja chat template overriding the model's own")
    return p


def effective_template(model_path: str, template_file: str | None, system_prompt: str) -> str | None:
    """The chat template to run: the model's own (or an override), with the default system prompt."""
    if template_file:
        with open(template_file, encoding="utf-8") as f:
            template: str | None = f.read()
    else:
        template = with_tools(chat_template(model_path))  # tools reach a plain ChatML model too
    if not system_prompt:
        return template
    if template is None:
        log.warning("%s has no chat template: default system prompt not applied", model_path)
        return None
    return with_default_system(template, system_prompt)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    die_with_parent()
    import xllamacpp  # late: importing the native module is the slow part of startup

    model_path = resolve_builtin(args.model)
    template = effective_template(model_path, args.chat_template_file, args.default_system_prompt)

    params = xllamacpp.CommonParams()
    params.model.path = model_path
    params.model_alias = {args.served_name}  # the `model` field of every response
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    # Each slot gets the full context, so any request the gateway admitted fits.
    params.n_ctx = args.ctx_size * args.parallel
    params.kv_unified = False
    params.cont_batching = True
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    params.use_jinja = True
    if template is not None:
        params.chat_template = template

    started = time.monotonic()
    # Server() loads the model and starts llama.cpp's HTTP threads; it returns once listening.
    server = xllamacpp.Server(params)
    log.info("%s ready on %s in %.1f s", args.served_name, server.listening_address, time.monotonic() - started)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()  # SIGTERM's default action ends the process
    # Skip interpreter teardown: native server threads are still running.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
