"""How the gateway starts a local worker for a catalog `LocalSpec`."""

from __future__ import annotations

import sys

from meshgate.catalog.spec import LocalSpec
from meshgate.engines.builtin import resolve_builtin

# engine name in the catalog -> worker module under meshgate.engines
ENGINE_MODULES = {
    "llama.cpp": "meshgate.engines.llamacpp",
    "sentence-transformers": "meshgate.engines.embeddings",
}
# llama.cpp's server and our embeddings server both answer 200 here once the model is loaded.
HEALTH_PATHS = {"llama.cpp": "/health", "sentence-transformers": "/health"}

__all__ = ["ENGINE_MODULES", "engine_command", "health_path", "resolve_builtin"]


class UnknownEngine(ValueError):
    pass


def health_path(engine: str) -> str:
    try:
        return HEALTH_PATHS[engine]
    except KeyError:
        raise UnknownEngine(f"unknown local engine {engine!r} (known: {', '.join(ENGINE_MODULES)})") from None


def _option_args(options: dict[str, object]) -> list[str]:
    # Catalog `options = {max_batch = 32}` -> ["--max-batch", "32"]; `true` -> bare flag.
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def engine_command(spec: LocalSpec, served_name: str, context_length: int, port: int) -> list[str]:
    """argv that starts the worker for `spec` on 127.0.0.1:`port`, serving it as `served_name`."""
    health_path(spec.engine)  # validates the engine name
    argv = [
        sys.executable,
        "-m",
        ENGINE_MODULES[spec.engine],
        "--model",
        resolve_builtin(spec.path),
        "--served-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if spec.threads:
        argv += ["--threads", str(spec.threads)]
    if spec.engine == "llama.cpp":
        argv += ["--ctx-size", str(context_length)]
        if spec.parallel:
            argv += ["--parallel", str(spec.parallel)]
        if spec.default_system_prompt is not None:
            argv += ["--default-system-prompt", spec.default_system_prompt]
    else:
        argv += ["--max-seq-length", str(context_length)]
    return argv + _option_args(spec.options)
