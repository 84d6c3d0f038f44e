"""Inject a default system message through the model's own chat template.

llama.cpp's server has no option for a default system prompt, so the worker prefixes the
model's template with a Jinja statement that adds one when the conversation has none.
The rest of the template (and thus tokenization and usage counting) stays the model's own.
"""

from __future__ import annotations

import json


def jinja_string(text: str) -> str:
    # JSON string syntax is a valid Jinja string literal (\" \\ \n escapes); keep non-ASCII as-is.
    return json.dumps(text, ensure_ascii=False)


def with_default_system(template: str, system_prompt: str) -> str:
    """`template` that behaves as if `system_prompt` were sent when no system message is given."""
    default = "{'role': 'system', 'content': " + jinja_string(system_prompt) + "}"
    prefix = (
        "{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}"
        "{%- set messages = [" + default + "] + messages -%}"
        "{%- endif -%}"
    )
    return prefix + template
