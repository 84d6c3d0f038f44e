"""Model cards in the shape of vLLM's `/v1/models` (what IO Intelligence returns)."""

from __future__ import annotations

import hashlib
from typing import Any

from meshgate.catalog.spec import ModelSpec


def model_card(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "object": "model",
        "created": spec.created,
        "owned_by": spec.owned_by,
        "root": spec.id,
        "parent": None,
        "max_model_len": spec.context_length,
        "permission": [
            {
                "id": "modelperm-" + hashlib.sha1(spec.id.encode()).hexdigest()[:32],
                "object": "model_permission",
                "created": spec.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
