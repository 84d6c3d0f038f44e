"""Writing a catalog back out as TOML, in the format `load_catalog_file` reads."""

from __future__ import annotations

import json

from meshgate.catalog.spec import TEXT_ONLY, ModelSpec


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def catalog_toml(specs: list[ModelSpec]) -> str:
    lines: list[str] = []
    for spec in specs:
        quota = ", ".join(f"{bucket} = {tokens}" for bucket, tokens in spec.daily_quota.items())
        lines += [
            "[[models]]",
            f"id = {_value(spec.id)}",
            f"kind = {_value(spec.kind)}",
            f"context_length = {spec.context_length}",
            f"daily_quota = {{ {quota} }}",
            f"owned_by = {_value(spec.owned_by)}",
        ]
        if spec.kind == "chat":  # capabilities other than the defaults
            for name in ("reasoning", "think_tags", "tools", "json", "logprobs", "vision", "image_tokens"):
                value = getattr(spec.capabilities, name)
                if value != getattr(TEXT_ONLY, name):
                    lines.append(f"{name} = {_value(value)}")
        if spec.suffix:  # legacy completions take `suffix` (fill-in-the-middle)
            lines.append("suffix = true")
        for upstream in spec.upstreams:
            lines += ["[[models.upstreams]]", f"url = {_value(upstream.url)}", f"model = {_value(upstream.model)}"]
            if upstream.api_key:
                lines.append(f"api_key = {_value(upstream.api_key)}")
        if spec.local is not None:
            local = spec.local
            lines += ["[models.local]", f"engine = {_value(local.engine)}", f"path = {_value(local.path)}"]
            for name in ("threads", "parallel", "default_system_prompt"):
                if getattr(local, name) is not None:
                    lines.append(f"{name} = {_value(getattr(local, name))}")
        lines.append("")
    return "\n".join(lines)
